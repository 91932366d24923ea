"""What a trial and a sweep leave for a researcher to read: one predictions npz and figures at several evaluations
(sweeps.artifacts), progress lines without NaN, the parent run's summary, params and report, the MLflow UI line.

The unit tests need no Ray; `finished_sweep` runs one real smoke sweep (trivial + mist, one seed, no search) on a
local Ray instance with tmp storage and a SQLite MLflow store.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest

from mist_core.data import dataset_config, load_splits
from mist_core.train import RunConfig, Trainer
from sweep_fixtures import DELETE, config_with, write_config
from sweeps import artifacts, tracking


@pytest.fixture(scope="module")
def splits():
    return load_splits(dataset_config("mnist_hard", {"n_train": 16, "n_test": 8}), use_cache=False)


def _trainer(splits, method: str, **train) -> Trainer:
    cfg = RunConfig(method=method, dataset="mnist_hard", scale="smoke", dataset_params={"n_train": 16, "n_test": 8},
                    train={"batch_size": 4, "eval_images": 4, "threads": 1, **train})
    return Trainer(cfg, splits=splits)


class _Run:
    """A TrialRun's artifact calls, recorded (the file's bytes, the figure's panel titles)."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.figures: dict[str, list[str]] = {}

    def log_file(self, path, artifact_path=None):
        self.files[f"{artifact_path}/{Path(path).name}"] = Path(path).read_bytes()

    def log_figure(self, fig, artifact_file):
        self.figures[artifact_file] = [ax.get_title() for ax in fig.axes]


# --- no Ray -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("eval_every,budget,steps", [
    (100, 1000, {100, 200, 300, 400, 600, 700, 800, 900}),  # 9 interim evaluations, 8 evenly spaced (by hand)
    (3, 6, {3}),                                            # smoke: step 6 is the end, not an interim evaluation
    (200, 1000, {200, 400, 600, 800}),
    (2000, 1000, set()),
])
def test_figure_steps_are_evenly_spaced_interim_evaluations(eval_every, budget, steps):
    assert artifacts.TrialOutputs(None, None, None, eval_every, budget).figure_steps == steps


def test_one_predictions_file_and_a_figure_per_chosen_evaluation(splits, tmp_path):
    """A figure at a chosen evaluation only; at the end one npz, the same bytes in the trial folder and on the run,
    and the end figure drawn from those arrays (inputs, detections, reconstruction, heatmap)."""
    t = _trainer(splits, "mist", max_steps=6, eval_every=3)
    run = _Run()
    out = artifacts.TrialOutputs(run, t.splits.test, str(tmp_path / "trial"), 3, t.budget_steps())
    out.evaluation(t.method, 2, "no figure here")
    assert run.figures == {}
    out.evaluation(t.method, 3, "step 3")
    res = t.run(progress=False)
    out.final(res.example, t.step, "the end")
    assert sorted(run.figures) == ["figures/step_000003.png", "figures/step_000006.png"]
    assert {"input", "detections", "reconstruction", "heatmap"} <= set(run.figures["figures/step_000006.png"])
    assert sorted(p.name for p in (tmp_path / "trial").iterdir()) == ["predictions.npz"]
    assert list(run.files) == ["predictions/predictions.npz"]
    assert run.files["predictions/predictions.npz"] == (tmp_path / "trial" / "predictions.npz").read_bytes()
    with np.load(tmp_path / "trial" / "predictions.npz") as z:
        assert {"images", "gt_counts", "gt_boxes", "boxes", "scores", "recon", "heatmap"} <= set(z.files)
        assert z["images"].shape[0] == z["boxes"].shape[0] == 8
        assert np.array_equal(z["boxes"], res.example.boxes[:8].numpy())


def test_final_outputs_without_a_trial_folder_still_reach_mlflow(splits):
    t = _trainer(splits, "trivial", max_steps=6, eval_every=100)
    run = _Run()
    res = t.run(progress=False)
    artifacts.TrialOutputs(run, t.splits.test, None, 100, t.budget_steps()).final(res.example, t.step, "")
    assert list(run.files) == ["predictions/predictions.npz"]
    assert list(run.figures) == [f"figures/step_{t.step:06d}.png"]


