"""The cluster's tracking stack with real servers: PostgreSQL (initdb + pg_ctl), an S3 endpoint (moto's server mode)
and `mlflow server` over them (sweeps.tracking_server), each on a free port of 127.0.0.1 in a temporary folder and
stopped at the end (bench.stack). A two-trial sweep on a two-node Ray cluster (ray.cluster_utils) logs to it, with
Tune's storage on S3, fails on purpose, resumes from S3, and builds its report; no credential is written anywhere.
When this machine lacks PostgreSQL or moto, the server tests skip with one line saying which.
"""
from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import pytest

from mist_core.config import ConfigError
from sweep_fixtures import write_config

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


# --- refused before anything starts (no server) -------------------------------------------------------------
@pytest.mark.parametrize("argv,needle", [
    (["--host", "0.0.0.0"], "--host 0.0.0.0: that is every interface"),
    (["--host", "::"], "--host ::: that is every interface"),
    (["--host", "8.8.8.8"], "--host 8.8.8.8: not a loopback or private address"),
    (["--host", "localhost"], "give an IP address"),
    (["--backend-store-uri", "postgresql://mlflow:hunter2@10.0.0.5:5432/mlflow"], "holds a credential"),
    (["--backend-store-uri", "postgresql://mlflow@10.0.0.5/mlflow?password=hunter2"], "holds a credential"),
    (["--backend-store-uri", "sqlite:///mlflow.db"], "a database server's URI"),
])
def test_tracking_server_refuses_before_starting(tmp_path, capsys, argv, needle):
    from sweeps.tracking_server import main

    if "--backend-store-uri" not in argv:
        argv = argv + ["--backend-store-uri", "postgresql://mlflow@10.0.0.5:5432/mlflow"]
    code = main(argv + ["--artifacts-destination", "s3://b/mlflow", "--log-dir", str(tmp_path / "logs")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("error:") == 1 and needle in err, err
    assert "hunter2" not in err
    assert not (tmp_path / "logs").exists()  # nothing started


def test_private_addresses_are_accepted():
    from sweeps.tracking_server import bind_problem

    assert [bind_problem(h) for h in ("127.0.0.1", "10.1.2.3", "172.16.0.9", "192.168.1.20", "::1", "fd00::5")] == \
        [None] * 6


def test_ray_cluster_yaml_starts_the_tracking_server_on_postgres_and_s3():
    """The head's start command is a valid `mist-bench tracking-server` line: its own PostgreSQL, S3 artifacts, the
    head's private address and 127.0.0.1 (never 0.0.0.0); SQLite is no longer the cluster's store."""
    import shlex

    import yaml

    from sweeps.tracking_server import config_from_args, config_problems, parse_args

    cfg = yaml.safe_load((Path(__file__).resolve().parent.parent / "ray_cluster.yaml").read_text())
    line = next(c for c in cfg["head_start_ray_commands"] if "tracking-server" in c)
    words = shlex.split(line.replace("$HEAD_IP", "10.0.1.23").replace("$HOME", "/home/ubuntu"))
    start = words.index("tracking-server") + 1
    argv = words[start:words.index(">", start)]
    a = parse_args(argv)
    assert config_problems(config_from_args(a)) == []
    assert a.hosts == ["10.0.1.23", "127.0.0.1"] and a.artifacts_destination.startswith("s3://")
    assert a.postgres_dir and "sqlite" not in line and "0.0.0.0" not in line
    assert any("psycopg" in c for c in cfg["head_setup_commands"])


# --- the real stack ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stack():
    from bench.stack import local_stack, missing

    lacks = missing()
    if lacks:
        pytest.skip(lacks)
    with local_stack(workers=2) as st:
        yield st


def _listening(pids: set[int]) -> set[str]:
    """host:port of every TCP socket in LISTEN state that one of `pids` holds (from /proc)."""
    inodes = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    out = set()
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if f[3] == "0A" and f[9] in inodes:  # 0A: LISTEN
                addr, port = f[1].split(":")
                raw = bytes.fromhex(addr)
                raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))  # per 32-bit word, little-endian
                out.add(f"{socket.inet_ntop(family, raw)}:{int(port, 16)}")
    return out


