"""A SYNTHETIC sweep folder for the report screenshots in this folder: made-up numbers shaped like the quick sweep
(recon on MNIST hard, 5 methods + the 2 reference lines, 2 seeds, an evaluation every 100 of 1,000 steps) and a
Table 2 run; real MNIST-hard test images with predictions faked from their ground truth. Layout only, no results.

    .venv/bin/python docs/screenshots/demo_sweep.py /tmp/demo
    .venv/bin/python -m analysis.report /tmp/demo --title "mist-bench report: SYNTHETIC demo rows (layout only)"
    .venv/bin/python -m analysis.screenshot /tmp/demo/report/report.html /tmp/shots --at 2300
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from mist_core.data.registry import dataset_config, load_splits

# method: final RMSE, detection, AP@.5, core-seconds per step, steps (the reference methods: one pass, no learning)
RECON = {"mist": (0.200, 0.778, 0.70, 0.6, 1000), "grid": (0.211, 0.193, 0.09, 0.1, 1000),
         "channelwise": (0.220, 0.334, 0.20, 0.5, 1000), "air": (0.316, 0.297, 0.15, 0.35, 1000),
         "zhang": (0.235, 0.41, 0.30, 1.1, 1000), "trivial": (0.300, 0.0, 0.0, 0.002, 188),
         "kmeans": (0.120, 0.872, 0.80, 0.01, 188)}
# method: final detection, classification, both, core-seconds per step
CLASSIFY = {"mist": (0.93, 0.95, 0.90, 0.7), "channelwise": (0.27, 0.74, 0.22, 0.5),
            "supervised": (0.98, 0.97, 0.96, 0.4)}


def rows(rng: np.random.Generator) -> pd.DataFrame:
    out = []

    def add(trial, method, task, table, seed, step, metric, value, core):
        out.append(dict(sweep="demo", trial=trial, phase="seeds", method=method, dataset="mnist_hard", table=table,
                        task=task, scale="quick", seed=seed, step=step, final=step in (188, 1000), metric=metric,
                        value=float(value), core_seconds=core, wall_seconds=core * 1.1, params_json="{}"))

    for m, (rmse, det, ap, cps, steps) in RECON.items():
        for s in (0, 1):
            for step in ([100, steps] if steps < 1000 else range(100, 1001, 100)):
                p = 1.0 if steps < 1000 else 1 - np.exp(-step / 250)  # progress towards the final value
                noise = 1 + 0.03 * rng.standard_normal(3)
                core = cps * step * (1 + 0.02 * s)
                add(f"{m}_recon_s{s}", m, "recon", None, s, step, "rmse", (0.33 - (0.33 - rmse) * p) * noise[0] ** 0.3,
                    core)
                add(f"{m}_recon_s{s}", m, "recon", None, s, step, "det_rate", det * p * noise[1], core)
                add(f"{m}_recon_s{s}", m, "recon", None, s, step, "ap_iou50", ap * p * noise[2], core)
                if steps == 1000 and step < steps:
                    add(f"{m}_recon_s{s}", m, "recon", None, s, step, "train_recon", 0.1 * (1.2 - p), core)
    for m, (det, cls, both, cps) in CLASSIFY.items():
        for s in (0, 1, 2):
            for step in range(100, 1001, 100):
                p = 1 - np.exp(-step / 300)
                for metric, v in (("det_rate", det), ("cls_acc", cls), ("both", both)):
                    add(f"{m}_cls_s{s}", m, "classify", "2", s, step, metric,
                        min(v * p * (1 + 0.03 * rng.standard_normal()), 1.0), cps * step)
                if step < 1000:
                    add(f"{m}_cls_s{s}", m, "classify", "2", s, step, "train_task", 2.3 * (1.05 - p), cps * step)
    return pd.DataFrame(out)


def blobs(boxes: np.ndarray, count: int, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """(H, W): a Gaussian of width sigma at the centre of each of the first `count` boxes."""
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    c = (boxes[:count, :2] + boxes[:count, 2:]) / 2                                     # (count, 2) x, y
    d2 = (xx[None] - c[:, 0, None, None]) ** 2 + (yy[None] - c[:, 1, None, None]) ** 2  # (count, H, W)
    return np.exp(-d2 / (2 * sigma ** 2)).sum(axis=0)


def figure_inputs(sweep: Path, rng: np.random.Generator, n: int = 4) -> None:
    test = load_splits(dataset_config("mnist_hard")).test
    images, gt, counts = test.float_images(slice(0, n)), test.boxes[:n], test.counts[:n]  # (n,1,H,W), (n,L,4), (n,)
    shape, k = images.shape[-2:], int(counts.max())
    mean = np.full_like(images, images.mean())
    for method, jitter, keep in (("mist", 1.5, 0.9), ("grid", None, 0.5)):
        d = sweep / "trials" / f"{method}_recon_s0"
        d.mkdir(parents=True, exist_ok=True)
        if jitter is None:  # a 3 x 3 grid of cells
            g = np.linspace(0, shape[1], 4)
            boxes = np.tile(np.array([[g[i], g[j], g[i + 1], g[j + 1]] for j in range(3) for i in range(3)],
                                     np.float32), (n, 1, 1))
        else:
            boxes = gt[:, :k] + jitter * rng.standard_normal((n, k, 4)).astype(np.float32)
        arrays = dict(images=images, boxes=boxes, scores=np.sort(rng.random(boxes.shape[:2]), axis=1)[:, ::-1].copy(),
                      recon=(keep * images + (1 - keep) * mean).astype(np.float32), gt_counts=counts, gt_boxes=gt)
        if method == "mist":
            arrays["heatmap"] = np.stack([blobs(gt[i], counts[i], shape, 3.0) for i in range(n)]).astype(np.float32)
            steps = np.arange(100, 1001, 100)
            maps = [blobs(gt[0], counts[0], shape, 3 + 9 * np.exp(-s / 300)) + rng.random(shape) * np.exp(-s / 300)
                    for s in steps]
            np.savez(d / "heatmaps_over_time.npz", steps=steps, heatmaps=np.stack(maps).astype(np.float16),
                     image=images[0])
        np.savez(d / "predictions.npz", **arrays)


if __name__ == "__main__":
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows(rng).to_parquet(out / "results.parquet")
    figure_inputs(out, rng)
    print(out)