def test_heartbeat_goes_to_the_given_function(splits, monkeypatch):
    from mist_core import train

    lines: list[str] = []
    monkeypatch.setattr(train, "HEARTBEAT_S", 0.0)  # a line at every step
    _trainer(splits, "grid", max_steps=3, eval_every=100).run(progress=False, heartbeat=lines.append)
    assert [line.split(",")[0] for line in lines] == [f"step {i}/3" for i in (1, 2, 3)]
    assert all("steps/s" in line and ", train_" in line for line in lines)
    monkeypatch.setattr(train, "HEARTBEAT_S", 3600.0)
    _trainer(splits, "grid", max_steps=3, eval_every=100).run(progress=False, heartbeat=lines.append)
    assert len(lines) == 3                                                  # nothing new within the interval


def test_undefined_metrics_show_as_na():
    from sweeps.trial import shown_metrics

    assert shown_metrics({"rmse": 0.25, "mean_iou_matched": math.nan, "x": 1.0}, ["mean_iou_matched", "rmse", "y"]) \
        == "mean_iou_matched=n/a, rmse=0.25"


def test_no_nan_metric_reaches_mlflow(tmp_path):
    uri = f"sqlite:///{tmp_path}/m.db"
    exp = tracking.prepare(uri, "e")
    run = tracking.open_sweep_run(uri, exp, "u1", "s", tags={}, params={})
    tracking.log_metrics(uri, run, {"det_rate": 0.0, "mean_iou_matched": math.nan, "x": math.inf, "rmse": 0.3})
    from mlflow.tracking import MlflowClient

    assert MlflowClient(uri).get_run(run).data.metrics == {"det_rate": 0.0, "rmse": 0.3}


def test_mlflow_ui_line():
    from sweeps.driver import mlflow_ui

    local = mlflow_ui("sqlite:////abs/m.db", "7")
    assert " ui --backend-store-uri sqlite:////abs/m.db --host 127.0.0.1" in local
    assert local.endswith(", then http://127.0.0.1:5000/#/experiments/7?workflowType=machine_learning")
    assert mlflow_ui("http://u:***@host:5000/", "12") == \
        "http://u:***@host:5000/#/experiments/12?workflowType=machine_learning"


def test_parent_params_hold_absolute_storage_and_store(tmp_path, monkeypatch):
    import argparse

    from mist_core.config import parse_config
    from sweeps.config import SweepConfig, plan
    from sweeps.driver import Sweep

    monkeypatch.chdir(tmp_path)
    cfg = parse_config(SweepConfig, config_with(methods=["trivial"], search__num_samples=1, scheduler=DELETE,
                                          storage="runs", tracking_uri="sqlite:///m.db"))
    args = argparse.Namespace(config="s.yaml", storage=None, tracking_uri=None, resume=False, fresh=False, argv=[])
    params = Sweep(plan(cfg), args).parent_params()
    assert params["storage"] == str(tmp_path / "runs")
    assert params["tracking_uri"] == f"sqlite:///{tmp_path}/m.db"
    args.storage = "elsewhere"  # the command line's storage is the one the sweep uses
    assert Sweep(plan(cfg), args).parent_params()["storage"] == str(tmp_path / "elsewhere")


def test_report_is_logged_on_the_sweeps_parent_run(tmp_path):
    from mlflow.tracking import MlflowClient

    from analysis.report import log_to_mlflow

    uri = f"sqlite:///{tmp_path}/m.db"
    exp = tracking.prepare(uri, "e")
    parent = tracking.open_sweep_run(uri, exp, "uid1", "s", tags={}, params={})
    tracking.open_sweep_run(uri, exp, "uid2", "other", tags={}, params={})
    sweep = tmp_path / "runs" / "s"
    (sweep / "report").mkdir(parents=True)
    (sweep / "report" / "report.html").write_text("<html></html>")
    with pytest.raises(FileNotFoundError, match="sweep.json"):
        log_to_mlflow(sweep / "report", sweep_dir=sweep)
    (sweep / "sweep.json").write_text(json.dumps({"uid": "uid1", "experiment_id": exp, "tracking_uri": uri}))
    assert log_to_mlflow(sweep / "report", sweep_dir=sweep) == parent
    assert [a.path for a in MlflowClient(uri).list_artifacts(parent, "report")] == ["report/report.html"]


