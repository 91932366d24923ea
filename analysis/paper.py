"""The paper's Tables 1-4 as data, and how each of their cells maps onto tidy result rows.

A cell is (table, row, column) -> (task, dataset, metric, method). The paper's numbers are stored exactly as
printed, in the paper's units: RMSE for Table 1, percent for Tables 2-4 (`TableSpec.scale` = 100 turns our
fractions into those units). `None` is the paper's own "-" (no number reported).

    from analysis.paper import TABLES
    TABLES["1"].paper[("MNIST hard", "Grid")]   # 0.062
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

__all__ = ["Row", "Column", "TableSpec", "TABLES", "METHOD_LABELS", "METHOD_NOTES", "DATASET_LABELS", "METRIC_LABELS",
           "LOWER_IS_BETTER", "REFERENCE_METHODS", "ADDED_METHODS", "OWN_METHODS", "added_mark", "method_label",
           "dataset_label", "metric_label", "lower_is_better", "headline_metric"]

METHOD_LABELS: dict[str, str] = {"mist": "MIST", "grid": "Grid", "channelwise": "Ch.-wise", "air": "Esl16",
                                 "zhang": "Zha18", "supervised": "Supervised", "trivial": "Trivial",
                                 "kmeans": "k-means floor", "ptopk": "Perturbed top-K", "mist_reach": "MIST-reach"}
# What each method is, one line each, for the report's reader (who may not know the baselines by their short names).
METHOD_NOTES: dict[str, str] = {
    "mist": "MIST: heatmap network, top-K keypoints (E_K), patch task network; trained by lifting (Algorithm 1).",
    "ptopk": "Perturbed top-K: MIST's heatmap and task networks, presets and losses; only the training of the "
             "selection differs, E_K relaxed by the perturbed top-K of Cordonnier et al. 2021 instead of lifted. "
             "Its difference from MIST is the effect of lifting against relaxation.",
    "mist_reach": "MIST-reach (ours, not the paper's): MIST whose keypoint step, after the paper's local x step, moves "
                  "each image's least useful patch to the strongest evidence no patch explains (the residual's ink in "
                  "recon, the uncovered ink in classify) when the task loss falls, then centres every patch on the ink "
                  "it covers; the paper's x step is local and never reaches a digit no patch touches.",
    "grid": "Grid: MIST's task network on a fixed grid of patches, nothing localised.",
    "channelwise": "Ch.-wise: one heatmap channel per instance, a soft-argmax keypoint each, MIST's task network.",
    "air": "Esl16: Attend-Infer-Repeat, a sequential variational model (one object per step).",
    "zhang": "Zha18: unsupervised landmarks by an image-reconstruction bottleneck.",
    "supervised": "Supervised: MIST's networks trained on the ground-truth boxes (an upper line).",
    "trivial": "Trivial (reference): the mean training image, no boxes.",
    "kmeans": "k-means floor (reference): k-means of ink pixels per image, no learning.",
}
# Not competitors: lines every learned method is read against (the mean image; k-means of ink, no learning).
REFERENCE_METHODS: tuple[str, ...] = ("trivial", "kmeans")
# Competitors this benchmark adds: not in the paper's tables; shown after the paper's methods, marked as added,
# and this project's own variants of MIST (OWN_METHODS) marked as ours.
ADDED_METHODS: tuple[str, ...] = ("mist_reach", "ptopk")
OWN_METHODS: tuple[str, ...] = ("mist_reach",)
ADDED = " (added: not in the paper)"
OURS = " (ours: not in the paper)"


def added_mark(method: str) -> str:
    """The mark after an added method's label: ours (a variant of this project) or added (from the literature)."""
    return OURS if method in OWN_METHODS else ADDED
DATASET_LABELS: dict[str, str] = {"mnist_easy": "MNIST easy", "mnist_hard": "MNIST hard", "gabor": "Gabor",
                                  "mnist_hard_k9": "MNIST hard, K={9}", "mnist_hard_k6_9": "MNIST hard, K={6..9}",
                                  "mnist_hard_k3_9": "MNIST hard, K={3..9}", "svhn": "SVHN",
                                  "mnist_hard_k1_9": "MNIST hard, 1-9 digits",
                                  "mnist_uneven": "MNIST uneven"}
METRIC_LABELS: dict[str, str] = {"rmse": "RMSE", "det_rate": "detection rate (IoU 50%)",
                                 "det_rate_all": "detection rate, all K (IoU 50%)", "cls_acc": "classification accuracy",
                                 "both": "detected-and-classified rate", "mean_iou_matched": "mean matched IoU",
                                 **{f"ap_iou{t:02d}": f"AP@IoU .{t:02d}" for t in (0, 50, 60, 70, 80, 90)}}
LOWER_IS_BETTER: frozenset[str] = frozenset({"rmse"})  # plus every train_* loss


def method_label(method: str) -> str:
    return METHOD_LABELS.get(method, method)


def dataset_label(dataset: str) -> str:
    return DATASET_LABELS.get(dataset, dataset)


def metric_label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric)


def lower_is_better(metric: str) -> bool:
    return metric in LOWER_IS_BETTER or metric.startswith("train_")


