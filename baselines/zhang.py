"""Zhang et al. 2018 ("Zha18", Table 1): unsupervised landmark discovery as a structural representation, recon only.

Detector  a small hourglass (U-Net: `levels` conv levels down by 2x2 max-pooling, back up by bilinear
          upsampling with skip connections) gives K+1 channels; a softmax over channels gives soft masks
          D (B, K+1, H, W); channel K is the background. Landmark k = the D_k-weighted mean pixel position.
Losses    recon          MSE of the decoder's image (Zhang et al.: a perceptual loss on faces; MSE is our metric)
          concentration  mean over landmarks of (var_x + var_y) of the normalised D_k, in [-1, 1] image units
                         (Zhang et al.: 2 pi e (var_x + var_y)^2, an entropy bound; the plain variance keeps
                         the same minimiser and a gentler gradient for a tiny detector)
          separation     mean over landmark pairs of exp(-|mu_k - mu_l|^2 / (2 sep_sigma^2))
          equivariance   |theta(mu(I')) - mu(I)|^2 for I' = I warped by a random affine theta per image
                         (rotation, scale, shift; Zhang et al. use thin-plate splines)
Decoder   per-landmark features f_k = D_k-weighted mean of a 1x1 projection of the detector's last features,
          layer-normalised (without it and the hourglass's group norms they grow until the sigmoid saturates);
          the landmarks, rendered as isotropic Gaussians G_k (std `sigma` px) at 1/4 resolution, and the map
          sum_k G_k f_k are decoded by ResBlocks and two 2x upsamplings to the image (sigmoid).
Boxes are fixed-size squares (`box_size`, by default the median of MIST's sizes) at the landmarks; scores are
the landmark's mask mass sum_u D_k(u) / (H W) (how much of the image the landmark claims).
"""
from __future__ import annotations

import statistics

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from mist_core.config import StrictConfig
from mist_core.heatmap import ResBlock
from mist_core.method import LogUniform, Method, SearchSpace
from mist_core.optim import adam
from mist_core.presets import network_preset
from mist_core.sampler import keypoint_boxes
from mist_core.tasknets import CHANNELS_LAST
from mist_core.types import Batch, DataSpec, Prediction, Task

__all__ = ["Zhang", "ZhangConfig", "landmarks", "equivariance_loss", "random_affine"]

ZHANG_PRESETS: dict[str, dict] = {   # detector/decoder widths follow the scale's heatmap preset (heat_width)
    "smoke": dict(levels=2, feat=4, lr=1e-3),
    # quick: decoder output bias -2 (sigmoid 0.12, about the mean ink) instead of 0 (grey 0.5, train MSE still 0.15
    # at step 100), which also lets lr 1e-3 work (with bias 0 the decoder sat at all-black for 100+ steps):
    # test RMSE 0.261 (lr 3e-4, bias 0) -> 0.235 (lr 1e-3, bias -2), ~150 steps in 150 s, MNIST hard, 1 thread
    "quick": dict(levels=3, feat=8, lr=1e-3, decoder_bias=-2.0),
    "paper": dict(levels=3, feat=32, lr=1e-4),
}


class ZhangConfig(StrictConfig):
    k: int = Field(9, ge=1, description="landmarks")
    width: int = Field(32, ge=1, description="hourglass base width")
    levels: int = Field(3, ge=1, description="hourglass levels (each halves the map)")
    feat: int = Field(32, ge=1, description="per-landmark feature size")
    dec_blocks: int = Field(2, ge=0, description="ResNet blocks of the decoder")
    sigma: float = Field(2.0, gt=0, description="rendered Gaussian std, pixels of the 1/4-resolution map")
    box_size: float = Field(20.0, gt=0, description="side (px) of the square box at each landmark")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate")
    w_conc: float = Field(0.1, ge=0, description="weight of the concentration loss")
    w_sep: float = Field(0.1, ge=0, description="weight of the separation loss")
    w_eqv: float = Field(1.0, ge=0, description="weight of the equivariance loss")
    sep_sigma: float = Field(0.1, gt=0, description="separation loss width, [-1, 1] image units")
    rot_max: float = Field(0.3, ge=0, description="equivariance warp: largest rotation, radians")
    scale_max: float = Field(0.1, ge=0, description="equivariance warp: zoom in [1 - scale_max, 1 + scale_max]")
    shift_max: float = Field(0.1, ge=0, description="equivariance warp: largest shift, [-1, 1] image units")
    decoder_bias: float = Field(0.0, description="initial decoder output bias (pre-sigmoid)")


def _coords(H: int, W: int, device, dtype) -> tuple[Tensor, Tensor]:
    """Pixel centres in [-1, 1] units (align_corners=False): x (W,), y (H,)."""
    return ((torch.arange(W, device=device, dtype=dtype) + 0.5) * 2 / W - 1,
            (torch.arange(H, device=device, dtype=dtype) + 0.5) * 2 / H - 1)


