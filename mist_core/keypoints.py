"""E_K (non-maximum suppression, top-K, scale by first moment) and G (keypoints -> ideal heatmap), section 4.1
and appendix B. The two are built so that E_K(G(x)) = x for keypoints at pixel centres whose sizes lie in
the scale range and which are farther apart than the NMS window.

Heatmap layout: per-scale maps (B, S, H, W) after the local spatial softmax, and the scale-pooled map
(B, H, W). `sizes` (S,) is the patch side in pixels that each discrete scale stands for, increasing.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from mist_core._profiling import profile_range

__all__ = ["scale_pool", "sliding_max", "nms", "extract_topk", "render_heatmap", "gaussian_blur"]

EPS = 1e-6


def scale_pool(h_scales: Tensor) -> Tensor:
    """Softmax pooling over scale without an exponential (appendix A): (B, S, H, W) -> (B, H, W)."""
    return (h_scales * (h_scales / (h_scales + EPS).sum(1, keepdim=True))).sum(1)


@torch.no_grad()
def sliding_max(x: Tensor, window: int, dim: int) -> Tensor:
    """The maximum over a centred window (odd) along `dim`, -inf beyond the ends: a stride-1 max_pool's values in
    O(1) per element (van Herk / Gil-Werman: prefix and suffix maxima within blocks of `window`), not O(window)
    as max_pool2d's kernel. No gradient (NMS only compares against it)."""
    r = window // 2
    x = x.movedim(dim, -1)
    L = x.shape[-1]
    n = -(-(L + 2 * r) // window) * window                                           # padded to whole blocks
    blocks = F.pad(x, (r, n - L - r), value=float("-inf")).unflatten(-1, (n // window, window))
    prefix = blocks.cummax(-1).values.flatten(-2)                                     # (..., n)
    suffix = blocks.flip(-1).cummax(-1).values.flip(-1).flatten(-2)
    return torch.maximum(suffix[..., :L], prefix[..., window - 1:window - 1 + L]).movedim(-1, dim)


def nms(h: Tensor, window: int) -> Tensor:
    """(B, H, W) -> (B, H, W) with every value that is not the maximum of its window set to -inf."""
    m = sliding_max(sliding_max(h, window, -1), window, -2)                          # (B, H, W) window maxima
    return torch.where(h >= m, h, torch.full_like(h, float("-inf")))


@profile_range("mist.E_K")  # a profiler range (bench/breakdown.py); free unless profiling
def extract_topk(h_scales: Tensor, h: Tensor, sizes: Tensor, k: int, window: int) -> tuple[Tensor, Tensor]:
    """E_K: keypoints (B, K, 3) = (cx, cy, size) in pixels, and their scores (B, K), sorted by score.

    h_scales (B, S, H, W): per-scale responses; h (B, H, W): the pooled map NMS and top-K run on;
    sizes (S,): the patch side of each scale. The scale is the response-weighted first moment over scales.
    """
    B, S, H, W = h_scales.shape
    scores, idx = nms(h, window).view(B, H * W).topk(k, dim=1)                      # (B, K)
    iy, ix = idx // W, idx % W                                                      # (B, K)
    w = h_scales.view(B, S, H * W).gather(2, idx[:, None, :].expand(B, S, k))       # (B, S, K)
    size = (w * sizes.view(1, S, 1)).sum(1) / w.sum(1).clamp_min(1e-12)             # (B, K)
    kp = torch.stack([ix.to(h.dtype) + 0.5, iy.to(h.dtype) + 0.5, size], dim=-1)    # (B, K, 3)
    return kp, scores


@profile_range("mist.G")
def render_heatmap(kp: Tensor, sizes: Tensor, height: int, width: int, valid: Tensor | None = None) -> Tensor:
    """G: keypoints (B, K, 3) -> ideal per-scale heatmap (B, S, H, W) (appendix B).

    Zero everywhere except at each keypoint's (rounded) pixel, where unit mass is split over the two nearest
    scales so that its centre of mass is the keypoint's size. `valid` (B, K) bool masks keypoints out.
    """
    B, K, _ = kp.shape
    S = sizes.numel()
    kp = kp.detach()
    ix = (kp[..., 0] - 0.5).round().long().clamp(0, width - 1)                        # (B, K)
    iy = (kp[..., 1] - 0.5).round().long().clamp(0, height - 1)
    size = kp[..., 2].clamp(sizes[0], sizes[-1])                                      # (B, K)
    lo = (torch.searchsorted(sizes.contiguous(), size.contiguous(), right=True) - 1).clamp(0, max(S - 2, 0))
    if S == 1:
        t = torch.zeros_like(size)
    else:
        s_lo, s_hi = sizes[lo], sizes[lo + 1]                                         # (B, K)
        t = ((size - s_lo) / (s_hi - s_lo)).clamp(0, 1)                               # weight of the upper scale
    mass = torch.ones_like(size) if valid is None else valid.to(size.dtype)           # (B, K)
    flat = torch.zeros(B, S * height * width, dtype=kp.dtype, device=kp.device)
    pix = iy * width + ix                                                             # (B, K)
    flat.scatter_add_(1, lo * height * width + pix, mass * (1 - t))
    if S > 1:
        flat.scatter_add_(1, (lo + 1) * height * width + pix, mass * t)
    return flat.view(B, S, height, width)


def gaussian_blur(maps: Tensor, sigma: float) -> Tensor:
    """(B, S, H, W) -> same, each map convolved with a normalised Gaussian of std `sigma` px (zero padding).

    A blurred G target keeps its maximum at the keypoint, so E_K still recovers it, and gives the heatmap
    network a target it can approach with a smooth response instead of a one-pixel spike.
    """
    if sigma <= 0:
        return maps
    B, S, H, W = maps.shape
    r = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-r, r + 1, dtype=maps.dtype, device=maps.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()                                                                   # (2r+1,)
    x = maps.reshape(B * S, 1, H, W)
    x = F.conv2d(x, k.view(1, 1, 1, -1), padding=(0, r))                              # along W
    x = F.conv2d(x, k.view(1, 1, -1, 1), padding=(r, 0))                              # along H
    return x.view(B, S, H, W)
