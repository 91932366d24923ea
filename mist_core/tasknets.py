"""Task networks T_tau (appendix C): the patch auto-encoder and the patch classifier.

Encoder: `levels` levels; each level is a transition conv to width * 2^level channels, `blocks` ResNet v1
blocks (3x3 convs, ReLU, layer norm before each conv), then 2x2 max-pooling. The decoder mirrors it with
2x2 stride-2 transposed convolutions and ends in a sigmoid. A p x p patch becomes a latent of
width * 2^(levels-1) channels at (p / 2^levels)^2 pixels; the constructor refuses a latent that is not
smaller than the patch (a "bottleneck" the network could pass the identity through).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Initial decoder output bias: sigmoid(-3) = 0.05. Starting at sigmoid(0) = 0.5 grey, every pasted patch adds a
# bright square, and early keypoint steps learn to hide patches where they overlap the least ink.
OUT_BIAS = -3.0

# Convolutions run on NHWC tensors: oneDNN (CPU) and cuDNN convolve them faster (the quick auto-encoder's
# forward+backward on 288 patches: 100 ms NCHW, 83 ms NHWC, 1 thread). Results agree to float rounding.
CHANNELS_LAST = torch.channels_last

__all__ = ["PatchEncoder", "PatchAutoEncoder", "PatchClassifier", "latent_size"]


def latent_size(channels: int, p: int, width: int, levels: int) -> int:
    r = p // 2**levels
    return width * 2 ** (levels - 1) * r * r


def _check(channels: int, p: int, width: int, levels: int) -> None:
    if p % 2**levels:
        raise ValueError(f"patch_res {p} must be divisible by 2^task_levels = {2**levels}")
    lat, inp = latent_size(channels, p, width, levels), channels * p * p
    if lat >= inp:
        raise ValueError(f"task network latent ({lat} numbers) is not smaller than its input patch ({inp}): "
                         f"no bottleneck; lower task_width or raise task_levels")


class LNResBlock(nn.Module):
    """ResNet v1 block with layer norm (over C, H, W) before each convolution."""

    def __init__(self, ch: int):
        super().__init__()
        self.n1, self.c1 = nn.GroupNorm(1, ch), nn.Conv2d(ch, ch, 3, padding=1)
        self.n2, self.c2 = nn.GroupNorm(1, ch), nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x + self.c2(self.n2(F.relu(self.c1(self.n1(x))))))


def _level(cin: int, cout: int, blocks: int) -> nn.Sequential:
    return nn.Sequential(nn.GroupNorm(1, cin), nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(),
                         *[LNResBlock(cout) for _ in range(blocks)])


class PatchEncoder(nn.Module):
    def __init__(self, channels: int, p: int, width: int, levels: int, blocks: int):
        super().__init__()
        _check(channels, p, width, levels)
        chs = [width * 2**i for i in range(levels)]
        self.levels = nn.ModuleList(_level(cin, cout, blocks) for cin, cout in zip([channels] + chs[:-1], chs))
        self.out_channels, self.out_res = chs[-1], p // 2**levels
        self.to(memory_format=CHANNELS_LAST)

    def forward(self, x: Tensor) -> Tensor:                     # (N, C, p, p) -> (N, c_L, r, r)
        x = x.contiguous(memory_format=CHANNELS_LAST)
        for lvl in self.levels:
            x = F.max_pool2d(lvl(x), 2)
        return x


class PatchAutoEncoder(nn.Module):
    def __init__(self, channels: int, p: int, width: int, levels: int, blocks: int):
        super().__init__()
        self.encoder = PatchEncoder(channels, p, width, levels, blocks)
        chs = [width * 2**i for i in range(levels)][::-1]      # decoder channels, deepest first
        ups, lvls = [], []
        for cin, cout in zip([chs[0]] + chs[:-1], chs):
            ups.append(nn.ConvTranspose2d(cin, cout, 2, stride=2))
            lvls.append(nn.Sequential(*[LNResBlock(cout) for _ in range(blocks)]))
        self.ups, self.lvls = nn.ModuleList(ups), nn.ModuleList(lvls)
        self.out = nn.Conv2d(chs[-1], channels, 1)
        nn.init.constant_(self.out.bias, OUT_BIAS)             # start dark, like the background
        self.to(memory_format=CHANNELS_LAST)

    def forward(self, x: Tensor) -> Tensor:                     # (N, C, p, p) -> (N, C, p, p) in (0, 1)
        z = self.encoder(x)
        for up, lvl in zip(self.ups, self.lvls):
            z = lvl(F.relu(up(z)))
        return torch.sigmoid(self.out(z))


class PatchClassifier(nn.Module):
    def __init__(self, channels: int, p: int, width: int, levels: int, blocks: int, n_classes: int = 10):
        super().__init__()
        self.encoder = PatchEncoder(channels, p, width, levels, blocks)
        self.fc = nn.Linear(self.encoder.out_channels * self.encoder.out_res**2, n_classes)

    def forward(self, x: Tensor) -> Tensor:                     # (N, C, p, p) -> logits (N, n_classes)
        return self.fc(self.encoder(x).flatten(1))