def landmarks(masks: Tensor) -> tuple[Tensor, Tensor]:
    """Soft masks (B, K, H, W) -> mean positions (B, K, 2) as (x, y) in [-1, 1] units and variances (B, K, 2)."""
    B, K, H, W = masks.shape
    x, y = _coords(H, W, masks.device, masks.dtype)
    d = masks / masks.sum((2, 3), keepdim=True).clamp_min(1e-8)                    # (B, K, H, W) sums to 1
    px, py = d.sum(2), d.sum(3)                                                     # (B, K, W), (B, K, H)
    mx, my = (px * x).sum(-1), (py * y).sum(-1)                                     # (B, K)
    vx = (px * (x - mx[..., None]) ** 2).sum(-1)
    vy = (py * (y - my[..., None]) ** 2).sum(-1)
    return torch.stack([mx, my], -1), torch.stack([vx, vy], -1)


def random_affine(B: int, c: ZhangConfig, device) -> Tensor:
    """(B, 2, 3) affine maps in [-1, 1] units (F.affine_grid's convention: output u samples input theta(u))."""
    u = lambda lo, hi: torch.empty(B, device=device).uniform_(lo, hi)               # noqa: E731
    a, s = u(-c.rot_max, c.rot_max), u(1 - c.scale_max, 1 + c.scale_max)
    tx, ty = u(-c.shift_max, c.shift_max), u(-c.shift_max, c.shift_max)
    cos, sin = torch.cos(a) * s, torch.sin(a) * s
    return torch.stack([torch.stack([cos, -sin, tx], -1), torch.stack([sin, cos, ty], -1)], 1)


def warp(images: Tensor, theta: Tensor) -> Tensor:
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def equivariance_loss(mu: Tensor, mu_warped: Tensor, theta: Tensor) -> Tensor:
    """Landmarks mu (B, K, 2) of I, mu_warped of warp(I, theta): per-image mean |theta(mu_warped) - mu|^2 (B,)."""
    back = mu_warped @ theta[:, :, :2].transpose(1, 2) + theta[:, None, :, 2]      # (B, K, 2)
    return ((back - mu) ** 2).sum(-1).mean(-1)


