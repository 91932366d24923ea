"""Faults a cluster has, each injected mid-sweep on a two-node Ray cluster on this machine (tests/ray_nodes.py):
a worker node stopped, the MLflow tracking server restarted (a plain SQLite-backed `mlflow server`, and the
PostgreSQL + S3 stack of bench.stack), the sweep's storage removed, a trial that runs out of memory.

Each sweep's driver is `python -m sweeps.run` in its own process, joining the nodes; its trials are
tests/fault_methods.py's (trivial's mean image for STEPS steps, a report and a checkpoint every EVERY), one on each
node, held at step HOLD while the test injects its fault. After each fault: nothing lost or doubled (every trial's
steps once, in MLflow and in results.parquet), no MLflow run left RUNNING, no traceback in the driver's own output,
and the driver ended within DRIVER_TIMEOUT_S (longer is a hang). The worker-node test is last: it leaves the worker
stopped, and a test after it would wait for it to start again.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fault_methods import GATE_ENV
from ray_nodes import TwoNodes, free_ports
from sweep_fixtures import write_config

pytestmark = pytest.mark.cluster

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
STEPS, EVERY, HOLD = 8, 2, 4  # reports (and checkpoints) at steps 2, 4, 6, 8; the trials wait inside step 4
REPORTED = [2, 4, 6, 8]
DRIVER_TIMEOUT_S = 300
# what Ray forwards from its own processes to the driver's output: "(trainable pid=123, ip=...)", "(raylet)"; a trial
# process that Ray stops while it shuts down may print Python's "Exception ignored ... Traceback" there
RAY_FORWARDED = re.compile(r"^(\x1b\[\d+m)?\((raylet|\w+ pid=\d+)")


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nodes")
    (tmp / "gate").mkdir()
    env = {"PYTHONPATH": str(TESTS), GATE_ENV: str(tmp / "gate"), "OMP_NUM_THREADS": "1",
           # a stopped node is declared dead after ~3 missed health checks of 1 s (Ray's default: 5 of 3 s)
           "RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3"}
    with TwoNodes(tmp, env=env) as n:
        yield n


@pytest.fixture
def cluster(nodes):
    """Both nodes up (a test that stopped the worker leaves it to be started again here), the gate cleared."""
    if nodes.worker is None:
        nodes.start_worker()
    for f in gate(nodes).iterdir():
        f.unlink()
    return nodes


def gate(nodes: TwoNodes) -> Path:
    return Path(nodes.env[GATE_ENV])


class Driver:
    """A sweep of fault_methods trials, its driver in its own process (its own session, killed if it hangs)."""

    def __init__(self, nodes: TwoNodes, tmp: Path, tracking_uri: str, methods=("fault_methods:Gate",), seeds=(0, 1),
                 hold: int | None = HOLD):
        self.nodes, self.storage, self.uri, self.name = nodes, tmp / "runs", tracking_uri, "fault"
        cfg = write_config(tmp, {"name": self.name, "task": "recon", "scale": "smoke", "datasets": ["mnist_hard"],
                                 "methods": list(methods), "seeds": list(seeds), "max_failures": 1,
                                 "budget": {"max_steps": STEPS}, "train": {"eval_every": EVERY},
                                 "search": {"num_samples": 1, "metric": "rmse", "mode": "min"}})
        if hold:
            (gate(nodes) / "hold").write_text(str(hold))
        self.log_path = tmp / "driver.log"
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sweeps.run", str(cfg), "--address", nodes.address, "--storage",
                 str(self.storage), "--tracking-uri", tracking_uri], cwd=ROOT,
                env=nodes.client_env(PYTHONUNBUFFERED="1"), stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_held(self) -> None:
        """Until a trial waits at step HOLD on each node (each has reported and checkpointed step 2)."""
        deadline = time.monotonic() + DRIVER_TIMEOUT_S
        steps = [gate(self.nodes) / f"{n}.step" for n in ("head", "worker")]
        while not all(p.exists() and p.read_text() == str(HOLD) for p in steps):
            assert self.proc.poll() is None, f"the sweep ended before its trials reached step {HOLD}:\n{self.log()}"
            assert time.monotonic() < deadline, f"no trial reached step {HOLD}:\n{self.log()[-3000:]}"
            time.sleep(0.1)

    def release(self) -> None:
        (gate(self.nodes) / "hold").unlink()

    def finish(self) -> tuple[int, str]:
        """The driver's exit status and output; a driver still running after DRIVER_TIMEOUT_S fails the test."""
        try:
            code = self.proc.wait(timeout=DRIVER_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            pytest.fail(f"the sweep hung: still running after {DRIVER_TIMEOUT_S} s\n{self.log()[-3000:]}")
        out = self.log()
        own = [line for line in out.splitlines() if not RAY_FORWARDED.match(line)]
        assert not any("Traceback" in line for line in own), out[-5000:]
        return code, out

    def runs(self):
        """(client, every MLflow run of the sweep)."""
        from mlflow.entities import ViewType
        from mlflow.tracking import MlflowClient

        c = MlflowClient(self.uri)
        exp = c.get_experiment_by_name(self.name)
        return c, c.search_runs([exp.experiment_id], run_view_type=ViewType.ALL, max_results=1000)

    def assert_nothing_lost(self, trials: int = 2) -> list:
        """Every trial's reported steps once each, in MLflow and in results.parquet; no run RUNNING. Its trial runs."""
        from sweeps.results import load_results

        client, runs = self.runs()
        assert "RUNNING" not in {r.info.status for r in runs}
        trial_runs = [r for r in runs if r.data.tags.get("mist.role") == "trial"]
        assert len(trial_runs) == trials
        for r in trial_runs:
            for key in ("rmse", "seconds"):
                steps = [m.step for m in client.get_metric_history(r.info.run_id, key)]
                assert sorted(steps) == REPORTED, (r.info.run_name, key, steps)
        df = load_results(self.storage / self.name)
        assert not df.duplicated(["trial", "step", "final", "metric"]).any()
        assert {t: sorted(g.step.unique()) for t, g in df.groupby("trial")} == \
            {r.info.run_name: REPORTED for r in trial_runs}
        return trial_runs


# --- the tracking server restarted mid-sweep ------------------------------------------------------------------
class SqliteServer:
    """A plain `mlflow server` over SQLite in `folder`, on a free port of 127.0.0.1 (job execution off: it starts
    in seconds, not tens)."""

    def __init__(self, folder: Path):
        self.folder, self.port = folder, free_ports(1)[0]
        self.url = f"http://127.0.0.1:{self.port}"
        self.procs: list[subprocess.Popen] = []

    def start(self) -> None:
        from sweeps.tracking_server import wait_healthy

        exe = str(Path(sys.executable).with_name("mlflow"))
        log = self.folder / "mlflow.log"
        with open(log, "ab") as f:
            self.procs.append(subprocess.Popen(
                [exe, "server", "--backend-store-uri", f"sqlite:///{self.folder}/mlflow.db", "--artifacts-destination",
                 str(self.folder / "artifacts"), "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
                cwd=self.folder, env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}, stdout=f,
                stderr=subprocess.STDOUT, start_new_session=True))
        wait_healthy(self.url, self.procs[-1], str(log))

    def stop(self) -> None:
        from sweeps.tracking_server import stop_groups

        stop_groups(self.procs)
        self.procs = []


@pytest.fixture(params=["sqlite", "postgresql"])
def tracking_server(request, tmp_path, monkeypatch):
    """(url, restart): a running MLflow server and how to stop it and start it again on the same store."""
    monkeypatch.setenv("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")  # faster starts; the sweeps use no jobs
    if request.param == "sqlite":
        (tmp_path / "server").mkdir()
        server = SqliteServer(tmp_path / "server")
        server.start()
        try:
            yield server.url, server
        finally:
            server.stop()
        return
    from bench.stack import local_stack, missing

    lacks = missing()
    if lacks:
        pytest.skip(lacks)
    with local_stack(workers=1) as st:
        yield st.url, st.server


def test_tracking_server_restarted_mid_sweep(cluster, tmp_path, tracking_server):
    """Both trials report step 4 while the server is down (it is stopped before they are released, and started
    only after): MLflow's client retries (MLFLOW_HTTP_REQUEST_MAX_RETRIES, ..._BACKOFF_FACTOR) until it is back,
    and the sweep finishes with every step logged once."""
    url, server = tracking_server
    sweep = Driver(cluster, tmp_path, url)
    sweep.wait_held()
    server.stop()
    sweep.release()
    server.start()
    code, out = sweep.finish()
    assert code == 0, out[-5000:]
    trials = sweep.assert_nothing_lost()
    assert sorted(int(r.data.tags["mist.attempts"]) for r in trials) == [1, 1]  # waited, not failed and retried
    assert {r.info.status for r in sweep.runs()[1]} == {"FINISHED"}


# --- storage removed mid-sweep --------------------------------------------------------------------------------
def test_storage_removed_mid_sweep(cluster, tmp_path):
    """The sweep stops at once with one line saying so (exit status 2), not a failure per trial and retry and a
    --resume that cannot work; its MLflow runs are closed."""
    sweep = Driver(cluster, tmp_path, f"sqlite:///{tmp_path}/mlflow.db")
    sweep.wait_held()
    shutil.rmtree(sweep.storage)
    sweep.release()
    code, out = sweep.finish()
    assert code == 2, out[-5000:]
    errors = [line for line in out.splitlines() if "error:" in line]
    assert errors == [f"mist-bench: error: storage: the sweep folder {sweep.storage / 'fault'} lost its sweep.json "
                      "during the sweep (deleted, or its mount went away); the sweep stopped, as its checkpoints and "
                      f"results can no longer be trusted: remove what is left of {sweep.storage / 'fault'} and start "
                      "the sweep again"], out[-5000:]
    assert "--resume" not in out
    _, runs = sweep.runs()
    assert len(runs) == 3 and "RUNNING" not in {r.info.status for r in runs}


# --- a trial that runs out of memory --------------------------------------------------------------------------
def test_trial_out_of_memory_fails_alone(cluster, tmp_path):
    """Hog's allocation fails at its second step, on each attempt; Gate, in the same sweep, finishes untouched. The
    sweep ends as failed (status 1) with one line naming the trial and the cause."""
    sweep = Driver(cluster, tmp_path, f"sqlite:///{tmp_path}/mlflow.db",
                   methods=("fault_methods:Gate", "fault_methods:Hog"), seeds=(0,), hold=None)
    code, out = sweep.finish()
    assert code == 1, out[-5000:]
    client, runs = sweep.runs()
    trials = {r.data.tags["method"]: r for r in runs if r.data.tags.get("mist.role") == "trial"}
    assert {m: r.info.status for m, r in trials.items()} == {"gate": "FINISHED", "hog": "FAILED"}  # their `name`s
    gate_run = trials["gate"].info.run_id
    assert [m.step for m in client.get_metric_history(gate_run, "rmse")] == REPORTED
    failed = [line for line in out.splitlines() if "FAILED: " in line]
    assert len(failed) == 1 and "-hog-s0" in failed[0], out[-5000:]
    assert "out of memory: RuntimeError: [enforce fail at alloc_cpu.cpp" in failed[0]
    assert "can't allocate memory" in failed[0] and "lower train.batch_size" in failed[0]


# --- a worker node stopped mid-sweep --------------------------------------------------------------------------
def test_worker_node_stopped_mid_sweep(cluster, tmp_path):
    """The trial on the stopped node is retried on the other one from its last checkpoint (step 2), in its own
    MLflow run; steps 3-4 run again, their reports are not logged twice."""
    sweep = Driver(cluster, tmp_path, f"sqlite:///{tmp_path}/mlflow.db")
    sweep.wait_held()
    cluster.stop_worker()
    sweep.release()
    code, out = sweep.finish()
    assert code == 0, out[-5000:]
    assert "from its last checkpoint after: its process or its node died (ActorDiedError: " in out
    trials = sweep.assert_nothing_lost()
    assert sorted(int(r.data.tags["mist.attempts"]) for r in trials) == [1, 2]
    assert {r.info.status for r in sweep.runs()[1]} == {"FINISHED"}
