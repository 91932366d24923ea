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
from mist_core.tasknets import CHANNELS_LAST

__all__ = ["ResBlock", "ConvTrunk", "HeatmapNet", "local_spatial_softmax"]


class ResBlock(nn.Module):
    """Two 3x3 convolutions with ReLU and an identity shortcut; no downsampling."""

    def __init__(self, ch: int):
        super().__init__()
        self.c1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.c2 = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x + self.c2(F.relu(self.c1(x))))


def _window_max(z: Tensor, window: int) -> Tensor:
    """Max over each pixel's window x window neighbourhood, (B, S, H, W) -> same: two 1-D passes (a square's
    max is the max of its rows' maxima), 2 x window comparisons per pixel instead of window^2."""
    z = F.max_pool2d(z, (window, 1), stride=1, padding=(window // 2, 0))
    return F.max_pool2d(z, (1, window), stride=1, padding=(0, window // 2))


def _window_sum(e: Tensor, window: int) -> Tensor:
    """window^2 x the mean over each pixel's window x window neighbourhood, counting only pixels in the image;
    separable like _window_max (the in-image part of a square window is a rectangle).

    Near the border a plain window sum has fewer terms, so with zero padding a flat score map came out up to
    225/64 = 3.5x higher in the corners than inside: an untrained network put all K keypoints on the border.
    The mean over the in-image pixels keeps a flat map flat (1/window^2 everywhere).
    """
    e = F.avg_pool2d(e, (window, 1), stride=1, padding=(window // 2, 0), count_include_pad=False)
    return F.avg_pool2d(e, (1, window), stride=1, padding=(0, window // 2), count_include_pad=False) * (window * window)


def local_spatial_softmax(r: Tensor, window: int, strength: float, eps: float = 1e-6) -> Tensor:
    """(B, S, H, W) raw scores -> exp(beta r) / sum of exp(beta r) over each pixel's window x window neighbours.

    As in LF-Net (Ono et al. 2018), which the paper cites for this operator: each pixel is shifted by the
    maximum over its own window and all scales before the exponential, and the window sum gets eps. A single
    shift per image (the exact softmax) underflows to 0/0 in every window far below the image's maximum,
    which killed the gradient there and produced NaNs in training; the local shift keeps every region alive.
    Window max and sum are separable, two 1-D pools each (forward+backward 245 -> 65 ms on (32, 2, 80, 80) at
    window 15, 1 thread). The window sum is normalised for the pixels it has inside the image (_window_sum), so
    the border is not favoured.
    """
    z = strength * r                                                                   # (B, S, H, W)
    m = _window_max(z, window).amax(1, keepdim=True)                                   # (B, 1, H, W) local max
    e = (z - m).exp()                                                                  # (B, S, H, W) in (0, 1]
    return e / (_window_sum(e, window) + eps)


class ConvTrunk(nn.Module):
    """A 3x3 stem, `blocks` ResBlocks of `width` channels (no downsampling), a 3x3 head to `out_ch` maps:
    (B, C, H, W) -> (B, out_ch, H, W). MIST's heatmap trunk (out_ch 1) and channel-wise's (out_ch K)."""

    def __init__(self, in_ch: int, width: int, blocks: int, out_ch: int):
        super().__init__()
        self.stem = nn.Conv2d(in_ch, width, 3, padding=1)
        self.blocks = nn.Sequential(*[ResBlock(width) for _ in range(blocks)])
        self.head = nn.Conv2d(width, out_ch, 3, padding=1)
        self.to(memory_format=CHANNELS_LAST)  # oneDNN/cuDNN convs run faster on NHWC

    def raw(self, x: Tensor) -> Tensor:
        x = x.contiguous(memory_format=CHANNELS_LAST)
        return self.head(self.blocks(F.relu(self.stem(x))))      # (B, out_ch, H, W)

    def forward(self, x: Tensor) -> Tensor:
        return self.raw(x)


class HeatmapNet(ConvTrunk):
    def __init__(self, in_ch: int, width: int, blocks: int, sizes: tuple[float, ...], window: int = 15,
                 strength: float = 10.0):
        super().__init__(in_ch, width, blocks, 1)
        self.scale_sizes = tuple(float(x) for x in sizes)   # Python floats: no device read (host sync) per forward
        self.window, self.strength = window, strength

    @profile_range("mist.heatmap")  # a profiler range (bench/breakdown.py); free unless profiling
    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """images (B, C, H, W) -> per-scale heatmaps (B, S, H, W) and the scale-pooled heatmap (B, H, W)."""
        B, C, H, W = images.shape
        maps = []
        for s in self.scale_sizes:                               # S is 1-5: a loop over scales, not pixels
            f = self.scale_sizes[0] / s
            x = images if f == 1.0 else F.interpolate(images, scale_factor=f, mode="bilinear",
                                                      antialias=True, align_corners=False)
            r = self.raw(x)
            if r.shape[-2:] != (H, W):
                r = F.interpolate(r, size=(H, W), mode="bilinear", align_corners=False)
            maps.append(r)
        h_scales = local_spatial_softmax(torch.cat(maps, 1), self.window, self.strength)  # (B, S, H, W)
        return h_scales, scale_pool(h_scales)
