"""Sweep reliability: what can be refused is refused before Ray starts (and at --check), nothing waits forever, a
stopped sweep leaves no MLflow run RUNNING, and a resumed trial never logs a second value for a (metric, step).

The validation tests need no Ray; `TestOnLocalRay` shares one local Ray instance; the signal tests run a sweep in a
subprocess (its own Ray) and stop it after its first trial report.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mist_core.config import ConfigError, parse_config
from sweep_fixtures import DELETE, config_with, local_ray_instance, write_config
from sweeps.config import SweepConfig, load_sweep, plan

ROOT = Path(__file__).resolve().parent.parent
ONE_CELL = dict(methods=["mist"], seeds=[0], search__num_samples=1, scheduler=DELETE)  # no search: one trial per seed


def _plan_error(cfg: dict) -> str:
    with pytest.raises(ConfigError) as err:
        plan(parse_config(SweepConfig, cfg, where="sweep"))
    return str(err.value)


# --- refused before Ray, by plan() (shared by --check and the real run) --------------------------------------
BAD_VALUES = [
    ("infinite lr", config_with(overrides=[{"methods": ["mist"], "method_params": {"lr_task": float("inf")}}]),
     "methods.mist.lr_task=inf: not a finite number"),
    ("nan in a sweep field", config_with(checkpoint_interval_s=float("nan")), "sweep.checkpoint_interval_s"),
    ("infinite budget", config_with(budget={"max_seconds": float("inf")}), "max_seconds=inf: not a finite number"),
    ("infinite scheduler factor", config_with(scheduler__reduction_factor=float("inf")), "scheduler.reduction_factor=inf"),
    ("batch larger than the data", config_with(train={"batch_size": 65}),
     "cell (mnist_hard, mist): train.batch_size=65 > datasets.mnist_hard.n_train=64"),
    ("unknown device", config_with(train={"device": "tpu"}), "train.device='tpu': unknown device"),
    ("cuda without a GPU", config_with(train={"device": "cuda"}), "train.device='cuda' but resources.gpu=0"),
    ("a GPU index the trial cannot see", config_with(train={"device": "cuda:1"}, resources__gpu=0.5),
     "train.device='cuda:1': a trial with resources.gpu=0.5 sees GPUs 0..0 only"),
    ("negative seed", config_with(seeds=[0, -1]), "sweep.seeds.1"),
    ("seed numpy refuses", config_with(seeds=[2**32]), "sweep.seeds.0"),
    ("negative search seed", config_with(search__seed=-3), "sweep.search.seed"),
    ("unknown tracking scheme", config_with(tracking_uri="garbage://host/x"), "tracking_uri 'garbage://host/x': unknown "
                                                                         "scheme 'garbage'"),
    ("bad module:Class name", config_with(methods=["trivial", "my pkg:Cls"]), "'my pkg:Cls' is neither"),
]


@pytest.mark.parametrize("what,cfg,needle", BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
def test_bad_value_is_refused_naming_its_field(tmp_path, capsys, what, cfg, needle):
    from sweeps.run import main

    assert needle in _plan_error(cfg)
    path = write_config(tmp_path, cfg)
    assert main([str(path), "--check"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and needle in err


def test_batch_size_is_checked_for_every_method():
    """A method with nothing to learn (trivial) too: its one pass would run on fewer images than its batch."""
    msg = _plan_error(config_with(train={"batch_size": 65}))
    assert "(mnist_hard, mist)" in msg and "cell (mnist_hard, trivial): train.batch_size=65 > " in msg
    assert plan(parse_config(SweepConfig, config_with(methods=["trivial"], train={"batch_size": 64}, search__num_samples=1,
                                                scheduler=DELETE)))


def test_empty_sizes_is_refused():
    assert "sizes" in _plan_error(config_with(overrides=[{"methods": ["mist"], "method_params": {"sizes": []}}]))


def test_storage_and_mlflow_store_that_cannot_be_written(tmp_path, capsys):
    from sweeps.run import main

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    (tmp_path / "db-dir.db").mkdir()
    cases = [
        (config_with(storage=str(blocker / "runs")), f"storage '{blocker}/runs': it is under {blocker}, a file"),
        (config_with(storage=str(blocker)), f"{blocker} is a file, not a folder"),
        (config_with(tracking_uri=f"sqlite:///{blocker}/mlflow.db"), f"{blocker} is a file, not a folder"),
        (config_with(tracking_uri=f"sqlite:///{blocker}/sub/mlflow.db"), f"it is under {blocker}, a file"),
        (config_with(tracking_uri=f"sqlite:///{tmp_path}/db-dir.db"), "db-dir.db is not a file"),
    ]
    for cfg, needle in cases:
        assert needle in _plan_error(cfg)
    assert plan(parse_config(SweepConfig, config_with(storage="s3://bucket/x", tracking_uri="http://host:5000")))
    # the real run checks the command line's, before Ray (no Ray here: a refusal in seconds) and before writing
    path = write_config(tmp_path, config_with())
    assert main([str(path), "--storage", str(blocker / "runs"), "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]) == 2
    assert str(blocker) in capsys.readouterr().err and not (tmp_path / "m.db").exists()


def test_data_folders_are_relative_to_the_config_file(tmp_path, monkeypatch):
    from data_fixtures import write_mnist_dir

    from mist_core.train import resolve

    write_mnist_dir(tmp_path / "sweep" / "digits")
    path = write_config(tmp_path / "sweep", config_with(cache_dir="cache", overrides=[{"datasets": ["mnist_hard"],
                                                       "dataset_params": {"digits_dir": "digits"}}]))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # a driver started from another folder (a trial runs in yet another)
    p = plan(load_sweep(path))
    for c in p.cells:
        assert c.run.dataset_params["digits_dir"] == str(tmp_path / "sweep" / "digits")
        assert c.run.cache_dir == str(tmp_path / "sweep" / "cache")
    # a config made in code: relative to the working directory, made absolute in the plan
    (elsewhere / "digits").symlink_to(tmp_path / "sweep" / "digits")
    p2 = plan(parse_config(SweepConfig, config_with(overrides=[{"dataset_params": {"digits_dir": "digits"}}])))
    assert {c.run.dataset_params["digits_dir"] for c in p2.cells} == {str(elsewhere / "digits")}
    monkeypatch.chdir(tmp_path)
    assert resolve(p2.cells[0].run).dataset_cfg.digits_dir == str(elsewhere / "digits")  # valid from anywhere


def _ctx():
    from sweeps.spec import SweepContext

    return SweepContext(name="s", uid="u1", table="1", tracking_uri="http://alice:***@host:5000", experiment_id="3",
                        parent_run_id="p", code_version="v", fault=None, checkpoint_interval_s=0.0, trials_dir="/t")


def test_trials_run_the_planned_config():
    """A cell's run holds every method, dataset and train field, resolved: a trial (sweeps.trial, from its spec)
    resolves exactly what the plan validated, with only its seed and search parameters on top; a cell's params
    (flat_params: the results' params_json) are those of the resolved run, without resolving it."""
    from mist_core.registry import get_method
    from mist_core.train import resolve
    from sweeps.spec import TrialSpec

    for name in ("smoke", "quick", "table1"):
        for c in plan(load_sweep(name)).cells:
            assert set(c.run.method_params) == set(get_method(c.method).Config.model_fields)
            assert resolve(c.run).as_params() == c.params
            assert TrialSpec.planned(_ctx(), "search", c).run == c.run
    cell = next(c for c in plan(load_sweep("smoke")).cells if c.method == "mist")
    search = TrialSpec.of_trial({"spec": TrialSpec.planned(_ctx(), "search", cell).model_dump(),
                                 "tuned": {"lr_task": 0.002}})   # phase 1: Optuna's pick
    seeds = TrialSpec.planned(_ctx(), "seeds", cell, seed=1, params={"lr_task": 0.002})  # phase 2: the best
    assert (search.run.seed, seeds.run.seed) == (cell.run.seed, 1) and search.data_hash == cell.data_hash
    for spec in (search, seeds):
        r = resolve(spec.run)
        assert r.method_cfg.lr_task == 0.002 != cell.run.method_params["lr_task"]
        assert {k: v for k, v in r.as_params().items() if k not in ("seed", "method.lr_task")} == {
            k: v for k, v in cell.params.items() if k not in ("seed", "method.lr_task")}


def test_trial_spec_is_what_tune_carries_strict_and_frozen():
    """Tune carries a spec as its model_dump() (and writes it to params.json): it comes back equal; an unknown or
    mistyped field is refused naming it; a spec cannot be changed; a trial config from before specs is refused with
    what to do."""
    from pydantic import ValidationError

    from sweeps.spec import TrialSpec

    cell = next(c for c in plan(load_sweep("smoke")).cells if c.method == "mist")
    spec = TrialSpec.planned(_ctx(), "seeds", cell, seed=2, params={"k": 3})
    dumped = spec.model_dump()
    assert TrialSpec.model_validate(dumped) == spec == TrialSpec.of_trial({"spec": json.loads(json.dumps(dumped))})
    assert spec.run.method_params["k"] == 3 and spec.run.seed == 2 and spec.data_hash == cell.data_hash
    with pytest.raises(ConfigError, match=r"trial spec\.ctx\.parent: unknown key"):
        TrialSpec.of_trial({"spec": {**dumped, "ctx": {**dumped["ctx"], "parent": "p"}}})
    with pytest.raises(ConfigError, match=r"trial spec\.phase: "):
        TrialSpec.of_trial({"spec": {**dumped, "phase": "final"}})
    with pytest.raises(ValidationError, match="frozen"):
        spec.phase = "search"
    with pytest.raises(ValidationError, match="frozen"):
        spec.run.seed = 5
    with pytest.raises(ConfigError, match="older version of sweeps; start it again with --fresh"):
        TrialSpec.of_trial({"ctx": {}, "cell": {}, "phase": "seeds"})


def test_module_class_method_is_not_imported_at_check(tmp_path, monkeypatch, capsys):
    """--check validates a 'module:Class' name's syntax only (importing would run the module); the real run imports
    it before Ray starts, and refuses what it finds."""
    from sweeps.run import main

    marker = tmp_path / "imported"
    (tmp_path / "usermethod_sidefx.py").write_text(f"open({str(marker)!r}, 'w').close()\nNotAMethod = 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = config_with(methods=["trivial", "usermethod_sidefx:NotAMethod"])
    path = write_config(tmp_path, cfg)
    p = plan(load_sweep(path))
    assert not marker.exists() and "usermethod_sidefx" not in sys.modules
    assert p.unimported() == ["usermethod_sidefx:NotAMethod"]
    assert "not imported at --check" in "\n".join(p.describe())
    assert main([str(path), "--storage", str(tmp_path / "runs")]) == 2  # imported now, refused before Ray
    assert marker.exists() and "is not a mist_core.method.Method subclass" in capsys.readouterr().err
    sys.modules.pop("usermethod_sidefx", None)


def test_check_command_does_not_import_a_module_class_method(tmp_path, monkeypatch, capsys):
    from sweeps.run import main

    marker = tmp_path / "imported"
    (tmp_path / "usermethod_sidefx2.py").write_text(f"open({str(marker)!r}, 'w').close()\nNotAMethod = 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    path = write_config(tmp_path, config_with(methods=["trivial", "usermethod_sidefx2:NotAMethod"]))
    assert main([str(path), "--check"]) == 0, capsys.readouterr().err
    assert not marker.exists() and "usermethod_sidefx2" not in sys.modules
    assert "not imported at --check" in capsys.readouterr().out


# --- no infinite waits -------------------------------------------------------------------------------------
def test_unreachable_address_fails_within_the_timeout(tmp_path, monkeypatch, capsys):
    import ray

    from sweeps.cluster import CONNECT_TIMEOUT_ENV
    from sweeps.run import main

    assert not ray.is_initialized()
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    monkeypatch.setenv(CONNECT_TIMEOUT_ENV, "2")
    path = write_config(tmp_path, config_with(**ONE_CELL))
    t0 = time.monotonic()
    assert main([str(path), "--address", f"127.0.0.1:{port}", "--storage", str(tmp_path / "runs")]) == 2
    assert time.monotonic() - t0 < 20
    err = capsys.readouterr().err
    assert f"--address 127.0.0.1:{port}: no Ray cluster answers" in err and "within 2 s" in err
    assert not ray.is_initialized()
    monkeypatch.setenv(CONNECT_TIMEOUT_ENV, "soon")
    assert main([str(path), "--address", f"127.0.0.1:{port}"]) == 2
    assert f"{CONNECT_TIMEOUT_ENV}='soon'" in capsys.readouterr().err


def _runs(uri: str, experiment: str):
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    c = MlflowClient(uri)
    exp = c.get_experiment_by_name(experiment)
    return c, c.search_runs([exp.experiment_id], run_view_type=ViewType.ALL, max_results=1000)


@pytest.fixture(scope="class")
def local_ray():
    yield from local_ray_instance(num_cpus=1)


class TestOnLocalRay:
    """One local Ray instance (1 CPU, no GPU) for the class; the sweeps join it."""

    @pytest.mark.parametrize("resources,needle", [
        ({"cpu": 4096, "gpu": 0}, "each trial asks for 4096 CPU and 0 GPU"),
        ({"cpu": 1, "gpu": 1}, "each trial asks for 1 CPU and 1 GPU"),
    ], ids=["cpus", "gpu"])
    def test_impossible_resource_request_is_refused(self, local_ray, tmp_path, capsys, resources, needle):
        from sweeps.run import main

        path = write_config(tmp_path, config_with(**ONE_CELL, resources=resources))
        t0 = time.monotonic()
        code = main([str(path), "--storage", str(tmp_path / "runs"), "--tracking-uri", f"sqlite:///{tmp_path}/m.db"])
        assert code == 2 and time.monotonic() - t0 < 30
        err = capsys.readouterr().err
        assert needle in err and "1 node(s) with 1 CPU and 0 GPU in all" in err, err
        assert not (tmp_path / "m.db").exists()  # refused before MLflow: no run to leave RUNNING

    def test_resume_logs_each_metric_step_once(self, local_ray, tmp_path):
        """mist checkpoints at its first report only (checkpoint_interval_s), fails after step 6 and is resumed from
        step 3: steps 4-6 run again, and their second values reach neither MLflow nor the parquet rows."""
        from sweeps.results import load_results
        from sweeps.run import main
        from sweeps.trial import FAULT_ENV

        cfg = config_with(**ONE_CELL, name="dedupe", budget={"max_steps": 9}, checkpoint_interval_s=3600, max_failures=0)
        path = write_config(tmp_path, cfg)
        uri = f"sqlite:///{tmp_path}/mlflow.db"
        args = [str(path), "--storage", str(tmp_path / "runs"), "--tracking-uri", uri]
        os.environ[FAULT_ENV] = "method=mist,step=6"
        try:
            assert main(args) == 1
        finally:
            del os.environ[FAULT_ENV]
        assert main(args + ["--resume"]) == 0
        client, runs = _runs(uri, "dedupe")
        (trial,) = [r for r in runs if r.data.tags.get("mist.role") == "trial"]
        assert trial.data.tags["mist.attempts"] == "2" and trial.info.status == "FINISHED"
        logged = {}
        for key in trial.data.metrics:
            steps = [m.step for m in client.get_metric_history(trial.info.run_id, key)]
            assert len(steps) == len(set(steps)), (key, steps)  # one value per (metric, step)
            logged[key] = {m.step: m.value for m in client.get_metric_history(trial.info.run_id, key)}
        assert sorted(logged["seconds"]) == [3, 6, 9]
        df = load_results(tmp_path / "runs" / "dedupe")
        assert not df.duplicated(["trial", "step", "final", "metric"]).any()
        step6 = df[(df.step == 6) & (df.metric == "seconds")]
        # the parquet keeps the value MLflow keeps: the first run's (the second one's training time differs)
        assert len(step6) == 1 and step6.value.iloc[0] == pytest.approx(logged["seconds"][6])
        assert sorted(df.step.unique()) == [3, 6, 9]


# --- stopping: SIGINT and SIGTERM leave no run RUNNING --------------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_stops_the_sweep_and_closes_its_runs(tmp_path, sig):
    """A long mist trial is stopped after its first report: the driver exits 130, and the sweep's parent run and
    the trial's run are KILLED in MLflow, none RUNNING."""
    cfg = config_with(**ONE_CELL, name="stopped", budget={"max_steps": 3000}, train={"eval_every": 3})
    path = write_config(tmp_path, cfg)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "sweeps.run", str(path), "--storage", str(tmp_path / "runs"),
                             "--tracking-uri", uri, "--num-cpus", "1"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines = []
    try:
        deadline = time.monotonic() + 120
        for line in proc.stdout:  # the first trial report: "seeds  mnist_hard/mist s0 <id>: step 3 ..."
            lines.append(line)
            if "mnist_hard/mist s0" in line and ": step " in line:
                break
            assert time.monotonic() < deadline, "".join(lines)
        else:
            pytest.fail("the sweep ended before its first report:\n" + "".join(lines))
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    text = "".join(lines) + out
    assert proc.returncode == 130, text[-3000:]
    assert "interrupted" in text and "--resume" in text
    # neither Ray's token-authentication warning nor Tune's hint to run TensorBoard (not installed)
    assert "Token authentication" not in text and "tensorboard" not in text.lower(), text[-3000:]
    _, runs = _runs(uri, "stopped")
    roles = {r.data.tags.get("mist.role"): r.info.status for r in runs}
    assert roles == {"sweep": "KILLED", "trial": "KILLED"}, (roles, text[-3000:])
