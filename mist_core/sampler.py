"""S and S^-1: bilinear sampling of K square patches per image, and the generalised inverse that pastes them back.

Keypoints are x_k = (cx, cy, size) in continuous pixel coordinates: pixel (row i, column j) covers
[j, j+1) x [i, i+1) and has its centre at (j + 0.5, i + 0.5). A patch is the square of side `size` centred
at (cx, cy), resampled to p x p. With size == p and integer-aligned corners, S copies pixels exactly and
S^-1(S(I)) restores them. Both are batched over images and patches (one grid_sample each), differentiable
with respect to the image/patches and to the keypoints.
"""
from __future__ import annotations

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
def paste_patches(patches: Tensor, kp: Tensor, height: int, width: int, reduce: bool = True) -> Tensor:
    """S^-1 of eq. 8: place each patch (B, K, C, p, p) at its keypoint (B, K, 3) on a zero canvas and sum over K.

    Returns (B, C, H, W), or (B, K, C, H, W) per-patch canvases when reduce=False.
    """
    B, K, C, p, _ = patches.shape
    dt, dev = patches.dtype, patches.device
    X = torch.arange(width, device=dev, dtype=dt) + 0.5                               # (W,) pixel centres
    Y = torch.arange(height, device=dev, dtype=dt) + 0.5                              # (H,)
    x0 = kp[..., 0:1] - kp[..., 2:3] / 2                                              # (B, K, 1)
    y0 = kp[..., 1:2] - kp[..., 2:3] / 2
    s = kp[..., 2:3]
    ux = 2 * (X - x0) / s - 1                                                         # (B, K, W) in patch coords
    uy = 2 * (Y - y0) / s - 1                                                         # (B, K, H)
    grid = torch.stack([ux[:, :, None, :].expand(B, K, height, width),
                        uy[:, :, :, None].expand(B, K, height, width)], dim=-1)       # (B, K, H, W, 2)
    canvases = F.grid_sample(patches.reshape(B * K, C, p, p), grid.reshape(B * K, height, width, 2),
                             mode="bilinear", padding_mode="zeros", align_corners=False)  # (B*K, C, H, W)
    canvases = canvases.view(B, K, C, height, width)
    return canvases.sum(1) if reduce else canvases
