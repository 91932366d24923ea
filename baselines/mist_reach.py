"""MIST whose keypoint step also reaches digits no patch touches: a relocation step after the paper's local x step.

Ours, not the paper's. Algorithm 1's x step (line 4) moves each keypoint a few pixels down the task loss's gradient:
a digit that no patch overlaps contributes no gradient and is never found, and two patches that settle on one digit
stay there (the ladder: about a third of the quick MNIST-hard digits have no patch centre within 4 px, and 0.36 pairs
of patches per image share a digit). After the local steps, this variant proposes, per image, to move its least
useful patch to the strongest evidence no patch explains, and keeps the move where the task loss is lower:
  usefulness  recon: the ink the patch explains, sum of min(decoded patch, input patch); classify: the ink it covers.
              Of two patches whose centres are closer than `dup_dist` x their side, the one with the lower heatmap
              score counts as useless (it repeats the other).
  evidence    recon: the residual's ink, max(I - reconstruction, 0); classify: the input's ink outside every patch.
              Summed over a patch-sized window at every pixel; the proposal is the window with the most.
  accept      per image, when the task loss (not the lifted objective: a relocation is a jump, not a small step)
              at the proposal is below that at the current keypoints. `relocations` rounds per step, each one task
              forward for the evidence and one for the proposal.
The heatmap is then regressed to G of the accepted keypoints, as in Algorithm 1's line 5. Everything else (networks,
presets, E_K, S, S^-1, G, the tau and eta steps) is MIST's, and so is prediction.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from typing import Literal

from pydantic import Field
from torch import Tensor

from mist_core.mist import MIST, MISTConfig
from mist_core.sampler import paste_patches, sample_patches
from mist_core.task import TaskOutput
from mist_core.types import Batch

__all__ = ["MISTReach", "MISTReachConfig", "window_sum", "matched_nll"]


class MISTReachConfig(MISTConfig):
    relocations: int = Field(1, ge=0)         # relocation rounds per training step (0: MIST's x step alone)
    relocate_first: bool = False              # relocate E_K's keypoints, then the local x step (else after it)
    cls_loss: Literal["histogram", "matched"] = "matched"   # classify: eq. 9, or each patch matched to one label
    match_eps: float = Field(0.05, gt=0)      # the matching's entropic regularisation (nats)
    match_iters: int = Field(30, ge=1)        # its Sinkhorn iterations
    dup_dist: float = Field(0.5, ge=0)        # two centres closer than this x the patch side share a digit


def window_sum(maps: Tensor, side: int) -> Tensor:
    """(B, H, W) -> (B, H, W): the sum over the side x side window (side odd) centred at each pixel, zero outside."""
    return F.avg_pool2d(maps[:, None], side, stride=1, padding=side // 2, count_include_pad=True)[:, 0] * side * side


def matched_nll(probs: Tensor, labels: Tensor, valid: Tensor, eps: float, iters: int) -> Tensor:
    """Per-image loss (B,): each valid patch's negative log-likelihood of the label it is matched to.

    probs (B, K, NC) class probabilities per patch, labels (B, L) (-1 = padding), valid (B, K) the patches that stand
    for instances. The matching is an entropic optimal transport (Sinkhorn, in the log domain, `iters` rounds)
    between the valid patches (one unit each) and the image's labels (class c: its count), with cost -log p_k(c),
    normalised to the patches' total; it is held fixed (detached) and the loss is the matched cost. Unlike eq. 9's
    histogram of mean probabilities, which a patch between two digits can satisfy with a blend of both, every patch
    must be confident about one digit the image holds.
    """
    B, K, NC = probs.shape
    cost = -probs.clamp_min(1e-6).log()                                                # (B, K, NC)
    classes = torch.arange(NC, device=labels.device)
    n_c = (labels[..., None] == classes).sum(1).to(probs.dtype)                         # (B, NC) label counts
    v = valid.to(probs.dtype)                                                           # (B, K)
    n_c = n_c * (v.sum(1, keepdim=True) / n_c.sum(1, keepdim=True).clamp_min(1))       # as much mass as patches
    with torch.no_grad():
        log_a = torch.where(valid, 0.0, -torch.inf)                                     # (B, K) log 1 per patch
        log_b = n_c.log()                                                               # (B, NC), -inf: absent
        logits = -cost / eps                                                            # (B, K, NC)
        f = torch.zeros_like(log_a)
        g = torch.zeros_like(log_b)
        for _ in range(iters):                                                          # fixed rounds: no host read
            f = log_a - torch.logsumexp(logits + g[:, None, :], 2)
            g = log_b - torch.logsumexp(logits + f[:, :, None], 1)
        plan = torch.exp(logits + f[:, :, None] + g[:, None, :]).nan_to_num(0.0)       # (B, K, NC), rows sum to 1
    return (plan * cost).sum((1, 2)) / v.sum(1).clamp_min(1)                            # (B,)


class MISTReach(MIST):
    name = "mist_reach"
    Config = MISTReachConfig

    @classmethod
    def default_config(cls, scale: str) -> MISTReachConfig:
        return MISTReachConfig(**MIST.default_config(scale).model_dump())

    def run_task(self, batch: Batch, kp: Tensor) -> TaskOutput:
        """MIST's task forward; for classify with cls_loss 'matched', the matched loss instead of eq. 9."""
        out = super().run_task(batch, kp)
        if self.task == "classify" and self.cfg.cls_loss == "matched":
            out.loss = matched_nll(out.class_probs, batch.labels, self.valid_mask(batch), self.cfg.match_eps,
                                   self.cfg.match_iters)
        return out

    # --- the relocation step ---------------------------------------------------------------------------------
    def usefulness(self, batch: Batch, x: Tensor, out: TaskOutput, scores: Tensor) -> Tensor:
        """(B, K): how much of the image each patch at x (B, K, 3) explains; duplicates count as useless."""
        c = self.cfg
        inp = sample_patches(batch.images, x, c.patch_res)                              # (B, K, C, p, p)
        if self.task == "recon":
            ink = torch.minimum(out.patches_out, inp).flatten(2).sum(2)                  # (B, K) explained
        else:
            ink = inp.flatten(2).sum(2)                                                  # (B, K) covered
        ink = ink * (x[..., 2] / c.patch_res) ** 2                                       # patch pixels -> image pixels
        K = x.shape[1]
        d = torch.cdist(x[..., :2], x[..., :2])                                          # (B, K, K)
        close = d < c.dup_dist * torch.minimum(x[..., :, None, 2], x[..., None, :, 2])   # (B, K, K)
        later = torch.arange(K, device=x.device)[:, None] > torch.arange(K, device=x.device)[None, :]  # (K, K)
        si, sj = scores[:, :, None], scores[:, None, :]                                  # (B, K, 1), (B, 1, K)
        lower = (si < sj) | ((si == sj) & later)                                         # (B, K, K): k ranks below l
        repeats = (close & lower).any(2)                                                 # (B, K)
        return torch.where(repeats, torch.zeros_like(ink), ink)

    def evidence(self, batch: Batch, x: Tensor, out: TaskOutput) -> Tensor:
        """(B, H, W): ink no patch explains (recon: the residual's; classify: the input's outside every patch)."""
        H, W = batch.images.shape[-2:]
        if self.task == "recon":
            return (batch.images - out.recon).clamp_min(0).sum(1)                       # (B, H, W)
        ones = torch.ones(*x.shape[:2], 1, 2, 2, device=x.device, dtype=batch.images.dtype)  # (B, K, 1, 2, 2)
        covered = paste_patches(ones, x, H, W, max_size=self.cfg.sizes[-1]).squeeze(1) > 0.5  # (B, H, W)
        return batch.images.sum(1) * (~covered)

    def relocate(self, batch: Batch, x: Tensor, scores: Tensor) -> tuple[Tensor, Tensor]:
        """One round: the least useful patch of each image moves to its strongest unexplained window when that
        lowers the image's task loss. x (B, K, 3), scores (B, K) -> new x and its task loss (B,)."""
        B, K, _ = x.shape
        H, W = batch.images.shape[-2:]
        with torch.no_grad():
            out = self.run_task(batch, x)
            loss = out.loss                                                              # (B,) at x
            side = 2 * int(round(self.cfg.sizes[0] / 2)) + 1                            # odd window ~ the patch
            ev = window_sum(self.evidence(batch, x, out), side).flatten(1)               # (B, H*W)
            at = ev.argmax(1)                                                            # (B,)
            target = torch.stack([(at % W).to(x.dtype) + 0.5, (at // W).to(x.dtype) + 0.5], -1)  # (B, 2)
            worst = self.usefulness(batch, x, out, scores).argmin(1)                     # (B,)
            move = (torch.arange(K, device=x.device) == worst[:, None])[..., None]        # (B, K, 1)
            moved = torch.cat([target[:, None, :].expand(B, K, 2), x[..., 2:]], -1)      # (B, K, 3)
            proposal = self.keep_inside(torch.where(move, moved, x), H, W)               # (B, K, 3)
            new_loss = self.run_task(batch, proposal).loss                               # (B,)
            better = new_loss < loss                                                     # (B,)
            return torch.where(better[:, None, None], proposal, x), torch.where(better, new_loss, loss)

    def keypoint_targets(self, batch: Batch, kp0: Tensor, scores: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """MIST's x step and `relocations` rounds of relocation (after it, or before it with relocate_first)."""
        x = kp0
        if self.cfg.relocate_first:
            for _ in range(self.cfg.relocations):
                x, _ = self.relocate(batch, x, scores)
            relocated = (x[..., :2] != kp0[..., :2]).any(-1).float().sum(1).mean()         # patches moved per image
            x, loss, _ = super().keypoint_targets(batch, x, scores)
            return x, loss, {"relocated": relocated}
        x_local, loss, _ = super().keypoint_targets(batch, kp0, scores)
        x = x_local
        for _ in range(self.cfg.relocations):
            x, loss = self.relocate(batch, x, scores)
        relocated = (x[..., :2] != x_local[..., :2]).any(-1).float().sum(1).mean()        # patches moved per image
        return x, loss, {"relocated": relocated}
