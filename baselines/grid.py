"""Grid baseline (section 5.1, baseline 1): MIST's task network applied to every cell of a fixed grid.

`g` rows and round(g * W / H) columns of square cells (3 x 3 on MNIST hard; non-square cells are refused: S
samples square patches). Each cell is one patch: S samples it (the cell's centre and side), the SAME T_tau as MIST
(the scale's mist_core.presets TaskNetPreset) processes it, and S^-1 pastes it back. Neighbouring cells' bilinear
weights sum to one across their shared edge: all-ones patches paste to an all-ones image (away from its border).

recon     eq. 8 over all g*g cells. Score of a cell = the mean of its decoded patch (the ink it reconstructs), so
          the cells that carry content rank first for the count-based metrics.
classify  eq. 9 over the image's top-`count` cells by input ink (the mean of the input patch), as MIST uses its
          top-count keypoints: all cells would ask empty ones to match the label histogram (there is no background
          class). Score of a cell = that same input ink, so the metrics see the cells the loss was computed on.
Boxes are the cells. There is nothing to localise: the grid is the floor a detector has to beat.
"""
from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from mist_core.config import StrictConfig
from mist_core.method import LogUniform, Method, SearchSpace
from mist_core.optim import adam
from mist_core.presets import network_preset
from mist_core.sampler import sample_patches
from mist_core.task import TaskHead, TaskOutput
from mist_core.types import Batch, DataSpec, Prediction, Task

__all__ = ["Grid", "GridConfig", "grid_layout", "rank_mask"]


class GridConfig(StrictConfig):
    g: int = Field(3, ge=1, description="rows of cells; columns = round(g * W / H)")
    patch_res: int = Field(32, ge=4, description="cells are resampled to patch_res x patch_res pixels")
    task_width: int = Field(16, ge=1, description="base channels of the task network (doubled at each level)")
    task_levels: int = Field(5, ge=1, description="levels of the task network (each halves the patch)")
    task_blocks: int = Field(3, ge=0, description="ResNet blocks per task-network level")
    lr_task: float = Field(1e-4, gt=0, description="Adam learning rate of the task network")


def grid_layout(g: int, height: int, width: int) -> tuple[Tensor, Tensor]:
    """Cells of a g-row grid: keypoints (K, 3) = (cx, cy, side) and boxes (K, 4), row-major, K = g * cols."""
    cols = max(1, round(g * width / height))
    ch, cw = height / g, width / cols
    if abs(ch - cw) > 1e-6 * max(ch, cw):
        raise ValueError(f"method.grid: {g} rows x {cols} columns of a {height}x{width} image give "
                         f"{ch:.3g}x{cw:.3g} px cells; cells must be square (choose g so that they are)")
    iy, ix = torch.meshgrid(torch.arange(g, dtype=torch.float32), torch.arange(cols, dtype=torch.float32),
                            indexing="ij")                                                   # (g, cols) each
    x0, y0 = (ix * cw).flatten(), (iy * ch).flatten()                                        # (K,)
    kp = torch.stack([x0 + cw / 2, y0 + ch / 2, torch.full_like(x0, ch)], -1)                # (K, 3)
    boxes = torch.stack([x0, y0, x0 + cw, y0 + ch], -1)                                      # (K, 4)
    return kp, boxes


def rank_mask(scores: Tensor, counts: Tensor) -> Tensor:
    """(B, K) scores, (B,) counts -> (B, K) bool: True for each image's `count` highest-scoring entries."""
    rank = scores.argsort(dim=1, descending=True).argsort(dim=1)                             # (B, K) 0 = best
    return rank < counts[:, None]


class Grid(Method):
    name = "grid"
    Config = GridConfig
    tasks = ("recon", "classify")
    cuda_graph = True

    @classmethod
    def default_config(cls, scale: str) -> GridConfig:
        t = network_preset(scale).task
        return GridConfig(patch_res=t.patch_res, task_width=t.task_width, task_levels=t.task_levels,
                          task_blocks=t.task_blocks, lr_task=t.lr_task)

    @classmethod
    def search_space(cls) -> SearchSpace:
        return {"lr_task": LogUniform(1e-4, 3e-3)}

    def __init__(self, cfg: GridConfig | dict, spec: DataSpec, task: Task, device="cpu"):
        super().__init__(cfg, spec, task, device)
        c = self.cfg
        kp, boxes = grid_layout(c.g, spec.height, spec.width)
        self.cell_kp, self.cell_boxes = kp.to(self.device), boxes.to(self.device)            # (K, 3), (K, 4)
        self.head = TaskHead(task, spec.channels, c.patch_res, c.task_width, c.task_levels, c.task_blocks,
                             spec.n_classes, max_size=float(kp[0, 2])).to(self.device)      # every cell's side
        self.opt_task = adam(self.head.parameters(), c.lr_task, self.device)

    def forward(self, batch: Batch) -> tuple[TaskOutput, Tensor, Tensor]:
        """-> task output, cell patches (B, K, C, p, p), scores (B, K)."""
        B = len(batch)
        kp = self.cell_kp.expand(B, -1, -1)                                                  # (B, K, 3)
        patches = sample_patches(batch.images, kp, self.cfg.patch_res)                       # (B, K, C, p, p)
        ink = patches.flatten(2).mean(2)                                                     # (B, K)
        if self.task == "classify":
            out = self.head(patches, kp, batch, valid=rank_mask(ink, batch.counts))
            return out, patches, ink
        out = self.head(patches, kp, batch)
        return out, patches, out.patches_out.detach().flatten(2).mean(2)                     # (B, K) decoded ink

    def train_step(self, batch: Batch) -> dict[str, Tensor]:
        out, _, _ = self.forward(batch)
        loss = out.loss.mean()
        self.opt_task.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_task.step()
        return {"task": loss.detach()}

    @torch.no_grad()
    def predict(self, images: Tensor, counts: Tensor | None = None) -> Prediction:
        B = images.shape[0]
        K = self.cell_kp.shape[0]
        counts = counts if counts is not None else torch.full((B,), K, device=images.device)
        dummy = Batch(images, torch.full((B, 1), -1, dtype=torch.long, device=images.device),
                      images.new_zeros(B, 1, 4), counts)
        out, patches, scores = self.forward(dummy)
        return Prediction(boxes=self.cell_boxes.expand(B, -1, -1).clone(), scores=scores, recon=out.recon,
                          class_probs=out.class_probs,
                          patches=out.patches_out if out.patches_out is not None else patches,
                          extras={"keypoints": self.cell_kp.expand(B, -1, -1).clone()})