class Hourglass(nn.Module):
    def __init__(self, in_ch: int, width: int, levels: int, out_ch: int):
        super().__init__()
        chs = [width * 2**i for i in range(levels)]
        conv = lambda i, o: nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.GroupNorm(1, o), nn.ReLU(),  # noqa: E731
                                          ResBlock(o), nn.GroupNorm(1, o))
        self.down = nn.ModuleList(conv(i, o) for i, o in zip([in_ch] + chs[:-1], chs))
        self.up = nn.ModuleList(conv(chs[i + 1] + chs[i], chs[i]) for i in range(levels - 1))
        self.head = nn.Conv2d(chs[0], out_ch, 1)
        self.out_features = chs[0]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, C, H, W) -> logits (B, out_ch, H, W) and last features (B, width, H, W)."""
        skips = []
        for i, d in enumerate(self.down):
            x = d(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for i in reversed(range(len(self.up))):
            x = F.interpolate(x, size=skips[i].shape[-2:], mode="bilinear", align_corners=False)
            x = self.up[i](torch.cat([x, skips[i]], 1))
        return self.head(x), x


class ZhangNet(nn.Module):
    def __init__(self, spec: DataSpec, c: ZhangConfig):
        super().__init__()
        self.hourglass = Hourglass(spec.channels, c.width, c.levels, c.k + 1)
        self.proj = nn.Conv2d(self.hourglass.out_features, c.feat, 1)
        self.feat_norm = nn.LayerNorm(c.feat)
        w = c.width
        self.dec_in = nn.Conv2d(c.feat + c.k, w, 3, padding=1)
        self.dec_low = nn.Sequential(*[ResBlock(w) for _ in range(c.dec_blocks)])
        self.dec_up = nn.Sequential(nn.ConvTranspose2d(w, w, 2, stride=2), nn.ReLU(), ResBlock(w),
                                    nn.ConvTranspose2d(w, w, 2, stride=2), nn.ReLU(), ResBlock(w),
                                    nn.Conv2d(w, spec.channels, 3, padding=1))
        with torch.no_grad():
            self.dec_up[-1].bias.fill_(c.decoder_bias)
        self.to(memory_format=CHANNELS_LAST)  # NHWC, as MIST's networks: oneDNN/cuDNN convolve it faster

    def detect(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """-> soft masks (B, K+1, H, W) and features (B, F, H, W)."""
        logits, feats = self.hourglass(images.contiguous(memory_format=CHANNELS_LAST))
        return F.softmax(logits, dim=1), self.proj(feats)

    def decode(self, mu: Tensor, masks: Tensor, feats: Tensor, sigma: float, H: int, W: int) -> Tensor:
        """Landmarks (B, K, 2), masks (B, K, H, W), features (B, F, H, W) -> image (B, C, H, W)."""
        d = masks / masks.sum((2, 3), keepdim=True).clamp_min(1e-8)                 # (B, K, H, W)
        f = self.feat_norm(torch.einsum("bkhw,bfhw->bkf", d, feats))               # (B, K, F)
        h, w = max(1, H // 4), max(1, W // 4)
        x, y = _coords(h, w, mu.device, mu.dtype)
        s2 = 2 * (2 * sigma / max(h, w)) ** 2                                       # sigma in [-1, 1] units
        g = torch.exp(-((x - mu[..., 0:1]) ** 2)[:, :, None, :] / s2
                      - ((y - mu[..., 1:2]) ** 2)[:, :, :, None] / s2)             # (B, K, h, w)
        z = torch.cat([torch.einsum("bkhw,bkf->bfhw", g, f), g], 1)                # (B, F + K, h, w)
        out = self.dec_up(self.dec_low(F.relu(self.dec_in(z))))                     # (B, C, 4h, 4w)
        if out.shape[-2:] != (H, W):
            out = F.interpolate(out, size=(H, W), mode="bilinear", align_corners=False)
        return torch.sigmoid(out)


class Zhang(Method):
    name = "zhang"
    Config = ZhangConfig
    tasks = ("recon",)
    cuda_graph = True
    step_draws_noise = True   # a random affine warp per image

    @classmethod
    def default_config(cls, scale: str) -> ZhangConfig:
        h = network_preset(scale).heatmap
        return ZhangConfig(**ZHANG_PRESETS[scale], width=h.heat_width, box_size=float(statistics.median(h.sizes)))

    @classmethod
    def search_space(cls) -> SearchSpace:
        return {"lr": LogUniform(1e-4, 3e-3), "w_conc": LogUniform(1e-3, 1.0), "w_sep": LogUniform(1e-3, 1.0),
                "w_eqv": LogUniform(1e-2, 10.0), "sigma": LogUniform(0.5, 4.0)}

    def __init__(self, cfg: ZhangConfig | dict, spec: DataSpec, task: Task, device="cpu"):
        super().__init__(cfg, spec, task, device)
        self.net = ZhangNet(spec, self.cfg).to(self.device)
        self.opt = adam(self.net.parameters(), self.cfg.lr, self.device)
        self.off_diagonal = ~torch.eye(self.cfg.k, dtype=torch.bool, device=self.device)   # (K, K) landmark pairs

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """-> recon (B, C, H, W), landmarks (B, K, 2) in [-1, 1], variances (B, K, 2), masks (B, K+1, H, W)."""
        H, W = images.shape[-2:]
        masks, feats = self.net.detect(images)
        mu, var = landmarks(masks[:, :-1])
        return self.net.decode(mu, masks[:, :-1], feats, self.cfg.sigma, H, W), mu, var, masks

    def train_step(self, batch: Batch) -> dict[str, Tensor]:
        c, images = self.cfg, batch.images
        recon, mu, var, _ = self.forward(images)
        rec = ((recon - images) ** 2).mean()
        conc = var.sum(-1).mean()
        dist2 = ((mu[:, :, None] - mu[:, None]) ** 2).sum(-1)                      # (B, K, K)
        # mean over the off-diagonal pairs by a mask product: boolean indexing has a data-dependent shape (a host read)
        pairs = torch.exp(-dist2 / (2 * c.sep_sigma**2)) * self.off_diagonal         # (B, K, K)
        sep = pairs.sum() / (len(batch) * c.k * (c.k - 1)) if c.k > 1 else rec.new_zeros(())
        theta = random_affine(len(batch), c, images.device)                         # (B, 2, 3)
        masks_w, _ = self.net.detect(warp(images, theta))
        eqv = equivariance_loss(mu, landmarks(masks_w[:, :-1])[0], theta).mean()
        loss = rec + c.w_conc * conc + c.w_sep * sep + c.w_eqv * eqv
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        parts = {"loss": loss, "recon": rec, "conc": conc, "sep": sep, "eqv": eqv}
        return {k: v.detach() for k, v in parts.items()}

    @torch.no_grad()
    def predict(self, images: Tensor, counts: Tensor | None = None) -> Prediction:
        B, _, H, W = images.shape
        recon, mu, _, masks = self.forward(images)
        centre = torch.stack([(mu[..., 0] + 1) * W / 2, (mu[..., 1] + 1) * H / 2], -1)  # (B, K, 2) pixels
        kp = torch.cat([centre, torch.full_like(centre[..., :1], self.cfg.box_size)], -1)  # (B, K, 3)
        scores = masks[:, :-1].mean((2, 3))                                         # (B, K)
        return Prediction(boxes=keypoint_boxes(kp), scores=scores, recon=recon, heatmap=1 - masks[:, -1],
                          extras={"keypoints": kp})
