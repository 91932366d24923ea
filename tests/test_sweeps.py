"""Sweeps: config validation, the cluster config, tidy results, and real Ray Tune sweeps at smoke scale.

Fast parts need no Ray. `test_smoke_sweep_*` share one local Ray instance and one sweep (trivial + mist, an Optuna
search with ASHA, then 2 seeds) that is made to fail on purpose mid-way and then resumed. `test_cluster_job` starts
a two-node Ray cluster on this machine (`ray start` twice) and sends a sweep through `ray job submit`
(deselect with -m "not cluster").
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import yaml

from mist_core.config import ConfigError, parse_config
from sweep_fixtures import BASE, DELETE, config_with, local_ray_instance, write_config  # the sweep configs these tests vary
from sweeps.config import CONFIG_DIR, SweepConfig, load_sweep, plan
from sweeps.results import COLUMNS, ResultsWriter, load_results, report_rows


ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable

# --- validation (no Ray) ----------------------------------------------------------------------------------
BAD = [
    ("unknown key", config_with(colour="red"), "sweep.colour: unknown key"),
    ("unknown nested key", config_with(search__patience=3), "sweep.search.patience: unknown key"),
    ("wrong type", config_with(seeds="0"), "sweep.seeds"),
    ("wrong type in block", config_with(resources__cpu=1.5), "sweep.resources.cpu"),
    ("missing field", config_with(task=DELETE), "sweep.task"),
    ("unknown method", config_with(methods=["trivial", "nosuch"]), "unknown method 'nosuch'"),
    ("unknown dataset", config_with(datasets=["mnist_hard", "cifar"]), "unknown dataset 'cifar'"),
    ("unsupported task", config_with(task="classify", search__metric="both", search__mode="max"),
     "'trivial' does not support task 'classify'"),
    ("max_steps < eval_every", config_with(budget={"max_steps": 2}), "max_steps=2 < train.eval_every=3"),
    ("grace period > max_steps", config_with(scheduler__grace_period=50), "grace_period=50 steps > max_steps=6"),
    ("unknown metric", config_with(search__metric="accuracy"), "unknown metric 'accuracy'"),
    ("metric of another task", config_with(search__metric="both"), "'both' needs class predictions"),
    ("bad method param", config_with(overrides=[{"methods": ["mist"], "method_params": {"k": 0}}]),
     "cell (mnist_hard, mist)"),
    ("unknown method param", config_with(overrides=[{"methods": ["mist"], "method_params": {"kk": 3}}]), "kk"),
    ("override of an unlisted method", config_with(overrides=[{"methods": ["grid"], "method_params": {}}]),
     "overrides[0].methods: 'grid' is not one of the sweep's methods"),
    ("bad train key", config_with(train={"max_steps": 3}), "belong in budget"),
    ("fraction of a GPU above 1", config_with(resources__gpu=1.5), "a fraction of a GPU must be <= 1"),
    ("duplicate seeds", config_with(seeds=[0, 0]), "seeds: listed twice"),
    ("bad exclude", config_with(exclude=["mnist_hard/grid"]), "exclude[0]"),
    ("bad name", config_with(name="../x"), "sweep.name"),
]


@pytest.mark.parametrize("what,cfg,needle", BAD, ids=[b[0] for b in BAD])
def test_bad_config_is_one_message_naming_it(tmp_path, capsys, what, cfg, needle):
    from sweeps.run import main

    path = write_config(tmp_path, cfg)
    with pytest.raises(ConfigError) as err:
        plan(load_sweep(path))
    assert needle in str(err.value), str(err.value)
    # the CLI: exit status 2, one error message, nothing started (no storage written)
    assert main([str(path), "--storage", str(tmp_path / "runs")]) == 2
    out = capsys.readouterr().err
    assert out.count("error:") == 1 and needle in out
    assert not (tmp_path / "runs").exists()


def test_missing_env_var_and_missing_data_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("SVHN_DIR", raising=False)
    with pytest.raises(ConfigError, match="SVHN_DIR is not set"):
        load_sweep(CONFIG_DIR / "table4.yaml")
    monkeypatch.setenv("SVHN_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="train_dir=.* is not a directory"):
        plan(load_sweep(CONFIG_DIR / "table4.yaml"))


@pytest.mark.parametrize("cuda,share,device", [(False, 0.0, None), (True, 0.25, "cuda")], ids=["cpu-only", "gpu"])
def test_auto_gpu_follows_the_machine(tmp_path, monkeypatch, cuda, share, device):
    """resources.gpu: auto (the quick benchmark's) asks a quarter of a GPU per trial, training on it, where the planning
    machine has CUDA, and no GPU where it has none."""
    import torch

    from sweeps.config import AUTO_GPU_SHARE

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    sweep = load_sweep(write_config(tmp_path, config_with(resources__gpu="auto")))
    assert sweep.resources.gpu == share and (not cuda or share == AUTO_GPU_SHARE)
    if not cuda:
        assert all("train.device" not in c.params or c.params["train.device"] == "cpu" for c in plan(sweep).cells)
    assert load_sweep(CONFIG_DIR / "quick.yaml").resources.gpu == share


def test_duplicate_key_is_an_error_naming_key_and_line(tmp_path, capsys):
    from sweeps.run import main

    text = yaml.safe_dump(BASE, sort_keys=False) + "methods: [grid]\n"  # `methods:` a second time, at the end
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    first = 1 + next(i for i, line in enumerate(text.splitlines()) if line.startswith("methods:"))
    last = len(text.splitlines())
    with pytest.raises(ConfigError) as err:
        load_sweep(path)
    assert f"duplicate key 'methods' on line {last} (first on line {first})" in str(err.value)
    assert str(path) in str(err.value)
    assert main([str(path), "--check"]) == 2
    out = capsys.readouterr().err
    assert out.count("error:") == 1 and "duplicate key 'methods'" in out and "Traceback" not in out
    nested = tmp_path / "nested.yaml"  # inside a block too; a key overriding a merge (<<) is no duplicate
    nested.write_text("base: &b {num_samples: 1}\nsearch:\n  <<: *b\n  num_samples: 2\n  metric: rmse\n"
                      "  metric: det_rate\n")
    with pytest.raises(ConfigError, match="duplicate key 'metric' on line 6 \\(first on line 5\\)"):
        load_sweep(nested)


@pytest.mark.parametrize("text", ["", "\n# only a comment\n", "---\n"])
def test_empty_config_is_reported_as_empty(tmp_path, capsys, text):
    from sweeps.run import main

    path = tmp_path / "empty.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="empty config") as err:
        load_sweep(path)
    assert str(path) in str(err.value)
    assert main([str(path), "--check"]) == 2 and "empty config" in capsys.readouterr().err


def test_shipped_configs_validate(tmp_path, monkeypatch):
    from data_fixtures import SVHN_TEST, SVHN_TRAIN, write_svhn_dir  # a tiny SVHN in the real format

    write_svhn_dir(tmp_path / "train", SVHN_TRAIN)
    write_svhn_dir(tmp_path / "test", SVHN_TEST)
    monkeypatch.setenv("SVHN_DIR", str(tmp_path))
    names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    assert {"smoke", "quick", "table1", "table2", "table3", "table4"} <= set(names)
    for name in names:
        sweep = load_sweep(name)  # by name, as `ray submit` (running in ~) finds them
        p = plan(sweep)
        assert p.cells and p.n_trials() >= len(p.cells)
        text = (CONFIG_DIR / f"{name}.yaml").read_text()
        header = text.split("\nname:")[0]
        for word in ("command", "runtime", "expected"):
            assert word in header, f"{name}.yaml: its header comment must state the {word}"
    t1 = plan(load_sweep("table1"))
    assert {(c.dataset, c.method) for c in t1.cells if c.dataset == "gabor"} == {("gabor", "mist")}
    t3 = plan(load_sweep("table3"))
    assert {c.dataset: c.run.method_params["k"] for c in t3.cells} == {
        "mnist_hard_k9": 9, "mnist_hard_k6_9": 7, "mnist_hard_k3_9": 6}


def test_plan_resolves_cells():
    p = plan(parse_config(SweepConfig, BASE | {"budget": {"max_steps": 9}}))
    by = {c.method: c for c in p.cells}
    assert not p.needs_search(by["trivial"]) and p.needs_search(by["mist"])
    assert p.n_trials() == 2 + 2 * 2
    assert by["mist"].run.train["max_steps"] == 9 and by["mist"].run.train["threads"] == 1
    assert by["mist"].params["train.max_steps"] == 9
    assert len(by["mist"].data_hash) == 24 and by["mist"].data_hash == by["trivial"].data_hash


def test_ray_cluster_yaml_passes_rays_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())
    full = prepare_config(cfg)
    validate_config(full)
    types = full["available_node_types"]
    head = types[full["head_node_type"]]
    gpu = [t for t in types.values() if t["resources"].get("GPU", 0) >= 1]
    assert head["resources"].get("GPU", 0) == 0 and gpu, "a CPU head and a GPU worker type"
    assert all(isinstance(v, int) for t in types.values() for v in t["resources"].values())
    assert any("pip install -q -e ~/mist-bench" in c for c in full["setup_commands"])
    assert any("torch==2.13.0" in c for c in full["setup_commands"])
    bad = json.loads(json.dumps(cfg))
    bad["available_node_types"]["worker.gpu"]["resources"]["GPU"] = 0.5
    with pytest.raises(Exception, match="integer"):
        validate_config(prepare_config(bad))


def test_results_rows_rewrite_atomically_and_dedupe(tmp_path):
    path = str(tmp_path / "s" / "results.parquet")
    meta = dict(sweep="s", trial="tr1", phase="seeds", method="m", dataset="d", table="1", task="recon",
                scale="smoke", seed=0, params_json="{}")
    w = ResultsWriter(path)
    w.add(report_rows(meta, {"step": 3.0, "core_seconds": 1.0, "final": 0.0, "rmse": 0.5, "seconds": 1.2}, 2.0))
    w.flush()
    w2 = ResultsWriter(path)  # a resumed driver keeps the rows written before
    w2.add(report_rows(meta, {"step": 3.0, "core_seconds": 1.0, "final": 0.0, "rmse": 0.4, "seconds": 1.2}, 2.0))
    w2.add(report_rows(meta, {"step": 6.0, "core_seconds": 2.0, "final": 1.0, "rmse": 0.3, "seconds": 2.4}, 4.0))
    w2.flush()
    df = load_results(tmp_path / "s")
    assert tuple(df.columns) == COLUMNS
    assert len(df) == 4 and sorted(os.listdir(tmp_path / "s")) == ["results.parquet"]
    rmse = df[df.metric == "rmse"].set_index("step")["value"].to_dict()
    assert rmse == {3: 0.4, 6: 0.3}
    assert df[df.step == 6].final.all() and not df[df.step == 3].final.any()
    assert load_results(tmp_path).shape == df.shape  # a storage dir of sweeps


# --- a real sweep on local Ray: smoke, failed on purpose, resumed ------------------------------------------
@pytest.fixture(scope="class")
def local_ray():
    yield from local_ray_instance(num_cpus=2)


@pytest.fixture(scope="class")
def resumed_sweep(local_ray, tmp_path_factory):
    """trivial + mist: 2 Optuna trials for mist (ASHA), then both methods on seeds 0 and 1. mist seed 1 fails on
    purpose after step 3 (max_failures 0: the sweep stops, exit 1); --resume finishes it."""
    from sweeps.run import main
    from sweeps.trial import FAULT_ENV

    tmp = tmp_path_factory.mktemp("sweep")
    cfg = config_with(name="smoke-test", max_failures=0)
    path = write_config(tmp, cfg)
    args = [str(path), "--storage", str(tmp / "runs"), "--tracking-uri", f"sqlite:///{tmp}/mlflow.db"]
    t0 = time.time()
    os.environ[FAULT_ENV] = "method=mist,phase=seeds,seed=1,step=3"
    try:
        first = main(args)
    finally:
        del os.environ[FAULT_ENV]
    interrupted = load_results(tmp / "runs" / "smoke-test")
    again = main(args)  # without --resume: refused, names the options
    second = main(args + ["--resume"])
    return dict(tmp=tmp, path=path, args=args, first=first, again=again, second=second,
                interrupted=interrupted, seconds=time.time() - t0, uri=f"sqlite:///{tmp}/mlflow.db")


def _runs(uri: str, experiment: str):
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    c = MlflowClient(uri)
    exp = c.get_experiment_by_name(experiment)
    return c, c.search_runs([exp.experiment_id], run_view_type=ViewType.ALL, max_results=1000)


class TestSmokeSweep:
    """One sweep, failed on purpose mid-way and resumed; the Ray instance ends with the class."""

    def test_lands_in_mlflow_and_parquet(self, resumed_sweep):
        s = resumed_sweep
        assert (s["first"], s["again"], s["second"]) == (1, 2, 0), s
        client, runs = _runs(s["uri"], "smoke-test")
        parents = [r for r in runs if r.data.tags.get("mist.role") == "sweep"]
        trials = [r for r in runs if r.data.tags.get("mist.role") == "trial"]
        assert len(parents) == 1 and parents[0].info.status == "FINISHED"
        parent = parents[0].info.run_id
        assert len(trials) == 2 + 2 * 2, [r.info.run_name for r in trials]  # one run per trial, no duplicates
        assert len({r.data.tags["mist.trial_key"] for r in trials}) == len(trials)
        assert all(r.data.tags["mlflow.parentRunId"] == parent for r in trials)
        # every trial ended: trained its budget, or stopped early by ASHA (FINISHED too, tagged); nothing KILLED
        assert {r.info.status for r in runs} == {"FINISHED"}
        for r in trials:
            t = r.data.tags
            if "mist.stopped_by" in t:
                assert t["mist.stopped_by"] == "asha" and t["phase"] == "search"
            assert {"method", "dataset", "seed", "scale", "code_version", "data_hash", "phase", "trial_id"} <= set(t)
            assert r.data.params["train.max_steps"] == "6" and r.data.params["method"] == t["method"]
            if t["phase"] == "seeds":
                assert r.info.status == "FINISHED"
                hist = client.get_metric_history(r.info.run_id, "rmse")
                assert sorted(m.step for m in hist) == [3, 6]  # every report, with its step, exactly once
                arts = [a.path for a in client.list_artifacts(r.info.run_id, "figures")]
                assert arts == ["figures/step_000003.png", "figures/step_000006.png"]  # each evaluation, the end
                assert [a.path for a in client.list_artifacts(r.info.run_id, "predictions")] == [
                    "predictions/predictions.npz"]
        df = load_results(s["tmp"] / "runs" / "smoke-test")
        assert tuple(df.columns) == COLUMNS
        assert df.trial.nunique() == len(trials)
        final = df[df.final & (df.phase == "seeds") & (df.metric == "rmse")]
        assert sorted(zip(final.method, final.seed)) == [("mist", 0), ("mist", 1), ("trivial", 0), ("trivial", 1)]
        assert (final.value > 0).all() and (final.wall_seconds > 0).all() and (final.core_seconds >= 0).all()
        assert json.loads(final.params_json.iloc[0])["scale"] == "smoke"
        best = json.loads((s["tmp"] / "runs" / "smoke-test" / "best" / "mnist_hard__mist.json").read_text())
        mist_seeds = df[(df.phase == "seeds") & (df.method == "mist")].params_json.map(json.loads)
        assert all(p[f"method.{k}"] == v for p in mist_seeds for k, v in best["params"].items())


    def test_trials_leave_figure_inputs_for_the_report(self, resumed_sweep, tmp_path):
        """Each finished trial writes trials/<trial>/predictions.npz (+ the heatmap history for MIST); the report
        built from the sweep folder embeds the example figures and notes none missing."""
        import numpy as np

        from analysis.report import main as report_main

        sweep = resumed_sweep["tmp"] / "runs" / "smoke-test"
        df = load_results(sweep)
        seeds = df[df.final & (df.phase == "seeds")][["trial", "method"]].drop_duplicates()
        for r in seeds.itertuples(index=False):
            with np.load(sweep / "trials" / r.trial / "predictions.npz") as z:
                assert {"images", "boxes", "scores", "gt_counts"} <= set(z.files)
                assert z["images"].shape[0] == z["boxes"].shape[0] == 8
                assert ("recon" in z.files) == (r.method in ("mist", "trivial"))
            hist = sweep / "trials" / r.trial / "heatmaps_over_time.npz"
            assert hist.is_file() == (r.method == "mist")
            if r.method == "mist":
                with np.load(hist) as z:
                    # the untrained model and every report once (the resumed trial: from its checkpoint on)
                    steps = list(z["steps"])
                    assert steps in ([0, 3, 6], [6]) and z["heatmaps"].shape == (len(steps), *z["image"].shape[-2:])
        assert report_main([str(sweep), "--out", str(tmp_path / "report")]) == 0
        page = (tmp_path / "report" / "report.html").read_text()
        assert "no predictions.npz" not in page and "Heatmap during training" in page
        assert page.count("data:image/png;base64,") >= 4

    def test_resume_keeps_finished_trials(self, resumed_sweep):
        s = resumed_sweep
        _, runs = _runs(s["uri"], "smoke-test")
        trials = {(r.data.tags["phase"], r.data.tags["method"], r.data.tags["seed"], r.data.tags["trial_id"]): r
                  for r in runs if r.data.tags.get("mist.role") == "trial"}
        attempts = {k: int(r.data.tags["mist.attempts"]) for k, r in trials.items()}
        failed = [k for k in attempts if k[:3] == ("seeds", "mist", "1")]
        assert len(failed) == 1 and attempts[failed[0]] == 2, attempts  # resumed in its own run
        assert all(n == 1 for k, n in attempts.items() if k != failed[0]), attempts  # finished trials: not rerun
        # before the resume, the failed trial had reported step 3 only; the resume continued from that checkpoint
        before = s["interrupted"]
        tid = failed[0][3]
        assert sorted(before[before.trial.str.endswith(tid)].step.unique()) == [3]
        # a changed config refuses to resume
        changed = yaml.safe_load(s["path"].read_text()) | {"seeds": [0, 1, 2]}
        bad = write_config(s["tmp"], changed, "changed.yaml")
        from sweeps.run import main

        assert main([str(bad)] + s["args"][1:] + ["--resume"]) == 2


# --- a two-node Ray cluster on this machine, through `ray job submit` --------------------------------------
WORKER_PORTS = range(47000, 48000)  # the two nodes' --min/--max-worker-port ranges below


def _free_ports(n: int) -> list[int]:
    """n free ports outside WORKER_PORTS (a dashboard port drawn inside it once made `ray start` refuse)."""
    socks = []
    while len(socks) < n:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        if s.getsockname()[1] in WORKER_PORTS:
            s.close()
            continue
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _tree(root: int) -> set[int]:
    """`root` and its descendants, from /proc."""
    parent = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
                parent[int(d)] = int(stat[stat.rindex(")") + 2 :].split()[1])
            except (OSError, ValueError):
                pass
    out, grew = {root}, True
    while grew:
        new = {p for p, q in parent.items() if q in out} - out
        grew = bool(new)
        out |= new
    return out


def _stop(procs: list[subprocess.Popen]) -> None:
    """Stop the nodes this test started (and only those): SIGTERM to each blocking `ray start`, which stops its
    node's processes; SIGKILL for anything of theirs still alive after 20 s. (`ray stop` would stop every Ray
    process on the machine, other people's included.)"""
    pids = set().union(*(_tree(p.pid) for p in procs))
    for p in reversed(procs):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.time() + 20
    while time.time() < deadline and any(Path(f"/proc/{pid}").exists() for pid in pids):
        for p in procs:
            p.poll()  # reap
        time.sleep(0.5)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    for p in procs:
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


@pytest.mark.cluster
def test_cluster_job(tmp_path):
    gcs, dash, client, agent1, agent2 = _free_ports(5)
    temp = tempfile.mkdtemp(prefix="rc", dir="/tmp")  # short: Ray's socket paths must stay under 108 chars
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    # Ray 2.60 enables token auth: the nodes and the job client must agree (one private token, not ~/.ray's)
    env |= {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": uuid.uuid4().hex}
    ray = str(Path(PY).parent / "ray")
    common = ["--block", "--num-cpus", "1", "--disable-usage-stats"]
    head = [ray, "start", "--head", "--port", str(gcs), "--dashboard-port", str(dash), "--include-dashboard", "true",
            "--ray-client-server-port", str(client), "--dashboard-agent-listen-port", str(agent1),
            "--min-worker-port", "47000", "--max-worker-port", "47499", "--temp-dir", f"{temp}/h", *common]
    # two nodes on one machine: each its own temp dir (with a shared one, the second node's runtime-env agent
    # re-unpacked the job's working dir under the running driver)
    worker = [ray, "start", "--address", f"127.0.0.1:{gcs}", "--dashboard-agent-listen-port", str(agent2),
              "--min-worker-port", "47500", "--max-worker-port", "47999", "--temp-dir", f"{temp}/w", *common]
    cfg = write_config(tmp_path, {"name": "cluster-test", "task": "recon", "scale": "smoke", "datasets": ["mnist_hard"],
                            "methods": ["trivial"], "seeds": [0, 1], "max_failures": 1,
                            "search": {"num_samples": 1, "metric": "rmse", "mode": "min"},
                            "resources": {"cpu": 1, "gpu": 0}})
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    procs: list[subprocess.Popen] = []
    logs = []
    try:
        for name, cmd in (("head", head), ("worker", worker)):
            log = open(tmp_path / f"{name}.log", "w")
            logs.append(log)
            procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
            _wait_for(tmp_path / f"{name}.log", "Ray runtime started", procs[-1], timeout=90)
        job = subprocess.run(
            [ray, "job", "submit", "--address", f"http://127.0.0.1:{dash}", "--working-dir", str(ROOT), "--",
             # the seed-1 trial fails once on purpose: FailureConfig(max_failures=1) retries it from its checkpoint
             "env", "MIST_SWEEP_FAULT=seed=1,step=3", PY, "-m", "sweeps.run", str(cfg),
             "--storage", str(tmp_path / "runs"), "--tracking-uri", uri],
            env=env, capture_output=True, text=True, timeout=300)
        out = job.stdout + job.stderr
        assert job.returncode == 0 and "succeeded" in out, out[-4000:]
        assert "Ray: 2 node(s), 2 CPU" in out, out[-4000:]
    finally:
        _stop(procs)
        for log in logs:
            log.close()
        shutil.rmtree(temp, ignore_errors=True)
    df = load_results(tmp_path / "runs" / "cluster-test")
    assert sorted(df[df.final & (df.metric == "rmse")].seed) == [0, 1]
    _, runs = _runs(uri, "cluster-test")
    trials = [r for r in runs if r.data.tags.get("mist.role") == "trial"]
    assert len(trials) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    assert sorted(int(r.data.tags["mist.attempts"]) for r in trials) == [1, 2]


def _wait_for(log: Path, text: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if text in log.read_text():
            return
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args[:3]} exited:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {text!r}:\n{log.read_text()[-3000:]}")

