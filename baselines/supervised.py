"""Supervised reference (Tables 2 and 4, "Supervised"): MIST's networks trained WITH ground-truth locations.

MIST's H_eta (HeatmapNet) and T_tau (TaskHead) at MIST's default config, but no lifting: the boxes give the keypoints.
  x_gt = (box centre, side = max(box width, box height) clamped to MIST's [sizes[0], sizes[-1]])   (B, L, 3)
  tau step:  Adam on the task loss of T_tau(S(I, x_gt)); padding rows lie off the canvas (S samples zeros, S^-1
             pastes nothing), so TaskHead is reused unchanged. recon: eq. 8 over the real instances; classify:
             cross-entropy against each box's label (`instance_labels`, default: the reference knows which label
             belongs to which box), or eq. 9 over the real instances.
  eta step:  Adam on ||G(x_gt) - H_eta(I)||^2 (MIST's stage_heatmap with unit weights; padding masked out)
Prediction is MIST's (E_K on the heatmap; the task network on the top-K patches). The config is MIST's plus
`instance_labels`; MIST's lifting fields (kp_*, lam, heat_weight_temp) are accepted and unused, so one set of MIST
overrides applies to both.
"""
from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from mist_core.method import LogUniform, SearchSpace
from mist_core.mist import MIST, MISTConfig
from mist_core.task import instance_mask
from mist_core.types import Batch

__all__ = ["Supervised", "SupervisedConfig", "gt_keypoints", "instance_nll"]


class SupervisedConfig(MISTConfig):
    instance_labels: bool = Field(True, description="classify: per-box cross-entropy (True) or eq. 9 on the "
                                                    "ground-truth patches (False)")


def gt_keypoints(boxes: Tensor, counts: Tensor, size_lo: float, size_hi: float) -> tuple[Tensor, Tensor]:
    """Ground-truth boxes (B, L, 4) and counts (B,) -> keypoints (B, L, 3) and valid (B, L).

    A square of side max(w, h) (clamped to [size_lo, size_hi]) centred on each box. Padding rows go
    off the canvas (centre at -2 * size_hi), where S samples zeros and S^-1 pastes nothing.
    """
    L = boxes.shape[1]
    valid = instance_mask(counts, L)                                                  # (B, L)
    centre = (boxes[..., :2] + boxes[..., 2:]) / 2                                    # (B, L, 2)
    side = (boxes[..., 2:] - boxes[..., :2]).amax(-1).clamp(size_lo, size_hi)         # (B, L)
    centre = torch.where(valid[..., None], centre, torch.full_like(centre, -2.0 * size_hi))
    return torch.cat([centre, side[..., None]], -1), valid                            # (B, L, 3)


def instance_nll(probs: Tensor, labels: Tensor, valid: Tensor) -> Tensor:
    """Per-image mean cross-entropy (B,) of class probabilities (B, L, NC) against labels (B, L) where valid."""
    logp = probs.clamp_min(1e-12).log().gather(-1, labels.clamp_min(0)[..., None])[..., 0]   # (B, L)
    v = valid.to(probs.dtype)
    return -(logp * v).sum(1) / v.sum(1).clamp_min(1)


class Supervised(MIST):
    name = "supervised"
    Config = SupervisedConfig

    @classmethod
    def default_config(cls, scale: str) -> SupervisedConfig:
        return SupervisedConfig(**MIST.default_config(scale).model_dump())

    @classmethod
    def search_space(cls) -> SearchSpace:
        return {"lr_task": LogUniform(1e-4, 3e-3), "lr_heat": LogUniform(1e-4, 3e-3)}

    def stage_task(self, batch: Batch, kp: Tensor) -> Tensor:
        """A step on tau on the ground-truth patches. Returns the per-image task loss (B,) before the step."""
        out = self.run_task(batch, kp)
        loss = out.loss
        if self.task == "classify" and self.cfg.instance_labels:
            loss = instance_nll(out.class_probs, batch.labels, instance_mask(batch.counts, kp.shape[1]))
        self.opt_task.zero_grad(set_to_none=True)
        loss.mean().backward()
        self.opt_task.step()
        return loss.detach()

    def train_step(self, batch: Batch) -> dict[str, Tensor]:
        c = self.cfg
        h_scales, _ = self.heat(batch.images)                                         # (B, S, H, W)
        kp, valid = gt_keypoints(batch.boxes, batch.counts, c.sizes[0], c.sizes[-1])  # (B, L, 3), (B, L)
        task_loss = self.stage_task(batch, kp)
        heat_loss = self.stage_heatmap(h_scales, kp, torch.zeros_like(task_loss), valid)  # unit weights
        return {"task": task_loss.mean(), "heat": heat_loss}
