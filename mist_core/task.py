"""The task side shared by every patch-based method: T_tau on K patches and the task losses of eq. 8 and 9.

recon     T = patch auto-encoder; loss = || I - sum_k S^-1(T(P_k), x_k) ||^2 per image (eq. 8), averaged
          over pixels so it reads as an MSE.
classify  T = patch classifier; loss = || mean_l y_l - mean_k softmax(T(P_k)) ||^2 per image (eq. 9), over
          the image's top-L patches (L = its number of labelled instances: the weak supervision).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mist_core._profiling import profiled
from mist_core.sampler import paste_patches
from mist_core.tasknets import PatchAutoEncoder, PatchClassifier
from mist_core.types import Batch, Task

__all__ = ["TaskHead", "TaskOutput", "instance_mask"]


def instance_mask(counts: Tensor, k: int) -> Tensor:
    """(B,) counts -> (B, K) bool: the first `count` of K score-sorted patches stand for the image's instances."""
    return torch.arange(k, device=counts.device)[None, :] < counts[:, None]


@dataclass
class TaskOutput:
    loss: Tensor                       # (B,) per-image task loss
    patches_out: Tensor | None         # (B, K, C, p, p) decoded patches (recon)
    recon: Tensor | None               # (B, C, H, W)
    class_probs: Tensor | None         # (B, K, n_classes)

    def detach(self) -> "TaskOutput":
        return TaskOutput(*(None if t is None else t.detach() for t in self._fields()))

    def where(self, take: Tensor, other: "TaskOutput") -> "TaskOutput":
        """Per image: `other`'s outputs where take (B,) is true, else these. T_tau runs on each patch alone and the
        losses are per image, so this equals running it on the keypoints picked the same way."""
        def pick(a: Tensor | None, b: Tensor | None) -> Tensor | None:
            return None if a is None else torch.where(take.view(-1, *(1,) * (a.dim() - 1)), b, a)
        return TaskOutput(*(pick(a, b) for a, b in zip(self._fields(), other._fields())))

    def _fields(self) -> tuple[Tensor | None, ...]:
        return self.loss, self.patches_out, self.recon, self.class_probs


class TaskHead(nn.Module):
    def __init__(self, task: Task, channels: int, p: int, width: int, levels: int, blocks: int, n_classes: int = 10,
                 *, max_size: float):
        """max_size: the largest patch side (pixels) the method's keypoints can have (S^-1's window, recon)."""
        super().__init__()
        self.task, self.max_size = task, float(max_size)
        if task == "recon":
            self.net = PatchAutoEncoder(channels, p, width, levels, blocks)
        else:
            self.net = PatchClassifier(channels, p, width, levels, blocks, n_classes)

    def forward(self, patches: Tensor, kp: Tensor, batch: Batch, valid: Tensor | None = None) -> TaskOutput:
        """patches (B, K, C, p, p) sampled at keypoints kp (B, K, 3) of batch.images -> per-image loss and outputs.

        `valid` (B, K) selects the patches that count in the classification loss (default: the top count).
        """
        B, K, C, p, _ = patches.shape
        with profiled("mist.task_net"):  # a profiler range (bench/breakdown.py); free unless profiling
            out = self.net(patches.reshape(B * K, C, p, p))
        if self.task == "recon":
            dec = out.reshape(B, K, C, p, p)                                           # (B, K, C, p, p)
            H, W = batch.images.shape[-2:]
            recon = paste_patches(dec, kp, H, W, max_size=self.max_size)           # (B, C, H, W)
            loss = ((recon - batch.images) ** 2).flatten(1).mean(1)                 # (B,)
            return TaskOutput(loss, dec, recon, None)
        probs = F.softmax(out.view(B, K, -1), dim=-1)                               # (B, K, NC)
        valid = instance_mask(batch.counts, K) if valid is None else valid          # (B, K)
        return TaskOutput(self._hist_loss(probs, valid, batch), None, None, probs)

    @staticmethod
    def _true_hist(batch: Batch, n_classes: int, dtype) -> Tensor:
        # a comparison, not F.one_hot: one_hot checks the labels' range by reading them to the host
        classes = torch.arange(n_classes, device=batch.labels.device)                     # (NC,)
        onehot = (batch.labels[..., None] == classes).to(dtype)                           # (B, L, NC); -1 pads: 0
        return onehot.sum(1) / batch.counts.clamp_min(1)[:, None].to(dtype)              # (B, NC)

    def _hist_loss(self, probs: Tensor, valid: Tensor, batch: Batch) -> Tensor:
        """eq. 9: probs (B, K, NC), valid (B, K) -> (B,)."""
        v = valid.to(probs.dtype)
        pred_hist = (probs * v[..., None]).sum(1) / v.sum(1, keepdim=True).clamp_min(1)   # (B, NC)
        return ((self._true_hist(batch, probs.shape[-1], probs.dtype) - pred_hist) ** 2).sum(1)  # (B,)
