"""The data types every method, metric and sweep shares.

Shapes: B images, C channels, H x W pixels, L ground-truth instances (padded), K detections.
Boxes are pixels (x0, y0, x1, y1) with x to the right and y down; a pixel's centre is at integer + 0.5.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Literal

import torch
from torch import Tensor

Task = Literal["recon", "classify"]


@dataclass(frozen=True)
class DataSpec:
    """What a method needs to know about its data to build its networks."""

    channels: int          # C
    height: int            # H
    width: int             # W
    n_classes: int = 10
    max_instances: int = 9  # the largest L in the data


@dataclass
class Batch:
    images: Tensor   # (B, C, H, W) float32 in [0, 1]
    labels: Tensor   # (B, L) int64 class per instance, -1 = padding
    boxes: Tensor    # (B, L, 4) float32 pixels (x0, y0, x1, y1); padding rows are 0
    counts: Tensor   # (B,) int64 number of real instances

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(*(getattr(self, f.name).to(device, non_blocking=True) for f in fields(self)))

    def __len__(self) -> int:
        return self.images.shape[0]


@dataclass
class Prediction:
    """What every method predicts. `None` where a method has no such output."""

    boxes: Tensor                      # (B, K, 4) pixels (x0, y0, x1, y1)
    scores: Tensor                     # (B, K) detection confidence, higher = surer
    recon: Tensor | None = None        # (B, C, H, W) reconstruction in [0, 1]-ish
    class_probs: Tensor | None = None  # (B, K, n_classes), rows sum to 1
    heatmap: Tensor | None = None      # (B, H, W) for figures
    patches: Tensor | None = None      # (B, K, C, p, p) per-patch task-network outputs, for figures
    extras: dict[str, Tensor] = field(default_factory=dict)

    def check(self, batch_size: int, spec: DataSpec, task: Task | None = None) -> "Prediction":
        """Raise AssertionError if any field breaks the documented shapes, or (given the `task`) if the field the
        task is scored on is missing: `recon` for recon, `class_probs` for classify."""
        B = batch_size
        needs = {"recon": "recon", "classify": "class_probs", None: None}[task]
        assert needs is None or getattr(self, needs) is not None, f"task {task!r} is scored on `{needs}`: it is None"
        assert self.boxes.ndim == 3 and self.boxes.shape[0] == B and self.boxes.shape[2] == 4, \
            f"boxes: shape {tuple(self.boxes.shape)}, expected ({B}, K, 4)"
        K = self.boxes.shape[1]
        assert self.scores.shape == (B, K), f"scores: shape {tuple(self.scores.shape)}, expected {(B, K)}"
        if self.recon is not None:
            want = (B, spec.channels, spec.height, spec.width)
            assert self.recon.shape == want, f"recon: shape {tuple(self.recon.shape)}, expected {want}"
        if self.class_probs is not None:
            want = (B, K, spec.n_classes)
            assert self.class_probs.shape == want, f"class_probs: shape {tuple(self.class_probs.shape)}, expected {want}"
        if self.heatmap is not None:
            want = (B, spec.height, spec.width)
            assert self.heatmap.shape == want, f"heatmap: shape {tuple(self.heatmap.shape)}, expected {want}"
        if self.patches is not None:
            assert self.patches.ndim == 5 and self.patches.shape[:2] == (B, K), \
                f"patches: shape {tuple(self.patches.shape)}, expected ({B}, {K}, C, p, p)"
        return self

    def detach_cpu(self) -> "Prediction":
        def d(t):
            return None if t is None else t.detach().cpu()
        return Prediction(d(self.boxes), d(self.scores), d(self.recon), d(self.class_probs), d(self.heatmap),
                          d(self.patches), {k: d(v) for k, v in self.extras.items()})
