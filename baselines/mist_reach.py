"""MIST whose keypoint step also reaches digits no patch touches: a relocation step after the paper's local x step.

Ours, not the paper's. Algorithm 1's x step (line 4) moves each keypoint a few pixels down the task loss's gradient:
a digit that no patch overlaps contributes no gradient and is never found, and two patches that settle on one digit
stay there (the ladder: about a third of the quick MNIST-hard digits have no patch centre within 4 px, and 0.36 pairs
of patches per image share a digit). After the local steps, this variant proposes, per image, to move its least
useful patch to the strongest evidence no patch explains, and keeps the move where the task loss is lower:
  usefulness  recon: the ink the patch explains, sum of min(decoded patch, input patch); classify: the ink it covers
              (only the top-`count` patches, the ones that stand for digits, can move). Of two patches whose
              centres are closer than `dup_dist` x their side, the one with the lower heatmap score counts as
              useless (it repeats the other).
  evidence    recon: the residual's ink, max(I - reconstruction, 0); classify: the input's ink outside every patch
              that stands for a digit. Summed over a patch-sized window at every pixel; the proposal is the
              window with the most.
  accept      per image, when the task loss (not the lifted objective: a relocation is a jump, not a small step)
              at the proposal is below that at the current keypoints. `relocations` rounds per step, each one task
              forward, for the proposal: the evidence reuses T_tau's outputs from the x step (or the round before).
Then `centre_steps` rounds of mean-shift move every patch to the ink centroid of what it covers: the task loss is
content with a patch on part of a digit (a classifier reads a digit off-centre, a decoder copies half a digit), the
detection metric is not, and the ink prior is the one the k-means floor uses.
The heatmap is then regressed to G of these keypoints, as in Algorithm 1's line 5. Everything else (networks,
presets, E_K, S, S^-1, G, the tau and eta steps, eq. 9's loss) is MIST's, and so is prediction.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from pydantic import Field
from torch import Tensor

from mist_core.mist import MIST, MISTConfig
from mist_core.sampler import paste_patches, sample_patches
from mist_core.task import TaskOutput
from mist_core.types import Batch

__all__ = ["MISTReach", "MISTReachConfig", "window_sum"]


class MISTReachConfig(MISTConfig):
    relocations: int = Field(1, ge=0, description="relocation rounds per training step (0: MIST's x step alone)")
    dup_dist: float = Field(0.5, ge=0, description="two centres closer than this times the patch side share a digit")
    centre_steps: int = Field(2, ge=0,
                              description="mean-shift rounds after relocation: each centre to its ink centroid")


def window_sum(maps: Tensor, side: int) -> Tensor:
    """(B, H, W) -> (B, H, W): the sum over the side x side window (side odd) centred at each pixel, zero outside."""
    return F.avg_pool2d(maps[:, None], side, stride=1, padding=side // 2, count_include_pad=True)[:, 0] * side * side


class MISTReach(MIST):
    name = "mist_reach"
    Config = MISTReachConfig

    @classmethod
    def default_config(cls, scale: str) -> MISTReachConfig:
        return MISTReachConfig(**MIST.default_config(scale).model_dump())

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
        useful = torch.where(repeats, torch.zeros_like(ink), ink)
        # classify: only the top-`count` patches stand for digits; moving another changes no loss, so never pick one
        return torch.where(self.valid_mask(batch), useful, torch.full_like(ink, torch.inf))

    def evidence(self, batch: Batch, x: Tensor, out: TaskOutput) -> Tensor:
        """(B, H, W): ink no patch explains (recon: the residual's; classify: the input's outside every patch that
        stands for a digit)."""
        H, W = batch.images.shape[-2:]
        if self.task == "recon":
            return (batch.images - out.recon).clamp_min(0).sum(1)                       # (B, H, W)
        valid = self.valid_mask(batch).to(batch.images.dtype)[..., None, None, None]     # (B, K, 1, 1, 1)
        ones = valid.expand(*x.shape[:2], 1, 2, 2)                                       # (B, K, 1, 2, 2)
        covered = paste_patches(ones, x, H, W, max_size=self.cfg.sizes[-1]).squeeze(1) > 0.5  # (B, H, W)
        return batch.images.sum(1) * (~covered)

    def relocate(self, batch: Batch, x: Tensor, scores: Tensor, out: TaskOutput | None = None
                 ) -> tuple[Tensor, TaskOutput]:
        """One round: the least useful patch of each image moves to its strongest unexplained window when that
        lowers the image's task loss. x (B, K, 3), scores (B, K), T_tau's outputs at x if already computed (the x
        step's, a previous round's) -> new x and T_tau's outputs there (loss (B,))."""
        B, K, _ = x.shape
        H, W = batch.images.shape[-2:]
        with torch.no_grad():
            out = self.run_task(batch, x) if out is None else out
            loss = out.loss                                                              # (B,) at x
            side = 2 * int(round(self.cfg.sizes[0] / 2)) + 1                            # odd window ~ the patch
            ev = window_sum(self.evidence(batch, x, out), side).flatten(1)               # (B, H*W)
            at = ev.argmax(1)                                                            # (B,)
            target = torch.stack([(at % W).to(x.dtype) + 0.5, (at // W).to(x.dtype) + 0.5], -1)  # (B, 2)
            worst = self.usefulness(batch, x, out, scores).argmin(1)                     # (B,)
            move = (torch.arange(K, device=x.device) == worst[:, None])[..., None]        # (B, K, 1)
            moved = torch.cat([target[:, None, :].expand(B, K, 2), x[..., 2:]], -1)      # (B, K, 3)
            proposal = self.keep_inside(torch.where(move, moved, x), H, W)               # (B, K, 3)
            new = self.run_task(batch, proposal)
            better = new.loss < loss                                                     # (B,)
            return torch.where(better[:, None, None], proposal, x), out.where(better, new)

    def centre(self, batch: Batch, x: Tensor) -> Tensor:
        """One mean-shift round: each patch (B, K, 3) moves to the ink-weighted centroid of what it covers (no move
        where it covers no ink), so that a patch sits on its digit's centre rather than on part of it."""
        p = self.cfg.patch_res
        w = sample_patches(batch.images, x, p).sum(2).clamp_min(0)                          # (B, K, p, p) ink
        t = (torch.arange(p, device=x.device, dtype=x.dtype) + 0.5) / p - 0.5              # (p,) in (-1/2, 1/2)
        mass = w.sum((2, 3))                                                                # (B, K)
        dx = (w.sum(2) * t).sum(2) / mass.clamp_min(1e-6)                                   # (B, K) in patch sides
        dy = (w.sum(3) * t).sum(2) / mass.clamp_min(1e-6)
        shift = torch.stack([dx, dy], -1) * x[..., 2:3] * (mass > 1e-6)[..., None]          # (B, K, 2) pixels
        H, W = batch.images.shape[-2:]
        return self.keep_inside(torch.cat([x[..., :2] + shift, x[..., 2:]], -1), H, W)

    def keypoint_targets(self, batch: Batch, kp0: Tensor, scores: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """MIST's x step, then `relocations` rounds of relocation and `centre_steps` of mean-shift."""
        x_local, loss, out = self.keypoint_descent(batch, kp0, keep_output=True)  # out: T_tau at x_local, reused
        x = x_local
        for _ in range(self.cfg.relocations):
            x, out = self.relocate(batch, x, scores, out)
            loss = out.loss
        relocated = (x[..., :2] != x_local[..., :2]).any(-1).float().sum(1).mean()        # patches moved per image
        if self.cfg.centre_steps:
            for _ in range(self.cfg.centre_steps):
                x = self.centre(batch, x)
            with torch.no_grad():
                loss = self.run_task(batch, x).loss                                         # (B,) at the centred x
        return x, loss, {"relocated": relocated}
