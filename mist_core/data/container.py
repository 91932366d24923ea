"""The in-memory form of a multi-instance dataset split, its batches and its on-disk (npz) form."""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from mist_core.types import Batch, DataSpec

__all__ = ["MultiInstanceData", "Splits"]


@dataclass(frozen=True)
class MultiInstanceData:
    """One split. Ground truth (boxes, labels, counts, extras) is for metrics; methods see images (+labels when weak)."""

    images: np.ndarray  # (N, C, H, W) uint8 in [0, 255] or float32 in [0, 1]
    boxes: np.ndarray   # (N, L, 4) float32 pixels (x0, y0, x1, y1), padding rows 0
    labels: np.ndarray  # (N, L) int64, -1 = padding
    counts: np.ndarray  # (N,) int64
    extras: dict[str, np.ndarray] = field(default_factory=dict)  # generator-specific ground truth (Gabor impulses...)

    def __post_init__(self) -> None:
        N = self.images.shape[0]
        assert self.images.ndim == 4, f"images must be (N, C, H, W), got {self.images.shape}"
        assert self.images.dtype in (np.uint8, np.float32), self.images.dtype
        assert self.boxes.shape[:1] == (N,) and self.boxes.ndim == 3 and self.boxes.shape[2] == 4, self.boxes.shape
        assert self.labels.shape == self.boxes.shape[:2], (self.labels.shape, self.boxes.shape)
        assert self.counts.shape == (N,), self.counts.shape

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def spec(self) -> DataSpec:
        _, C, H, W = self.images.shape
        return DataSpec(channels=C, height=H, width=W, max_instances=int(self.labels.shape[1]))

    def float_images(self, idx: np.ndarray | slice = slice(None)) -> np.ndarray:
        x = self.images[idx]
        return x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x

    def batch(self, idx: np.ndarray | slice) -> Batch:
        return Batch(
            images=torch.from_numpy(np.ascontiguousarray(self.float_images(idx))),
            labels=torch.from_numpy(self.labels[idx].astype(np.int64)),
            boxes=torch.from_numpy(self.boxes[idx].astype(np.float32)),
            counts=torch.from_numpy(self.counts[idx].astype(np.int64)),
        )

    def batches(self, batch_size: int, rng: np.random.Generator | None = None, drop_last: bool = False) -> Iterator[Batch]:
        """One pass in a random (rng given) or fixed order."""
        order = rng.permutation(len(self)) if rng is not None else np.arange(len(self))
        stop = len(self) - (len(self) % batch_size if drop_last else 0)
        for i in range(0, stop, batch_size):
            yield self.batch(np.sort(order[i : i + batch_size]))

    def subset(self, n: int) -> "MultiInstanceData":
        return MultiInstanceData(self.images[:n], self.boxes[:n], self.labels[:n], self.counts[:n],
                                 {k: v[:n] for k, v in self.extras.items()})

    # --- npz form ---------------------------------------------------------------------------------
    def arrays(self, prefix: str = "") -> dict[str, np.ndarray]:
        out = {f"{prefix}images": self.images, f"{prefix}boxes": self.boxes, f"{prefix}labels": self.labels,
               f"{prefix}counts": self.counts}
        out.update({f"{prefix}extra__{k}": v for k, v in self.extras.items()})
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str = "") -> "MultiInstanceData":
        extras = {k[len(prefix) + 7 :]: v for k, v in arrays.items() if k.startswith(f"{prefix}extra__")}
        return cls(arrays[f"{prefix}images"], arrays[f"{prefix}boxes"], arrays[f"{prefix}labels"],
                   arrays[f"{prefix}counts"], extras)


@dataclass(frozen=True)
class Splits:
    train: MultiInstanceData
    test: MultiInstanceData

    def save(self, path: str | Path) -> None:
        """Write atomically: a reader sees the old file, the new file, or none, never half of one."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        umask = os.umask(0)
        os.umask(umask)
        try:
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a shared cache needs the usual mode
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **self.train.arrays("train__"), **self.test.arrays("test__"))
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | Path) -> "Splits":
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        return cls(MultiInstanceData.from_arrays(arrays, "train__"), MultiInstanceData.from_arrays(arrays, "test__"))
