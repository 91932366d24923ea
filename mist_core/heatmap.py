"""H_eta, the multiscale heatmap network (appendix A).

A fully convolutional ResNet (shared weights) runs on the image resampled to each of S scales; its output
is upsampled back to H x W, sharpened by a local spatial softmax (15 x 15, strength 10), and pooled over
scale (keypoints.scale_pool). Scale s stands for patches of side sizes[s] pixels: the image is resampled by
sizes[0] / sizes[s], so a pattern the network sees at its native size sizes[0] in I_s is sizes[s] wide in I.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mist_core._profiling import profile_range
from mist_core.keypoints import scale_pool

__all__ = ["ResBlock", "HeatmapNet", "local_spatial_softmax"]


class ResBlock(nn.Module):
    """Two 3x3 convolutions with ReLU and an identity shortcut; no downsampling."""

    def __init__(self, ch: int):
        super().__init__()
        self.c1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.c2 = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x + self.c2(F.relu(self.c1(x))))


def local_spatial_softmax(r: Tensor, window: int, strength: float) -> Tensor:
    """(B, S, H, W) raw scores -> exp(beta r) / sum of exp(beta r) over each pixel's window x window neighbours."""
    B, S, H, W = r.shape
    z = strength * r
    z = z - z.amax(dim=(1, 2, 3), keepdim=True).detach()       # one shift per image keeps scales comparable
    e = z.exp()                                                  # (B, S, H, W) in (0, 1]
    den = F.avg_pool2d(e, window, stride=1, padding=window // 2, count_include_pad=True) * (window * window)
    return e / (den + 1e-30)


class HeatmapNet(nn.Module):
    def __init__(self, in_ch: int, width: int, blocks: int, sizes: tuple[float, ...], window: int = 15,
                 strength: float = 10.0):
        super().__init__()
        self.register_buffer("sizes", torch.tensor(sizes, dtype=torch.float32), persistent=False)
        self.window, self.strength = window, strength
        self.stem = nn.Conv2d(in_ch, width, 3, padding=1)
        self.blocks = nn.Sequential(*[ResBlock(width) for _ in range(blocks)])
        self.head = nn.Conv2d(width, 1, 3, padding=1)

    def raw(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(F.relu(self.stem(x))))      # (B, 1, h, w)

    @profile_range("mist.heatmap")  # a profiler range (bench/breakdown.py); free unless profiling
    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """images (B, C, H, W) -> per-scale heatmaps (B, S, H, W) and the scale-pooled heatmap (B, H, W)."""
        B, C, H, W = images.shape
        maps = []
        for s in self.sizes.tolist():                            # S is 1-5: a loop over scales, not pixels
            f = float(self.sizes[0]) / s
            x = images if f == 1.0 else F.interpolate(images, scale_factor=f, mode="bilinear",
                                                      antialias=True, align_corners=False)
            r = self.raw(x)
            if r.shape[-2:] != (H, W):
                r = F.interpolate(r, size=(H, W), mode="bilinear", align_corners=False)
            maps.append(r)
        h_scales = local_spatial_softmax(torch.cat(maps, 1), self.window, self.strength)  # (B, S, H, W)
        return h_scales, scale_pool(h_scales)
