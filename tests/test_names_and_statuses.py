"""A method is shown by its class's `name` everywhere (rows, console, trial names, MLflow), two methods may not share
one, and a trial's MLflow status says how it ended: FINISHED (its budget, or stopped early by the scheduler, tagged
mist.stopped_by), KILLED (interrupted, or stopped by anything else), FAILED (an error)."""
from __future__ import annotations

import itertools
from types import SimpleNamespace

import pandas as pd
import pytest

from mist_core.config import ConfigError, parse_config
from sweep_fixtures import config_with

PLUGIN = '''
from baselines.trivial import Trivial


class Canvas(Trivial):
    """A plug-in: trivial's mean image under a name of its own."""
    name = "canvas"


class Twin(Trivial):
    name = "canvas"


class Mist(Trivial):
    name = "mist"
'''
_n = itertools.count()


@pytest.fixture
def plugin(tmp_path, monkeypatch) -> str:
    """A fresh module of plug-in methods on sys.path; its name."""
    name = f"plugin_h35_{next(_n)}"
    (tmp_path / f"{name}.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def _plan(methods):
    from sweeps.config import SweepConfig, plan

    return plan(parse_config(SweepConfig, config_with(methods=methods, search={"num_samples": 1, "metric": "rmse",
                                                                               "mode": "min"})),
                import_methods=True)


# --- the displayed name ----------------------------------------------------------------------------------------
def test_a_plugin_is_shown_by_its_name(plugin):
    from mist_core.registry import display_name

    assert display_name(f"{plugin}:Canvas") == "canvas" and display_name("mist") == "mist"
    cells = {c.method: c for c in _plan(["trivial", f"{plugin}:Canvas"]).cells}
    assert cells[f"{plugin}:Canvas"].label == "canvas" and cells["trivial"].label == "trivial"


def test_two_methods_with_one_name_are_refused_by_name(plugin):
    with pytest.raises(ConfigError) as e:
        _plan([f"{plugin}:Canvas", f"{plugin}:Twin"])
    assert (f"methods: {plugin}:Canvas and {plugin}:Twin share the name 'canvas' (a method's results carry its "
            "class's `name`): give one another") in str(e.value)
    from mist_core.registry import get_method

    with pytest.raises(TypeError, match=rf"{plugin}:Mist: its name 'mist' is the registered method "
                                        r"mist_core.mist:MIST's; give the class another `name`"):
        get_method(f"{plugin}:Mist")
    with pytest.raises(ConfigError, match=r"run.method: .*its name 'mist' is the registered method"):
        from mist_core.train import resolve

        resolve({"method": f"{plugin}:Mist", "dataset": "mnist_hard", "scale": "smoke"})


class FakeTrial:
    """What SweepProgress reads of a Tune trial."""

    def __init__(self, spec, trial_id: str, last_result: dict | None = None):
        self.config = {"spec": spec.model_dump()}
        self.trial_id = trial_id
        self.last_result = last_result or {}

    def __str__(self) -> str:
        from sweeps.spec import trial_name

        return trial_name(self)


def _ctx(uri: str = "sqlite:///unused.db", experiment_id: str = "0"):
    from sweeps.spec import SweepContext

    return SweepContext(name="s", uid="u1", table=None, tracking_uri=uri, experiment_id=experiment_id,
                        parent_run_id="p", code_version="v", fault=None, checkpoint_interval_s=0.0, trials_dir="/t")


def _spec(method: str, phase: str = "seeds", **ctx):
    from mist_core.train import RunConfig
    from sweeps.spec import TrialSpec

    run = RunConfig(method=method, dataset="mnist_hard", scale="smoke", seed=1)
    return TrialSpec(ctx=_ctx(**ctx), phase=phase, run=run, data_hash="h")


def _progress(tmp_path, scheduler: str = "none", marker: str = ""):
    from sweeps.progress import SweepInfo, SweepProgress

    cb = SweepProgress(SweepInfo("s", 0.0, "rmse", str(tmp_path / "results.parquet"), scheduler=scheduler,
                                 marker=marker))
    cb.setup()
    return cb


def test_rows_console_and_trial_names_carry_the_name(plugin, tmp_path, capsys):
    trial = FakeTrial(_spec(f"{plugin}:Canvas"), "t1")
    assert str(trial) == "seeds-mnist_hard-canvas-s1-t1"   # Tune's trial folder and the MLflow run's name
    cb = _progress(tmp_path)
    cb.on_trial_result(0, [], trial, {"step": 3, "rmse": 0.3, "final": 0.0, "time_total_s": 1.0})
    cb.on_experiment_end([])
    rows = pd.read_parquet(tmp_path / "results.parquet")
    assert set(rows.method) == {"canvas"} and set(rows.trial) == {"seeds-mnist_hard-canvas-s1-t1"}
    assert "seeds  mnist_hard/canvas s1 t1: step 3 rmse=0.3" in capsys.readouterr().out


# --- how a trial ended, in MLflow ------------------------------------------------------------------------------------
@pytest.fixture
def store(tmp_path):
    from sweeps import tracking

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    exp = tracking.prepare(uri, "s")
    return SimpleNamespace(uri=uri, experiment_id=exp, parent=tracking.open_sweep_run(uri, exp, "u1", "s", {}, {}))


def _trial_run(store, phase: str, trial_id: str):
    """A Tune trial whose MLflow run is open (RUNNING), as a trial leaves it when Tune stops it at a report."""
    from sweeps import tracking

    spec = _spec("trivial", phase, uri=store.uri, experiment_id=store.experiment_id)
    run = tracking.TrialRun(store.uri, store.experiment_id, store.parent, tracking.trial_key("u1", trial_id), trial_id,
                            {"method": "trivial"}, {})
    return spec, run.run_id


def _ended(store, run_id: str) -> tuple[str, str | None]:
    from mlflow.tracking import MlflowClient

    r = MlflowClient(store.uri).get_run(run_id)
    return r.info.status, r.data.tags.get("mist.stopped_by")


@pytest.mark.parametrize("phase, final, marker_kept, expected", [
    ("search", 0.0, True, ("FINISHED", "asha")),    # ASHA stopped it: an early stop, not an interruption
    ("search", 1.0, True, ("FINISHED", None)),      # it trained its whole budget
    ("seeds", 0.0, True, ("KILLED", "tune")),       # no scheduler in phase 2: something else stopped it
    ("search", 0.0, False, ("KILLED", "storage")),  # the sweep folder went away (sweeps.storage_watch)
], ids=["asha", "budget", "other", "storage"])
def test_a_completed_trial_ends_with_the_status_of_how_it_stopped(store, tmp_path, capsys, phase, final,
                                                                   marker_kept, expected):
    marker = tmp_path / "sweep.json"
    if marker_kept:
        marker.write_text("{}")
    spec, run_id = _trial_run(store, phase, "t1")
    cb = _progress(tmp_path, scheduler="asha", marker=str(marker))
    cb.on_trial_complete(0, [], FakeTrial(spec, "t1", {"step": 3.0, "final": final}))
    assert _ended(store, run_id) == expected
    if expected[1]:
        assert f"stopped early by {expected[1]}: {phase}-mnist_hard-trivial-s1-t1" in capsys.readouterr().out


def test_an_interrupted_sweep_leaves_its_open_trials_killed(store):
    """The driver's close after Ctrl-C or SIGTERM (tests/test_reliability.py runs the real signal)."""
    from sweeps import tracking

    _, run_id = _trial_run(store, "search", "t2")
    assert tracking.close_sweep_run(store.uri, store.experiment_id, store.parent, "KILLED") == 1
    assert _ended(store, run_id) == ("KILLED", None)
