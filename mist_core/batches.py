"""A training split held on the method's device once, its batches drawn there by index.

Building each batch on the host and copying it over costs a GPU step a pageable host-to-device copy, which waits for
the stream (a host sync per step); here the images stay uint8 on the device (4x smaller than float) and a batch is
an index into them. On the CPU the arrays are shared with the split, not copied. The batches are those of
MultiInstanceData.batch: the same float values (uint8 / 255), labels, boxes and counts.
"""
from __future__ import annotations

import numpy as np
import torch

from mist_core.data.container import MultiInstanceData
from mist_core.types import Batch

__all__ = ["DeviceSplit"]


class DeviceSplit:
    def __init__(self, split: MultiInstanceData, device: str | torch.device):
        self.device = torch.device(device)
        put = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(self.device)           # noqa: E731
        self.images = put(split.images)                                   # (N, C, H, W) uint8 or float32
        self.labels = put(split.labels.astype(np.int64))                  # (N, L)
        self.boxes = put(split.boxes.astype(np.float32))                  # (N, L, 4)
        self.counts = put(split.counts.astype(np.int64))                  # (N,)
        self.pinned = self.device.type == "cuda"

    def __len__(self) -> int:
        return self.counts.shape[0]

    def batch(self, idx: np.ndarray | torch.Tensor) -> Batch:
        """The images at `idx` (host indices, or a tensor on the device) as a Batch on the device."""
        if not isinstance(idx, torch.Tensor):
            idx = torch.from_numpy(np.asarray(idx, dtype=np.int64))
            # a pinned host buffer copies asynchronously; a pageable one would wait for the stream first
            idx = (idx.pin_memory() if self.pinned else idx).to(self.device, non_blocking=True)
        x = self.images[idx]                                              # (B, C, H, W)
        x = x.float().div_(255) if x.dtype == torch.uint8 else x
        return Batch(x, self.labels[idx], self.boxes[idx], self.counts[idx])
