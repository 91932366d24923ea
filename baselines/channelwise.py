"""Channel-wise baseline (section 5.1 baseline 2, Table 2 "Ch.-wise"): one heatmap channel per instance.

MIST's single-scale heatmap trunk (a 3x3 stem, `heat_blocks` ResBlocks of `heat_width` channels, no downsampling)
ends in K channels; channel k gives one location by a spatial soft-argmax (Zhang et al. 2018: softmax of
logits / T over all H*W pixels, then the expected pixel centre). A square patch of side `size` (default: the
median of the scale's `sizes`) is sampled there by S, processed by MIST's T_tau and pasted back by S^-1; trunk and
T_tau are the scale's mist_core.presets networks. All of it is differentiable: one Adam on the task loss alone.

recon     eq. 8 over all K patches.
classify  eq. 9 over each image's top-`count` channels by score (as MIST uses its top-count keypoints).
Score of channel k = its peak softmax probability (a confident channel has a peaked map).
Departure: the paper gives no more detail than the above; K is the config's `k` (9 on MNIST hard), the
temperature is fixed (searchable) rather than learned, and patch size is fixed (channel-wise has no scale).
"""
from __future__ import annotations

import statistics

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from mist_core.config import StrictConfig
from mist_core.heatmap import ConvTrunk
from mist_core.method import LogUniform, Method, SearchSpace
from mist_core.optim import adam
from mist_core.presets import network_preset
from mist_core.sampler import keypoint_boxes, sample_patches
from mist_core.task import TaskHead, TaskOutput
from mist_core.types import Batch, DataSpec, Prediction, Task

from baselines.grid import rank_mask

__all__ = ["Channelwise", "ChannelwiseConfig", "soft_argmax"]


class ChannelwiseConfig(StrictConfig):
    k: int = Field(9, ge=1, description="heatmap channels = patches per image")
    size: float = Field(20.0, gt=0, description="patch side in pixels (fixed)")
    temperature: float = Field(1.0, gt=0, description="soft-argmax: softmax(logits / temperature)")
    patch_res: int = Field(32, ge=4, description="patches are resampled to patch_res x patch_res pixels")
    heat_width: int = Field(32, ge=1, description="channels of the heatmap trunk")
    heat_blocks: int = Field(4, ge=0, description="ResNet blocks of the heatmap trunk")
    task_width: int = Field(16, ge=1, description="base channels of the task network (doubled at each level)")
    task_levels: int = Field(5, ge=1, description="levels of the task network (each halves the patch)")
    task_blocks: int = Field(3, ge=0, description="ResNet blocks per task-network level")
    lr: float = Field(1e-4, gt=0, description="Adam learning rate of heatmap and task network together")


def soft_argmax(logits: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """logits (B, K, H, W) -> expected pixel centre per channel (B, K, 2) as (x, y), and the maps (B, K, H, W)."""
    B, K, H, W = logits.shape
    prob = F.softmax(logits.flatten(2) / temperature, dim=-1).view(B, K, H, W)        # (B, K, H, W)
    xs = torch.arange(W, device=logits.device, dtype=logits.dtype) + 0.5              # (W,) pixel centres
    ys = torch.arange(H, device=logits.device, dtype=logits.dtype) + 0.5              # (H,)
    x = (prob.sum(2) * xs).sum(-1)                                                    # (B, K)
    y = (prob.sum(3) * ys).sum(-1)                                                    # (B, K)
    return torch.stack([x, y], -1), prob


class Channelwise(Method):
    name = "channelwise"
    Config = ChannelwiseConfig
    tasks = ("recon", "classify")
    cuda_graph = True

    @classmethod
    def default_config(cls, scale: str) -> ChannelwiseConfig:
        t, h = network_preset(scale).task, network_preset(scale).heatmap
        return ChannelwiseConfig(patch_res=t.patch_res, task_width=t.task_width, task_levels=t.task_levels,
                                 task_blocks=t.task_blocks, lr=t.lr_task, heat_width=h.heat_width,
                                 heat_blocks=h.heat_blocks, size=float(statistics.median(h.sizes)))

    @classmethod
    def search_space(cls) -> SearchSpace:
        return {"lr": LogUniform(1e-4, 3e-3), "temperature": LogUniform(0.1, 10.0)}

    def __init__(self, cfg: ChannelwiseConfig | dict, spec: DataSpec, task: Task, device="cpu"):
        super().__init__(cfg, spec, task, device)
        c = self.cfg
        self.heat = ConvTrunk(spec.channels, c.heat_width, c.heat_blocks, c.k).to(self.device)  # K logit maps
        self.head = TaskHead(task, spec.channels, c.patch_res, c.task_width, c.task_levels, c.task_blocks,
                             spec.n_classes, max_size=c.size).to(self.device)
        self.opt = adam([*self.heat.parameters(), *self.head.parameters()], c.lr, self.device)

    def forward(self, batch: Batch) -> tuple[TaskOutput, Tensor, Tensor, Tensor, Tensor]:
        """-> task output, keypoints (B, K, 3), scores (B, K), maps (B, K, H, W), patches (B, K, C, p, p)."""
        xy, prob = soft_argmax(self.heat(batch.images), self.cfg.temperature)            # (B, K, 2), (B, K, H, W)
        kp = torch.cat([xy, torch.full_like(xy[..., :1], self.cfg.size)], -1)             # (B, K, 3)
        scores = prob.flatten(2).amax(-1)                                                 # (B, K)
        patches = sample_patches(batch.images, kp, self.cfg.patch_res)                    # (B, K, C, p, p)
        valid = rank_mask(scores.detach(), batch.counts) if self.task == "classify" else None
        return self.head(patches, kp, batch, valid=valid), kp, scores, prob, patches

    def train_step(self, batch: Batch) -> dict[str, Tensor]:
        out, kp, scores, _, _ = self.forward(batch)
        loss = out.loss.mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return {"task": loss.detach(), "peak": scores.detach().mean()}

    @torch.no_grad()
    def predict(self, images: Tensor, counts: Tensor | None = None) -> Prediction:
        B = images.shape[0]
        counts = counts if counts is not None else torch.full((B,), self.cfg.k, device=images.device)
        dummy = Batch(images, torch.full((B, 1), -1, dtype=torch.long, device=images.device),
                      images.new_zeros(B, 1, 4), counts)
        out, kp, scores, prob, patches = self.forward(dummy)
        return Prediction(boxes=keypoint_boxes(kp), scores=scores, recon=out.recon, class_probs=out.class_probs,
                          heatmap=prob.amax(1),
                          patches=out.patches_out if out.patches_out is not None else patches,
                          extras={"keypoints": kp})
