"""S and S^-1: bilinear sampling of K square patches per image, and the generalised inverse that pastes them back.

Keypoints are x_k = (cx, cy, size) in continuous pixel coordinates: pixel (row i, column j) covers
[j, j+1) x [i, i+1) and has its centre at (j + 0.5, i + 0.5). A patch is the square of side `size` centred
at (cx, cy), resampled to p x p. With size == p and integer-aligned corners, S copies pixels exactly and
S^-1(S(I)) restores them. Both are batched over images and patches (one grid_sample each), differentiable
with respect to the image/patches and to the keypoints.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from mist_core._profiling import profile_range

__all__ = ["sample_patches", "paste_patches", "keypoint_boxes"]


def keypoint_boxes(kp: Tensor) -> Tensor:
    """(..., 3) keypoints (cx, cy, size) -> (..., 4) boxes (x0, y0, x1, y1) in pixels."""
    c, half = kp[..., :2], kp[..., 2:3] / 2
    return torch.cat([c - half, c + half], dim=-1)


@profile_range("mist.S")  # a profiler range (bench/breakdown.py); free unless profiling
def sample_patches(images: Tensor, kp: Tensor, p: int) -> Tensor:
    """S: images (B, C, H, W), keypoints (B, K, 3) -> patches (B, K, C, p, p)."""
    B, C, H, W = images.shape
    K = kp.shape[1]
    t = (torch.arange(p, device=images.device, dtype=images.dtype) + 0.5) / p - 0.5  # (p,) in (-1/2, 1/2)
    cx, cy, s = kp[..., 0:1], kp[..., 1:2], kp[..., 2:3]                            # (B, K, 1) each
    xs = cx + s * t                                                                  # (B, K, p) pixel x
    ys = cy + s * t                                                                  # (B, K, p) pixel y
    gx = (2 * xs / W - 1)[:, :, None, :].expand(B, K, p, p)                          # (B, K, p, p)
    gy = (2 * ys / H - 1)[:, :, :, None].expand(B, K, p, p)                          # (B, K, p, p)
    grid = torch.stack([gx, gy], dim=-1).reshape(B, K * p, p, 2)                     # (B, K*p, p, 2)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)  # (B, C, K*p, p)
    return out.view(B, C, K, p, p).transpose(1, 2)                                   # (B, K, C, p, p)


@profile_range("mist.S_inv")
def paste_patches(patches: Tensor, kp: Tensor, height: int, width: int, *, max_size: float,
                  reduce: bool = True) -> Tensor:
    """S^-1 of eq. 8: place each patch (B, K, C, p, p) at its keypoint (B, K, 3) on a zero canvas and sum over K.

    Returns (B, C, H, W), or (B, K, C, H, W) per-patch canvases when reduce=False. Each patch is resampled only on
    the n x n pixels it can reach and scatter-added into the canvas: the same values as resampling the whole
    canvas per patch, at about (n / H)^2 of the cost (quick: 24 x 24 of 80 x 80). n comes from `max_size`, the
    largest side (pixels) any keypoint may have, known from the method's config: reading it from `kp` would be a
    host read in every step. A patch larger than max_size loses what falls outside its window.
    """
    B, K, C, p, _ = patches.shape
    dt, dev = patches.dtype, patches.device
    s = kp[..., 2:3]                                                                  # (B, K, 1) side in pixels
    x0, y0 = kp[..., 0:1] - s / 2, kp[..., 1:2] - s / 2                               # (B, K, 1) top-left corner
    with torch.no_grad():
        # bilinear with zero padding reaches half a patch pixel (s / 2p) past each side: a pixel (centre j + 0.5)
        # gets a value only if x0 - s/2p < j + 0.5 < x0 + s + s/2p, at most n pixels per axis
        n = int(math.ceil(max_size * (1 + 1 / p))) + 2
        reach = s / (2 * p)
        # a non-finite keypoint must not become an index (NaN.long() is INT64_MIN: on CUDA a device-side assert
        # that kills the process): nan_to_num first, on the device, no host read; the output is poisoned below
        ox = torch.nan_to_num(torch.floor(x0 - reach - 0.5) + 1, nan=-n).clamp(-n, width).long()  # (B, K, 1) origin
        oy = torch.nan_to_num(torch.floor(y0 - reach - 0.5) + 1, nan=-n).clamp(-n, height).long()
        j = torch.arange(n, device=dev)                                               # (n,)
    X = (ox + j).to(dt) + 0.5                                                         # (B, K, n) pixel centres
    Y = (oy + j).to(dt) + 0.5
    ux = 2 * (X - x0) / s - 1                                                         # (B, K, n) in patch coords
    uy = 2 * (Y - y0) / s - 1
    grid = torch.stack([ux[:, :, None, :].expand(B, K, n, n),
                        uy[:, :, :, None].expand(B, K, n, n)], dim=-1)                # (B, K, n, n, 2)
    local = F.grid_sample(patches.reshape(B * K, C, p, p), grid.reshape(B * K, n, n, 2),
                          mode="bilinear", padding_mode="zeros", align_corners=False)  # (B*K, C, n, n)
    # NaN for an image with a non-finite keypoint, else 0 (gradient 0): its loss stays non-finite, so the Trainer
    # names it, although the windows above were moved to a harmless place
    poison = kp.flatten(1).sum(1) * 0                                                 # (B,)
    # scatter into a canvas padded by n on every side, so that every window lies inside it, then crop
    Hp, Wp = height + 2 * n, width + 2 * n
    idx = ((oy + n + j)[..., :, None] * Wp + (ox + n + j)[..., None, :])              # (B, K, n, n) flat index
    if reduce:
        src = local.view(B, K, C, n * n).transpose(1, 2).reshape(B, C, K * n * n)     # (B, C, K*n*n)
        index = idx.view(B, 1, K * n * n).expand(B, C, K * n * n)
        canvas = src.new_zeros(B, C, Hp * Wp).scatter_add(2, index, src)          # (B, C, Hp*Wp)
        return canvas.view(B, C, Hp, Wp)[:, :, n:n + height, n:n + width] + poison[:, None, None, None]
    index = idx.view(B * K, 1, n * n).expand(B * K, C, n * n)
    canvas = local.new_zeros(B * K, C, Hp * Wp).scatter_add(2, index, local.view(B * K, C, n * n))
    return canvas.view(B, K, C, Hp, Wp)[..., n:n + height, n:n + width] + poison[:, None, None, None, None]
