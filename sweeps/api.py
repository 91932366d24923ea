"""mist-bench from Python, for notebooks: train one method, score predictions, read a sweep's results, build its
tables and report. docs/api.md shows each call.

    from sweeps import api
    api.method_params("mist")                                   # its fields: type, bounds, value per scale, meaning
    run = api.train("mist", "mnist_hard", scale="smoke")       # metrics, history, predictions on the test images
    api.evaluate(run.predictions, run.test)                     # the shared evaluator: the same numbers as run.metrics
    rows = api.load_results("runs/quick")                       # a sweep folder's tidy rows (pandas)
    api.summary(rows); api.tables(rows)["1"].wide; api.report("runs/quick")

Each call wraps the code the `mist-bench` command runs (mist_core.train, mist_core.metrics, sweeps.results,
analysis.tables, analysis.report), with the same checks and errors; nothing here trains or scores differently.
It lives in sweeps, beside the command line, because it reaches every layer: mist_core imports no upper one.
"""
from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import pandas as pd

from mist_core.data.container import MultiInstanceData
from mist_core.types import Prediction

__all__ = ["methods", "datasets", "method_params", "dataset_params", "train_params", "train", "TrainedRun",
           "evaluate", "load_results", "summary", "tables", "Table", "report"]

Rows = pd.DataFrame | str | os.PathLike


def methods() -> list[str]:
    """The registered method names (`mist-bench methods`); a 'module:Class' path works wherever a name does."""
    from mist_core.registry import method_names

    return method_names()


def datasets() -> list[str]:
    """The registered dataset names (`mist-bench datasets`)."""
    from mist_core.data import DATASETS

    return sorted(DATASETS)


def _fields(fields) -> pd.DataFrame:
    """One row per field: field, type, bounds, smoke, quick, paper (its value at each scale), searched, description."""
    return pd.DataFrame([{"field": f.name, "type": f.type, "bounds": f.bounds, **f.defaults, "searched": f.search,
                          "description": f.description} for f in fields])


def method_params(method: str) -> pd.DataFrame:
    """Every field of `method`'s config (`mist-bench methods METHOD`): the keys of train(method_params=...), each with
    its type, bounds, value at each scale, the sweeper's search domain ("" if not searched) and what it is."""
    from mist_core.describe import method_fields

    return _fields(method_fields(method))


def dataset_params(dataset: str) -> pd.DataFrame:
    """Every field of `dataset`'s config (`mist-bench datasets DATASET`): the keys of train(dataset_params=...)."""
    from mist_core.describe import dataset_fields

    return _fields(dataset_fields(dataset))


def train_params() -> pd.DataFrame:
    """Every training field (`mist-bench train --help`): the keys of train(train_params=...)."""
    from mist_core.describe import train_fields

    return _fields(train_fields())


@dataclass(frozen=True)
class TrainedRun:
    """One finished training run (`train`)."""

    metrics: dict[str, float]       # the final test metrics (mist_core.metrics keys: rmse, det_rate, ap_iou50, ...)
    history: pd.DataFrame           # one row per report: step, seconds, core_seconds, train_* losses, test metrics
    predictions: Prediction         # on `test`, on the CPU: boxes (N, K, 4), scores (N, K), recon or class_probs
    test: MultiInstanceData         # the test images the final metrics were computed on, with their ground truth
    trainer: Any                    # the mist_core.train.Trainer: .method (the trained model), .resolved (its config)

    @property
    def params(self) -> dict[str, Any]:
        """Every resolved parameter of the run (method.*, dataset.*, train.*), as a sweep logs it."""
        return self.trainer.resolved.as_params()

    def predict(self, data: MultiInstanceData, n: int | None = None) -> Prediction:
        """The trained method's predictions on the first `n` images of `data` (all by default), on the CPU."""
        from mist_core.train import predict_split

        return predict_split(self.trainer.method, data, n, max(self.trainer.tcfg.batch_size, 64))


