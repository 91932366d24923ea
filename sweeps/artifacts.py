"""A trial's figure inputs beside the sweep, where the report reads them: <sweep>/trials/<trial>/.

  predictions.npz        the first N_EXAMPLES test images with the final predictions on them (analysis.figures
                         example_figure / methods_figure: images, boxes, scores, gt_counts, and recon, class_probs,
                         patches, heatmap where the method has them)
  heatmaps_over_time.npz the heatmap of the first test image over training (paper Figure 7 c): steps (T,),
                         heatmaps (T, H, W), image (C, H, W); a snapshot at every report (each evaluation and the
                         end: 10 at the quick preset), at most MAX_SNAPSHOTS evenly spaced ones, the first and the
                         last always; only for methods that output a heatmap

MLflow holds the same predictions as a run artifact; these copies keep the report independent of a tracking
server. Written atomically through pyarrow's filesystems (local paths and s3:// alike). A trial resumed from a
checkpoint starts its heatmap history again at the resumed step.
"""
from __future__ import annotations

import io

import numpy as np
import torch

from sweeps.results import write_atomic
from sweeps.store import join

__all__ = ["N_EXAMPLES", "MAX_SNAPSHOTS", "HeatmapHistory", "prediction_arrays", "write_npz"]

N_EXAMPLES = 8
MAX_SNAPSHOTS = 12


def write_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    write_atomic(path, buf.getvalue())


def prediction_arrays(pred, data, n: int = N_EXAMPLES) -> dict[str, np.ndarray]:
    """The first n images of `data` (a MultiInstanceData) and a Prediction on them, as figure-ready arrays."""
    n = min(n, pred.boxes.shape[0], len(data))
    out = {"images": data.float_images(slice(0, n)), "gt_counts": data.counts[:n], "gt_boxes": data.boxes[:n],
           "boxes": pred.boxes[:n].numpy(), "scores": pred.scores[:n].numpy()}
    for name in ("recon", "class_probs", "patches", "heatmap"):
        value = getattr(pred, name)
        if value is not None:
            out[name] = value[:n].float().numpy().astype(np.float16 if name != "class_probs" else np.float32)
    return out


class HeatmapHistory:
    """The first test image's heatmap at each report; `add` costs one single-image prediction. Reports are evenly
    spaced in steps, so `evenly_spaced` picks every k-th; all are kept until `write` (one (H, W) float16 map each)."""

    def __init__(self, data):
        self.batch = data.batch(slice(0, 1))
        self.image = data.float_images(slice(0, 1))[0]            # (C, H, W)
        self.steps: list[int] = []
        self.maps: list[np.ndarray] = []

    def add(self, method, step: int) -> None:
        b = self.batch.to(method.device)
        method.eval()                                               # called between training steps, as the
        with torch.no_grad():                                       # trainer's own evaluations are
            heat = method.predict(b.images, b.counts).heatmap
        method.train()
        if heat is not None:
            self.steps.append(step)
            self.maps.append(heat[0].float().cpu().numpy().astype(np.float16))   # (H, W)

    def evenly_spaced(self, cap: int = MAX_SNAPSHOTS) -> np.ndarray:
        """Indices of at most `cap` snapshots evenly spaced over the history, the first and the last included."""
        return np.unique(np.linspace(0, len(self.maps) - 1, min(cap, len(self.maps))).round().astype(int))

    def write(self, trial_dir: str) -> None:
        if self.maps:
            keep = self.evenly_spaced()
            write_npz(join(trial_dir, "heatmaps_over_time.npz"),
                      {"steps": np.asarray(self.steps)[keep], "heatmaps": np.stack(self.maps)[keep],
                       "image": self.image})