# --- one real sweep -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory):
    import ray

    from sweeps.run import main

    tmp = tmp_path_factory.mktemp("sweep")
    cfg = write_config(tmp, config_with(name="outputs", seeds=[0], search__num_samples=1, scheduler=DELETE))
    uri = f"sqlite:///{tmp}/mlflow.db"
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            code = main([str(cfg), "--storage", str(tmp / "runs"), "--tracking-uri", uri])
    finally:
        ray.shutdown()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("outputs")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    return dict(code=code, out=buf.getvalue(), client=client, exp=exp.experiment_id, runs=runs,
                sweep=tmp / "runs" / "outputs", storage=tmp / "runs")


def _role(s, role):
    return [r for r in s["runs"] if r.data.tags.get("mist.role") == role]


def test_sweep_trials_leave_one_npz_and_step_figures(finished_sweep, tmp_path):
    s = finished_sweep
    assert s["code"] == 0, s["out"][-3000:]
    trials = _role(s, "trial")
    assert sorted(r.data.tags["method"] for r in trials) == ["mist", "trivial"]
    for r in trials:
        client, rid = s["client"], r.info.run_id
        folder = s["sweep"] / "trials" / r.info.run_name
        assert sorted(p.name for p in folder.glob("*predictions*")) == ["predictions.npz"]
        assert [a.path for a in client.list_artifacts(rid, "predictions")] == ["predictions/predictions.npz"]
        got = Path(client.download_artifacts(rid, "predictions/predictions.npz", str(tmp_path)))
        assert got.read_bytes() == (folder / "predictions.npz").read_bytes()
        figs = [a.path for a in client.list_artifacts(rid, "figures")]
        assert figs == ["figures/step_000003.png", "figures/step_000006.png"]
    mist = next(r for r in trials if r.data.tags["method"] == "mist")
    with np.load(s["sweep"] / "trials" / mist.info.run_name / "heatmaps_over_time.npz") as z:
        assert list(z["steps"]) == [0, 3, 6]  # the untrained model, each evaluation, the end


def test_sweep_logs_no_nan_and_prints_none(finished_sweep):
    s = finished_sweep
    for r in s["runs"]:
        assert all(math.isfinite(v) for v in r.data.metrics.values()), (r.info.run_name, r.data.metrics)
    trivial = next(r for r in _role(s, "trial") if r.data.tags["method"] == "trivial")
    assert "det_rate" in trivial.data.metrics and "mean_iou_matched" not in trivial.data.metrics  # matched nothing
    assert "=nan" not in s["out"] and "NaN" not in s["out"]


def test_parent_run_summary_params_report_and_ui_line(finished_sweep):
    s = finished_sweep
    (parent,) = _role(s, "sweep")
    m = parent.data.metrics
    for method in ("trivial", "mist"):
        assert {f"mnist_hard/{method}/{k}_mean" for k in ("rmse", "det_rate", "ap_iou50")} <= set(m)
    assert m["mnist_hard/trivial/det_rate_mean"] == 0.0
    assert "mnist_hard/mist/rmse_std" not in m  # one seed: no std, not a NaN
    assert parent.data.params["storage"] == str(s["storage"]) == str(Path(parent.data.params["storage"]).resolve())
    assert parent.data.tags["storage"] == str(s["sweep"])
    assert "report/report.html" in [a.path for a in s["client"].list_artifacts(parent.info.run_id, "report")]
    url = f"http://127.0.0.1:5000/#/experiments/{s['exp']}?workflowType=machine_learning"
    lines = [line for line in s["out"].splitlines() if url in line]
    assert len(lines) == 2 and "--backend-store-uri sqlite:///" in lines[0]  # at the start and at the end
    assert "det_rate" in s["out"].split("final evaluation over seeds")[1]