def train(method: str, dataset: str, *, task: Literal["recon", "classify"] = "recon",
          scale: Literal["smoke", "quick", "paper"] = "quick", seed: int = 0,
          method_params: dict[str, Any] | None = None, dataset_params: dict[str, Any] | None = None,
          train_params: dict[str, Any] | None = None, progress: bool = True) -> TrainedRun:
    """Train `method` on `dataset` for `task` at `scale` (its presets' data, networks and step budget) and evaluate
    it on the test split: `mist-bench train` as a function. The *_params override the presets by field name, like
    the command's -m, -d and -t (an unknown or mistyped field raises mist_core.config.ConfigError naming it); the
    checks every entry point shares (sweeps.preflight) run before any data is made. `progress` (default True): a
    line while the data is prepared, then tqdm's bar (a widget in Jupyter, text on stderr elsewhere) over the steps
    with the latest evaluation's metrics; False: silent."""
    from mist_core._runtime import busy_note, default_threads
    from mist_core.config import parse_config
    from mist_core.train import RunConfig, Trainer, resolve
    from sweeps.preflight import check_run

    cfg = parse_config(RunConfig, dict(method=method, dataset=dataset, task=task, scale=scale, seed=seed,
                                       method_params=method_params or {}, dataset_params=dataset_params or {},
                                       train=train_params or {}), where="run")
    resolved = resolve(cfg)
    check_run(resolved)
    busy = busy_note(resolved.train_cfg.threads or default_threads(),
                     "pass train_params={'threads': 1} (or set OMP_NUM_THREADS=1)")
    if busy:
        logging.getLogger(__name__).warning("train: %s", busy)
    if progress:  # generating quick-scale data takes a while before the first step
        print(f"train: {resolved.method_cls.name} on {dataset} ({scale}): preparing data...", file=sys.stderr,
              flush=True)
    trainer = Trainer(resolved)
    if not progress:
        result = trainer.run(progress=False)
    else:
        with _Bar(trainer, f"{resolved.method_cls.name} on {dataset}") as bar:
            result = trainer.run(progress=False, on_step=bar.update_to,
                                 callback=lambda report, _: bar.show(report))
            bar.show(result.metrics)
    predictions = result.example   # the final evaluation's: the first len(predictions) test images
    return TrainedRun(metrics={k: v for k, v in result.metrics.items() if k not in ("step", "final")},
                      history=pd.DataFrame(result.history).astype({"step": int}), predictions=predictions,
                      test=trainer.splits.test.subset(predictions.boxes.shape[0]), trainer=trainer)


class _Bar:
    """tqdm.auto's bar over a run's steps, its postfix the latest evaluation's main metrics."""

    SHOWN = ("rmse", "det_rate", "both")

    def __init__(self, trainer: Any, desc: str):
        from tqdm.auto import tqdm

        self.tqdm = tqdm(total=trainer.budget_steps(), desc=desc, unit="step")

    def __enter__(self) -> "_Bar":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.tqdm.close()

    def update_to(self, step: int) -> None:
        self.tqdm.update(step - self.tqdm.n)

    def show(self, report: dict[str, float]) -> None:
        self.tqdm.set_postfix({k: f"{report[k]:.4g}" for k in self.SHOWN if k in report}, refresh=True)


def evaluate(predictions: Prediction | Sequence[Prediction], data: MultiInstanceData) -> dict[str, float]:
    """Score predictions for every image of `data`, in order, with the one evaluator every method is scored by
    (mist_core.metrics.evaluate_predictions; docs/protocol.md says what each metric is)."""
    from mist_core.metrics import evaluate_predictions

    return evaluate_predictions(predictions, data)


def load_results(path: str | os.PathLike) -> pd.DataFrame:
    """The tidy result rows of a sweep folder, its results.parquet, or every sweep under a storage folder (local or
    s3://...): one row per (trial, report, metric); columns in sweeps.results.COLUMNS. No server needed."""
    from sweeps.results import load_results as load

    return load(path)


def _rows(rows: Rows) -> pd.DataFrame:
    return rows if isinstance(rows, pd.DataFrame) else load_results(rows)


def summary(rows: Rows) -> pd.DataFrame:
    """One row per (task, dataset, method): the final test metrics' mean and std over seeds (rmse, det_rate, ...,
    each with a *_std column), trials, steps, core-seconds per trial, and whether it is a reference line; the
    report's "Every method" table as numbers."""
    from analysis.tables import method_summary

    return method_summary(_rows(rows))


@dataclass(frozen=True)
class Table:
    """One of the paper's Tables 1-4 as the rows fill it."""

    cells: pd.DataFrame   # tidy: one row per (row, column) cell: mean, std, n over trials, the paper's number, diff
    wide: pd.DataFrame    # the paper's layout, formatted: rows x (method, ours | paper | Δ)

    def markdown(self) -> str:
        from analysis.tables import to_markdown

        return to_markdown(self.wide)

    def latex(self) -> str:
        from analysis.tables import to_latex

        return to_latex(self.wide)


def tables(rows: Rows) -> dict[str, Table]:
    """The paper's Tables 1-4 ("1" .. "4") from the rows; a cell no trial filled reads "— (n=0)"."""
    from analysis.tables import all_tables

    return {tid: Table(cells, wide) for tid, (cells, wide) in all_tables(_rows(rows)).items()}


def report(rows: Rows, out_dir: str | os.PathLike | None = None, title: str = "mist-bench report") -> Path:
    """Build the HTML report (and tables.md, tables.tex, the CSVs beside it); return report.html's path. `rows`: a
    sweep folder (its figures are read from it; out_dir defaults to its report/ folder, as `mist-bench report`), a
    results.parquet, or a DataFrame of rows (then out_dir is required, and there are no example figures)."""
    if isinstance(rows, pd.DataFrame):
        if out_dir is None:
            raise ValueError("report: give out_dir for rows passed as a DataFrame")
        from analysis.report import build_report

        return build_report(rows, out_dir, None, title)
    from analysis.report import report_sweep

    return report_sweep(rows, out_dir, title)
