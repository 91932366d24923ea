"""A non-learned detection floor: k-means of each image's ink pixels, one square box of the patch size per cluster.

Nothing is trained (`learns = False`: the trainer runs one pass over the training data, each step only reporting
the reconstruction error of its batch). Each image's pixels brighter than `ink` are clustered into its `count`
clusters (K-means weighted by intensity, farthest-point initialisation, a fixed number of Lloyd iterations), so
any learned detector is read against what plain clustering finds. Reconstruction keeps the input's pixels inside
the boxes (the input's own patches pasted back) and zero elsewhere; classification is uniform (chance).
"""
from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from mist_core.config import StrictConfig
from mist_core.method import Method
from mist_core.sampler import keypoint_boxes
from mist_core.types import Batch, Prediction


class KMeansConfig(StrictConfig):
    k: int = Field(9, ge=1, description="clusters when the image's count is not given")
    box_size: float = Field(20.0, gt=0, description="side (px) of each square box: MIST's patch size")
    ink: float = Field(0.1, ge=0, lt=1, description="pixels above this intensity are clustered")
    iterations: int = Field(20, ge=1, description="Lloyd iterations")


def kmeans_centres(images: Tensor, counts: Tensor, k: int, ink: float, iterations: int) -> tuple[Tensor, Tensor]:
    """Intensity-weighted k-means of ink pixels per image: centres (B, k, 2) as (x, y) px and masses (B, k).

    images (B, C, H, W); counts (B,) clusters per image (<= k; the rest get mass 0 and sit at the image centre).
    Loops over iterations and clusters only; every step is batched over images and pixels.
    """
    B, _, H, W = images.shape
    N = H * W
    w = images.mean(1).flatten(1)                                                    # (B, N) intensity
    w = torch.where(w > ink, w, torch.zeros_like(w))
    ys, xs = torch.meshgrid(torch.arange(H, dtype=w.dtype), torch.arange(W, dtype=w.dtype), indexing="ij")
    pix = torch.stack([xs.flatten(), ys.flatten()], -1).to(w.device) + 0.5           # (N, 2) pixel centres
    use = torch.arange(k, device=w.device)[None, :] < counts.clamp(1, k)[:, None]     # (B, k)
    # farthest-point initialisation: the brightest pixel, then the ink pixel farthest from the chosen centres
    centres = pix[w.argmax(1)][:, None, :].repeat(1, k, 1)                           # (B, k, 2)
    d2 = ((pix[None] - centres[:, :1]) ** 2).sum(-1)                                  # (B, N)
    for j in range(1, k):
        nxt = pix[(w * d2).argmax(1)]                                                 # (B, 2)
        centres[:, j] = nxt
        d2 = torch.minimum(d2, ((pix[None] - nxt[:, None]) ** 2).sum(-1))
    for _ in range(iterations):
        dx = pix[None, :, None, 0] - centres[:, None, :, 0]                           # (B, N, k)
        dy = pix[None, :, None, 1] - centres[:, None, :, 1]
        dist = (dx * dx + dy * dy).masked_fill(~use[:, None, :], float("inf"))        # (B, N, k)
        nearest = dist.argmin(-1)                                                     # (B, N)
        mass = w.new_zeros(B, k).scatter_add_(1, nearest, w)                          # (B, k)
        sums = w.new_zeros(B, k, 2).scatter_add_(1, nearest[..., None].expand(B, N, 2), w[..., None] * pix[None])
        mean = sums / mass.clamp_min(1e-9)[..., None]                                 # (B, k, 2)
        centres = torch.where((mass > 0)[..., None], mean, centres)                   # empty clusters stay
    centres = torch.where(use[..., None], centres, torch.tensor([W / 2, H / 2], dtype=w.dtype, device=w.device))
    return centres, torch.where(use, mass, torch.zeros_like(mass))


class KMeansFloor(Method):
    name = "kmeans"
    Config = KMeansConfig
    tasks = ("recon", "classify")
    learns = False  # predict clusters each image afresh; training steps only report the loss

    @classmethod
    def default_config(cls, scale: str) -> KMeansConfig:
        return KMeansConfig()

    def train_step(self, batch: Batch) -> dict[str, Tensor]:
        # nothing to learn: the loss is the reconstruction error of the prediction, constant over steps
        pred = self.predict(batch.images, batch.counts)
        return {"loss": ((pred.recon - batch.images) ** 2).mean()}

    @torch.no_grad()
    def predict(self, images: Tensor, counts: Tensor | None = None) -> Prediction:
        c = self.cfg
        B, C, H, W = images.shape
        k = c.k if counts is None else max(int(counts.max()), 1)
        counts = torch.full((B,), k, device=images.device) if counts is None else counts
        centres, mass = kmeans_centres(images, counts, k, c.ink, c.iterations)        # (B, k, 2), (B, k)
        kp = torch.cat([centres, torch.full_like(centres[..., :1], c.box_size)], -1)  # (B, k, 3)
        boxes = keypoint_boxes(kp)                                                     # (B, k, 4)
        X = torch.arange(W, device=images.device, dtype=images.dtype) + 0.5
        Y = torch.arange(H, device=images.device, dtype=images.dtype) + 0.5
        inx = (X[None, None] >= boxes[..., 0:1]) & (X[None, None] < boxes[..., 2:3])    # (B, k, W)
        iny = (Y[None, None] >= boxes[..., 1:2]) & (Y[None, None] < boxes[..., 3:4])    # (B, k, H)
        inside = (iny[..., :, None] & inx[..., None, :] & (mass > 0)[..., None, None]).any(1)  # (B, H, W)
        probs = images.new_full((B, k, self.spec.n_classes), 1.0 / self.spec.n_classes)
        return Prediction(boxes=boxes, scores=mass, recon=images * inside[:, None].to(images.dtype),
                          class_probs=probs if self.task == "classify" else None, extras={"keypoints": kp})
