"""What a trial leaves besides its metrics: one predictions file, the figure built from it, the heatmap over training.

  MLflow run   figures/step_NNNNNN.png  analysis.figures.example_figure (inputs with ground truth, detections with
                                        their scores, reconstructions, heatmap, patches) at up to MAX_FIGURES evenly
                                        spaced evaluations and at the end
               predictions/predictions.npz  the same bytes as below
  <sweep>/trials/<trial>/ (read by the report)
    predictions.npz        the first N_EXAMPLES test images with the final predictions on them, written once:
                           images, gt_counts, gt_boxes, boxes, scores, and recon, class_probs, patches, heatmap where
                           the method has them (the end figure is example_figure(**these arrays))
    heatmaps_over_time.npz the heatmap of the first test image over training (paper Figure 7 c): steps (T,),
                           heatmaps (T, H, W), image (C, H, W); a snapshot of the untrained model and one at every
                           report, at most MAX_SNAPSHOTS evenly spaced, the first and the last always; only for
                           methods that output a heatmap

The trial folder's copies keep the report independent of a tracking server; they are written atomically through
pyarrow's filesystems (local paths and s3:// alike). A trial resumed from a checkpoint starts its heatmap history
again at the resumed step.
"""
from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
import torch

from analysis.figures import evenly_spaced, example_figure
from sweeps.results import write_atomic
from sweeps.store import join

__all__ = ["N_EXAMPLES", "MAX_SNAPSHOTS", "MAX_FIGURES", "PREDICTIONS", "HeatmapHistory", "TrialOutputs",
           "prediction_arrays", "write_npz"]

N_EXAMPLES = 8
MAX_SNAPSHOTS = 12
MAX_FIGURES = 8   # interim evaluations with a figure on the trial's MLflow run (the end has one as well)
PREDICTIONS = "predictions.npz"


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def write_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
    write_atomic(path, _npz_bytes(arrays))


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


def _predict(method, data, n: int):
    """The method's Prediction on the first n images of `data`, between training steps. The torch RNG is restored
    after it, so a run's training draws the same numbers whether or not its figures were made."""
    from mist_core.train import predict_split

    devices = [torch.device(method.device).index or 0] if torch.device(method.device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        return predict_split(method, data, n, n)


class HeatmapHistory:
    """The first test image's heatmap at each report; `add` costs one single-image prediction. Reports are evenly
    spaced in steps, so `evenly_spaced` picks every k-th; all are kept until `write` (one (H, W) float16 map each)."""

    def __init__(self, data):
        self.data = data
        self.image = data.float_images(slice(0, 1))[0]            # (C, H, W)
        self.steps: list[int] = []
        self.maps: list[np.ndarray] = []

    def add(self, method, step: int) -> None:
        heat = _predict(method, self.data, 1).heatmap               # (1, H, W) or None
        if heat is not None:
            self.steps.append(step)
            self.maps.append(heat[0].float().numpy().astype(np.float16))   # (H, W)

    def evenly_spaced(self, cap: int = MAX_SNAPSHOTS) -> np.ndarray:
        """Indices of at most `cap` snapshots evenly spaced over the history, the first and the last included."""
        return evenly_spaced(len(self.maps), cap)

    def write(self, trial_dir: str) -> None:
        if self.maps:
            keep = self.evenly_spaced()
            write_npz(join(trial_dir, "heatmaps_over_time.npz"),
                      {"steps": np.asarray(self.steps)[keep], "heatmaps": np.stack(self.maps)[keep],
                       "image": self.image})


class TrialOutputs:
    """A trial's example figures on its MLflow run (`run`: a tracking.TrialRun) and its predictions file.

    The interim evaluations of a run of `budget` steps are at every `eval_every` steps before the end; up to
    MAX_FIGURES of them, evenly spaced, get a figure (`figure_steps`)."""

    def __init__(self, run, data, trial_dir: str | None, eval_every: int, budget: int):
        self.run, self.data, self.trial_dir = run, data, trial_dir
        evals = np.arange(eval_every, budget, eval_every)             # (E,) the interim evaluation steps
        self.figure_steps = set(evals[evenly_spaced(len(evals), MAX_FIGURES)].tolist())

    def evaluation(self, method, step: int, title: str) -> None:
        """At an interim evaluation: the figure of the method now on the first test images, if `step` has one."""
        if step in self.figure_steps:
            self._figure(prediction_arrays(_predict(method, self.data, N_EXAMPLES), self.data), step, title)

    def final(self, pred, step: int, title: str) -> None:
        """At the end: the predictions `pred` (on the first test images at least) as one npz, in the trial's folder
        and on the run, and the figure made from the same arrays."""
        arrays = prediction_arrays(pred, self.data)
        blob = _npz_bytes(arrays)
        if self.trial_dir is not None:
            write_atomic(join(self.trial_dir, PREDICTIONS), blob)
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / PREDICTIONS
            path.write_bytes(blob)
            self.run.log_file(path, "predictions")
        self._figure(arrays, step, title)

    def _figure(self, arrays: dict[str, np.ndarray], step: int, title: str) -> None:
        self.run.log_figure(example_figure(**arrays, title=title), f"figures/step_{step:06d}.png")