@dataclass(frozen=True)
class Row:
    label: str    # as printed in the paper
    dataset: str  # dataset name in the tidy rows
    metric: str   # metric name in the tidy rows


@dataclass(frozen=True)
class Column:
    label: str
    method: str


@dataclass(frozen=True)
class TableSpec:
    id: str                 # the tidy rows' `table` value
    title: str
    caption: str            # the paper's caption
    task: str               # "recon" or "classify"
    rows: tuple[Row, ...]
    columns: tuple[Column, ...]
    paper: Mapping[tuple[str, str], float | None]  # (row label, column label) -> number as printed
    scale: float = 1.0      # ours (a fraction) * scale = the paper's unit
    unit: str = ""          # "%" when scale is 100
    decimals: int = 3
    headline: str = "rmse"  # the metric plotted against cost
    extra: Mapping[str, str] = field(default_factory=dict)

    @property
    def config(self) -> str:
        """The sweep config that runs this table (named in the report when the table has no results)."""
        return f"sweeps/configs/table{self.id}.yaml"


def _grid(rows: tuple[Row, ...], cols: tuple[Column, ...], values: list[list[float | None]]
          ) -> dict[tuple[str, str], float | None]:
    assert len(values) == len(rows) and all(len(v) == len(cols) for v in values)
    return {(r.label, c.label): v for r, vs in zip(rows, values) for c, v in zip(cols, vs)}


_T1_ROWS = (Row("MNIST easy", "mnist_easy", "rmse"), Row("MNIST hard", "mnist_hard", "rmse"),
            Row("Gabor", "gabor", "rmse"))
_T1_COLS = (Column("MIST", "mist"), Column("Grid", "grid"), Column("Ch.-wise", "channelwise"),
            Column("Esl16", "air"), Column("Zha18", "zhang"))
_T2_ROWS = (Row("IoU 50%", "mnist_hard", "det_rate"), Row("Classif.", "mnist_hard", "cls_acc"),
            Row("Both", "mnist_hard", "both"))
_T2_COLS = (Column("MIST", "mist"), Column("Ch.-wise", "channelwise"), Column("Supervised", "supervised"))
_T3_ROWS = (Row("{9}", "mnist_hard_k9", "ap_iou50"), Row("{6, 7, 8, 9}", "mnist_hard_k6_9", "ap_iou50"),
            Row("{3, 4, 5, 6, 7, 8, 9}", "mnist_hard_k3_9", "ap_iou50"))
_T3_COLS = (Column("MIST (AP@IoU .50)", "mist"),)
_T4_ROWS = tuple(Row(f"AP@IoU .{t:02d}", "svhn", f"ap_iou{t:02d}") for t in (0, 50, 60, 70, 80, 90))
_T4_COLS = (Column("MIST", "mist"), Column("Supervised", "supervised"))

TABLES: dict[str, TableSpec] = {
    "1": TableSpec("1", "Table 1: reconstruction error (RMSE)",
                   "Reconstruction error (root mean square error). Note that Grid does not learn any notion of digits.",
                   "recon", _T1_ROWS, _T1_COLS,
                   _grid(_T1_ROWS, _T1_COLS, [[0.038, 0.039, 0.042, 0.100, 0.169],
                                              [0.053, 0.062, 0.128, 0.154, 0.191],
                                              [0.095, None, None, None, None]]),
                   scale=1.0, unit="", decimals=3, headline="rmse"),
    "2": TableSpec("2", "Table 2: detection and classification on MNIST hard (%)",
                   'Instance level detection and classification performance on "MNIST hard".',
                   "classify", _T2_ROWS, _T2_COLS,
                   _grid(_T2_ROWS, _T2_COLS, [[97.8, 25.4, 99.6], [98.8, 75.5, 98.7], [97.5, 24.8, 98.6]]),
                   scale=100.0, unit="%", decimals=1, headline="both"),
    "3": TableSpec("3", "Table 3: sensitivity to K during training (%)",
                   "Sensitivity experiment of K on the MNIST hard dataset (instances during training; "
                   "tested with ground-truth K).",
                   "classify", _T3_ROWS, _T3_COLS,
                   _grid(_T3_ROWS, _T3_COLS, [[92.2], [90.1], [90.8]]),
                   scale=100.0, unit="%", decimals=1, headline="ap_iou50"),
    "4": TableSpec("4", "Table 4: SVHN average precision (%)", "Quantitative SVHN results.",
                   "classify", _T4_ROWS, _T4_COLS,
                   _grid(_T4_ROWS, _T4_COLS, [[82.6, 65.6], [76.5, 62.8], [63.7, 59.8], [42.7, 51.9],
                                              [19.9, 34.6], [4.2, 11.0]]),
                   scale=100.0, unit="%", decimals=1, headline="ap_iou50"),
}


def headline_metric(dataset: str, task: str) -> str:
    """The metric to plot against cost for a (dataset, task): the first table showing it, else rmse / det_rate."""
    for spec in TABLES.values():
        if spec.task == task and any(r.dataset == dataset for r in spec.rows):
            return spec.headline
    return "rmse" if task == "recon" else "det_rate"