def _alive(pid: int) -> bool:
    """Running or sleeping; not gone, not a zombie waiting for its parent to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:].split()[0] != "Z"


def _group(pgid: int) -> set[int]:
    pids = set()
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if os.getpgid(int(d)) == pgid:
                    pids.add(int(d))
            except OSError:
                pass
    return pids


def test_stack_stores_runs_in_postgres_artifacts_in_s3_and_listens_on_loopback_only(stack, tmp_path):
    import psycopg
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(stack.url)
    exp = client.create_experiment("stack-check")
    run = client.create_run(exp).info.run_id
    client.log_batch(run, metrics=[Metric("loss", 1.0 / (s + 1), 0, s) for s in range(5)])
    (tmp_path / "f.txt").write_text("figure")
    client.log_artifact(run, str(tmp_path / "f.txt"), "figures")
    assert client.get_experiment(exp).artifact_location == f"mlflow-artifacts:/{exp}"  # proxied by the server
    # the metrics are rows of PostgreSQL, the file an object of the bucket
    with psycopg.connect(stack.pg.uri) as db:  # PGPASSWORD from the environment
        steps = [r[0] for r in db.execute("select step from metrics where run_uuid = %s and key = 'loss' "
                                          "order by step", (run,))]
    assert steps == [0, 1, 2, 3, 4]
    assert [k for k in stack.s3_objects("mlflow/") if k.endswith(f"{run}/artifacts/figures/f.txt")]
    # nothing listens beyond 127.0.0.1: the MLflow server (uvicorn and its workers), PostgreSQL, moto
    pids = _group(stack.server.procs[0].pid) | {int((stack.pg.data / "postmaster.pid").read_text().split()[0])}
    addrs = _listening(pids)
    assert addrs and all(a.startswith("127.0.0.1:") for a in addrs), addrs
    # the wrong password is refused: the database really asks for one
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(stack.pg.uri, password="wrong")


def test_local_postgres_refuses_a_folder_its_user_cannot_reach(tmp_path):
    from sweeps.postgres import LocalPostgres

    if os.geteuid() != 0:
        pytest.skip("only root hands PostgreSQL to the postgres user")
    os.chmod(tmp_path, 0o700)
    with pytest.raises(ConfigError, match="not traversable by others"):
        LocalPostgres(tmp_path / "pg", port=1).init()


# --- a sweep on a two-node Ray cluster, logging to the stack, Tune storage on S3 ----------------------------------
def _runs(uri: str, name: str):
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    c = MlflowClient(uri)
    return c, c.search_runs([c.get_experiment_by_name(name).experiment_id], run_view_type=ViewType.ALL,
                            max_results=1000)


@pytest.mark.cluster
def test_two_node_sweep_logs_to_postgres_and_s3_and_resumes_from_s3(stack, tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray
    from ray.cluster_utils import Cluster

    from sweeps.results import read_bytes
    from sweeps.run import main
    from sweeps.trial import FAULT_ENV

    name = "pg-s3"
    cfg = write_config(tmp_path, {"name": name, "task": "recon", "scale": "smoke", "datasets": ["mnist_hard"],
                                  "methods": ["trivial"], "seeds": [0, 1], "max_failures": 0,
                                  "search": {"num_samples": 1, "metric": "rmse", "mode": "min"},
                                  "resources": {"cpu": 1, "gpu": 0}})
    storage = f"s3://{stack.bucket}/sweeps"
    # two nodes of one CPU: one trial on each; their processes inherit the S3 endpoint and keys from here, as nodes
    # on a cluster get them from their instance profile
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        args = [str(cfg), "--storage", storage, "--tracking-uri", stack.url, "--address", cluster.address]
        os.environ[FAULT_ENV] = "seed=1,step=3"  # seed 1 fails after step 3; max_failures 0: the sweep stops
        try:
            first = main(args)
        finally:
            del os.environ[FAULT_ENV]
        second = main(args + ["--resume"])
        assert not ray.is_initialized()
        # Ray's own logs of both nodes (Tune hands AWS_* variables to trials through their runtime env)
        ray_logs = {str(p): p.read_text(errors="replace") for p in
                    Path(cluster.head_node.get_session_dir_path()).rglob("*") if p.is_file() and p.suffix in
                    (".log", ".out", ".err", ".txt", ".json")}
    finally:
        cluster.shutdown()
    out = capsys.readouterr()
    shown = out.out + out.err
    assert (first, second) == (1, 0), shown[-3000:]
    assert "Ray: 2 node(s), 2 CPU" in shown and "seeds: resuming the Tune experiment at s3://" in shown

    client, runs = _runs(stack.url, name)
    parents = [r for r in runs if r.data.tags.get("mist.role") == "sweep"]
    trials = [r for r in runs if r.data.tags.get("mist.role") == "trial"]
    assert len(parents) == 1 and len(trials) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    assert sorted(int(r.data.tags["mist.attempts"]) for r in trials) == [1, 2]  # seed 1 resumed in its own run
    for r in trials:
        assert [m.step for m in client.get_metric_history(r.info.run_id, "rmse")] == [3, 6]  # each step once
        arts = {a.path for d in ("figures", "predictions") for a in client.list_artifacts(r.info.run_id, d)}
        assert arts == {"figures/step_000003.png", "figures/step_000006.png", "predictions/predictions.npz"}
    parent = parents[0].info.run_id
    assert "report/report.html" in {a.path for a in client.list_artifacts(parent, "report")}
    # ... and the artifacts are objects in S3 (through the server's proxy), the Tune experiment too
    objects = stack.s3_objects()
    for r in trials + parents:
        assert any(k.startswith("mlflow/") and f"/{r.info.run_id}/artifacts/" in k for k in objects)
    assert any(k.startswith(f"sweeps/{name}/seeds/") and "/checkpoint_" in k for k in objects)
    assert f"sweeps/{name}/report/report.html" in objects
    rows = pq.read_table(pa.BufferReader(read_bytes(f"{storage}/{name}/results.parquet"))).to_pandas()
    assert sorted(rows[rows.final & (rows.metric == "rmse")].seed) == [0, 1]

    # no credential in anything written: printed lines, params and tags, S3 objects, server and database logs
    texts = {"output": shown, **ray_logs}
    assert any("Creating runtime env" in t for t in ray_logs.values())  # the logs were read
    texts |= {f"run {r.info.run_name}": json.dumps([r.data.params, r.data.tags]) for r in runs}
    s3 = stack.s3()
    texts |= {k: s3.get_object(Bucket=stack.bucket, Key=k)["Body"].read().decode("latin-1") for k in objects
              if not k.endswith(".npz")}
    texts |= {str(p): p.read_text(errors="replace") for p in stack.folder.rglob("*.log")}
    for secret in stack.secrets:
        leaked = [where for where, text in texts.items() if secret in text]
        assert not leaked, leaked


def test_tracking_server_command_runs_its_own_postgres_and_stops_everything_on_sigterm():
    """`mist-bench tracking-server --postgres-dir` as ray_cluster.yaml runs it: a private PostgreSQL reached by its
    socket (no password anywhere), the server on 127.0.0.1; SIGTERM stops the server's processes and PostgreSQL."""
    import shutil
    import signal
    import subprocess
    import tempfile
    import time

    from bench.stack import free_port, missing

    if missing():
        pytest.skip(missing())
    from mlflow.tracking import MlflowClient

    folder = Path(tempfile.mkdtemp(prefix="mist-ts-", dir="/tmp"))  # reachable by the postgres user (as root)
    folder.chmod(0o755)
    port = free_port()
    cmd = [str(Path(sys.executable).with_name("mist-bench")), "tracking-server", "--postgres-dir", str(folder / "pg"),
           "--postgres-port", str(free_port()), "--artifacts-destination", str(folder / "artifacts"),
           "--port", str(port), "--workers", "1", "--log-dir", str(folder / "logs")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                client = MlflowClient(url)
                exp = client.create_experiment("own-postgres")
                break
            except Exception:  # noqa: BLE001 - not up yet
                assert time.monotonic() < deadline, "the server did not come up"
                time.sleep(1)
        run = client.create_run(exp).info.run_id
        client.log_metric(run, "loss", 0.5, step=3)
        assert [(m.step, m.value) for m in client.get_metric_history(run, "loss")] == [(3, 0.5)]
        postmaster = int((folder / "pg" / "data" / "postmaster.pid").read_text().split()[0])
        group = _group(proc.pid)
        assert all(a.startswith("127.0.0.1:") for a in _listening(group | {postmaster}))
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out
        assert "tracking server: http://127.0.0.1:" in out
        time.sleep(1)
        assert not [p for p in group | {postmaster} if _alive(p)]
        assert not (folder / "pg" / "data" / "postmaster.pid").exists()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        from sweeps.postgres import LocalPostgres

        if (folder / "pg" / "data" / "postmaster.pid").exists():
            LocalPostgres(folder / "pg").stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.cluster
def test_a_reused_worker_waits_for_the_stopped_trial_to_close_its_run(tmp_path, monkeypatch):
    """A trial stopped early (ASHA) closes its MLflow run on the way out; with reuse_actors its worker then runs the
    next trial. Tune gave the old trial 2 s, then failed the NEW one ("Could not re-use actor"): a sweep of 997 trials
    on a busy machine lost 12 that way. The driver's Ray gives it sweeps.cluster.REUSE_TIMEOUT_S."""
    import argparse
    import time

    import ray
    from ray import tune

    from sweeps import cluster

    monkeypatch.delenv(cluster.REUSE_TIMEOUT_ENV, raising=False)

    def slow_to_close(config):
        try:
            for i in range(1000):
                tune.report({"i": i})
                time.sleep(0.05)
        except SystemExit:  # stopped at a report, as sweeps.trial is: its run closed over a slow connection
            time.sleep(3)
            raise

    assert cluster.init_ray(argparse.Namespace(address=None, num_cpus=1, dashboard=False)) == "local"
    try:
        grid = tune.Tuner(slow_to_close, param_space={"x": tune.grid_search([1, 2, 3])},
                          tune_config=tune.TuneConfig(reuse_actors=True),
                          run_config=tune.RunConfig(stop={"training_iteration": 2}, storage_path=str(tmp_path),
                                                    verbose=0)).fit()
    finally:
        ray.shutdown()
    assert grid.num_errors == 0, [str(r.error)[:200] for r in grid if r.error]
    assert sorted(r.metrics["training_iteration"] for r in grid) == [2, 2, 2]
