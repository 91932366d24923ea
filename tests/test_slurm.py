"""`mist-bench slurm`: the sbatch script it writes, and the smoke sweep through it on a real SLURM on this machine.

The real SLURM (tests/slurm_cluster.py: munged, slurmctld and two slurmd, nodes n1 and n2, in a temporary folder)
runs a two-node job: the Ray head on n1, a Ray worker on n2, the driver once both joined. The job is stopped with
SIGTERM mid-sweep, then resumed with the same command and `--resume`; at the end the sweep is whole: every trial in
MLflow (each (run, metric, step) once, no run RUNNING), in results.parquet, and the report. Without SLURM (slurmctld,
slurmd, munged, the clients) those tests skip with one line naming what is missing; the script tests always run.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from mist_core.config import ConfigError
from sweeps.config import CONFIG_DIR, load_sweep
from sweeps.slurm import SQLITE_MAX_TRIALS, prepare, render, time_limit_s, trials_per_node
from sweeps.slurm_join import missing_nodes, wait_nodes
from tests.slurm_cluster import SlurmCluster, _free_ports

ROOT = Path(__file__).resolve().parent.parent
SMOKE = CONFIG_DIR / "smoke.yaml"


# --- the script --------------------------------------------------------------------------------------------
def _job(tmp_path, monkeypatch, **flags):
    monkeypatch.chdir(tmp_path)
    return prepare(SMOKE, storage=str(tmp_path / "runs"), **flags)


def test_multi_node_script(tmp_path, monkeypatch):
    """Four nodes: the head by srun on the first, workers on the three others, the driver after all four joined,
    and (more than SQLITE_MAX_TRIALS trials at once) the PostgreSQL tracking server on the head."""
    job = _job(tmp_path, monkeypatch, nodes=4, cpus_per_node=4, time="2-00:00:00", partition="gpu",
               account="lab", signal_s=600)
    assert job.server and job.tracking_uri == "http://{head_ip}:5000"  # 4 nodes x 4 one-CPU trials > 8
    s = render(job)
    for line in ("#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=1", "#SBATCH --cpus-per-task=4",
                 "#SBATCH --time=2-00:00:00", "#SBATCH --partition=gpu", "#SBATCH --account=lab",
                 "#SBATCH --signal=B:TERM@600", "#SBATCH --requeue", f"#SBATCH --output={tmp_path}/slurm/smoke/"
                 "slurm-%j.log"):
        assert line in s.splitlines(), line
    assert "--gres" not in s  # the smoke trials take no GPU, none asked for
    head = next(ln for ln in s.splitlines() if ln.startswith("srun --nodes=1"))
    assert '--nodelist="$head"' in head and "--head --port=$RAY_PORT" in head
    workers = s[s.index('srun --nodes=$((${#nodes[@]} - 1))'):]
    assert '--exclude="$head"' in workers.splitlines()[0] and "--address=" in workers.splitlines()[1]
    # the driver starts after the line that waits for every node, and after the tracking server answers
    wait_all = s.index('--nodes "${nodes[@]}" --timeout 300 || finish 1')
    server = s.index("-m sweeps.tracking_server --postgres-dir")
    driver = s.index("-m sweeps.run ")
    assert wait_all < server < driver
    assert f"{tmp_path}/slurm/smoke/mlflow-pg" in s and "--tracking-uri 'http://{head_ip}:5000'" in s
    assert "scontrol requeue" in s and "trap on_term TERM" in s
    assert subprocess.run(["bash", "-n"], input=s, text=True).returncode == 0  # valid bash


def test_small_job_logs_to_sqlite_on_the_shared_filesystem(tmp_path, monkeypatch):
    job = _job(tmp_path, monkeypatch, nodes=2, requeue=False, signal_s=0)
    assert not job.server and job.tracking_uri == f"sqlite:///{tmp_path}/slurm/smoke/mlflow.db"
    s = render(job)
    assert "--no-requeue" in s and "#SBATCH --signal" not in s and "tracking_server" not in s
    assert f"--storage {tmp_path}/runs" in s
    # a resumed job passes --resume; a requeued start (restart count > 0) always resumes
    assert "again=--resume; else again=\"\"" in s
    assert "else again=--resume; fi" in render(_job(tmp_path, monkeypatch, resume=True))


def test_settings_come_from_the_config_and_flags_override(tmp_path, monkeypatch):
    cfg = tmp_path / "gpu.yaml"
    cfg.write_text(SMOKE.read_text().replace("resources:\n  cpu: 1\n  gpu: 0", "resources:\n  cpu: 2\n  gpu: 0.25")
                   + "slurm:\n  nodes: 3\n  gpus_per_node: 2\n  partition: a100\n  time: '12:00:00'\n")
    monkeypatch.chdir(tmp_path)
    job = prepare(cfg, storage=str(tmp_path / "runs"))
    # 2 GPUs / 0.25 = 8 trials per node, each with 2 CPUs: 16 CPUs per node, 24 trials at once: the server
    assert (job.slurm.nodes, job.cpus_per_node, job.slurm.partition, job.server) == (3, 16, "a100", True)
    assert "#SBATCH --gres=gpu:2" in render(job).splitlines()
    job = prepare(cfg, storage=str(tmp_path / "runs"), nodes=1, partition="h100", tracking="sqlite")
    assert (job.slurm.nodes, job.slurm.partition, job.server) == (1, "h100", False)
    sweep = load_sweep(cfg)
    assert trials_per_node(sweep, job.slurm, 16) == 8 and trials_per_node(sweep, job.slurm, 6) == 3
    assert SQLITE_MAX_TRIALS == 8


@pytest.mark.parametrize("flags, named", [
    (dict(gpus_per_node=0, tracking="sqlite"), "gpus_per_node"),       # GPU trials on GPU-less nodes
    (dict(time="10", signal_s=900), "signal_s"),                        # the SIGTERM before the job starts
    (dict(time="1:2:3:4"), "time"),                                     # not a SLURM time
    (dict(ray_port=5000), "give each its own port"),
    (dict(nodez=2), "nodez"),
])
def test_bad_settings_are_one_error_naming_them(tmp_path, monkeypatch, flags, named):
    cfg = tmp_path / "gpu.yaml"
    cfg.write_text(SMOKE.read_text().replace("gpu: 0", "gpu: 1"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=named):
        prepare(cfg, storage=str(tmp_path / "runs"), **{"gpus_per_node": 1, **flags})


def test_a_job_dir_that_cannot_be_written_is_named(tmp_path, monkeypatch):
    (tmp_path / "afile").write_text("")
    with pytest.raises(ConfigError, match=r"--job-dir .*afile, a file"):
        _job(tmp_path, monkeypatch, job_dir=str(tmp_path / "afile" / "jobs"))  # its SQLite store
    with pytest.raises(ConfigError, match=r"--job-dir .*afile, a file"):
        _job(tmp_path, monkeypatch, job_dir=str(tmp_path / "afile" / "jobs"), tracking="server")


@pytest.mark.parametrize("storage, named", [("s3:/bucket/x", "slash missing"), ("ftp://host/x", "ftp"),
                                             ("s3://", "bucket")])
def test_a_bad_storage_is_refused_at_submission(tmp_path, monkeypatch, storage, named):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=named):
        prepare(SMOKE, storage=storage)
    assert not (tmp_path / "slurm").exists() and not (tmp_path / "s3:").exists()  # nothing written


def test_time_limits():
    assert [time_limit_s(t) for t in ("30", "5:00", "01:00:00", "2-00", "1-02:03", "1-00:00:01")] == [
        1800, 300, 3600, 172800, 93780, 86401]


def test_dry_run_prints_the_script_and_where_things_go(tmp_path, monkeypatch, capsys):
    from sweeps.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["slurm", str(SMOKE), "--nodes", "2", "--dry-run", "--storage", "runs"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("#!/bin/bash\n#SBATCH --job-name=mist-smoke\n") and "#SBATCH --nodes=2" in out
    assert f"report: {tmp_path}/runs/smoke/report/report.html" in err.splitlines()
    assert f"MLflow: sqlite:///{tmp_path}/slurm/smoke/mlflow.db" in err.splitlines()
    assert not (tmp_path / "slurm").exists()  # nothing written
    assert main(["slurm", str(SMOKE), "--gpus-per-node", "-1", "--dry-run"]) == 2
    assert "gpus_per_node" in capsys.readouterr().err


def test_a_node_that_does_not_join_is_named():
    assert missing_nodes(["n1", "n2", "n3"], [{"NodeName": "n1", "Alive": True},
                                              {"NodeName": "n3", "Alive": False}]) == ["n2", "n3"]
    port, = _free_ports(1)
    line = wait_nodes(f"127.0.0.1:{port}", ["n1", "n2"], timeout_s=0.5)  # no head there
    assert line == f"the Ray head at 127.0.0.1:{port} (node n1) did not start within 0.5 s"


# --- a real SLURM ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def slurm():
    cluster = SlurmCluster.start(nodes=2)
    try:
        yield cluster
    finally:
        cluster.stop()


def _submit(slurm: SlurmCluster, work: Path, *extra: str) -> tuple[str, str]:
    ray_port, = _free_ports(1)
    r = subprocess.run([sys.executable, "-m", "sweeps.cli", "slurm", str(SMOKE), "--nodes", str(len(slurm.nodes)),
                        "--storage", str(work / "runs"), "--time", "30", "--ray-port", str(ray_port),
                        "--join-timeout", "120", *extra],
                       cwd=work, capture_output=True, text=True, timeout=300,
                       env=slurm.env(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr
    first = r.stdout.splitlines()[0]
    assert first.startswith("submitted job "), r.stdout
    return first.split()[2].rstrip(":"), r.stdout


def _runs(uri: str):
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    c = MlflowClient(uri)
    exp = c.get_experiment_by_name("smoke")
    return c, c.search_runs([exp.experiment_id], run_view_type=ViewType.ALL, max_results=1000)


def _assert_whole(work: Path, db: str) -> None:
    """The smoke sweep finished once: every trial in MLflow (each (run, metric, step) once, no run RUNNING), in
    results.parquet (each row once), and the report."""
    from sweeps.results import load_results

    client, runs = _runs(db)
    parents = [r for r in runs if r.data.tags.get("mist.role") == "sweep"]
    trials = [r for r in runs if r.data.tags.get("mist.role") == "trial"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(trials) == 2 + 2 * 2 and len({r.data.tags["mist.trial_key"] for r in trials}) == 6
    assert "RUNNING" not in {r.info.status for r in runs}
    for r in trials:  # every (run, metric, step) once
        for key in r.data.metrics:
            steps = [m.step for m in client.get_metric_history(r.info.run_id, key)]
            assert len(steps) == len(set(steps)), (r.info.run_name, key, steps)
        if r.data.tags["phase"] == "seeds":
            assert r.info.status == "FINISHED"
            assert sorted(m.step for m in client.get_metric_history(r.info.run_id, "rmse")) == [3, 6]
    df = load_results(work / "runs" / "smoke")
    assert df.trial.nunique() == 6
    assert not df.duplicated(["trial", "metric", "step"]).any()
    final = df[df.final & (df.phase == "seeds") & (df.metric == "rmse")]
    assert sorted(zip(final.method, final.seed)) == [("mist", 0), ("mist", 1), ("trivial", 0), ("trivial", 1)]
    assert (work / "runs" / "smoke" / "report" / "report.html").is_file()


@pytest.mark.cluster
def test_smoke_sweep_on_slurm_stopped_by_sigterm_and_resumed(slurm, tmp_path):
    from sweeps.results import load_results

    work = tmp_path
    job, printed = _submit(slurm, work, "--no-requeue")
    log = work / "slurm" / "smoke" / f"slurm-{job}.log"
    db = f"sqlite:///{work}/slurm/smoke/mlflow.db"
    assert printed.splitlines()[1:] == [f"log: {log}", f"report: {work}/runs/smoke/report/report.html",
                                        f"MLflow: {db}"]
    # mid-sweep: once the first trial has reported, SIGTERM to the job (its script and every step, as preemption)
    deadline = time.monotonic() + 300
    while "step 3 " not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline and slurm.job(job)["JobState"] in ("PENDING", "RUNNING"), \
            (slurm.job(job), log.read_text() if log.exists() else "no log")
        time.sleep(1)
    slurm.run("scancel", "--signal=TERM", "--full", job)
    info = slurm.wait(job)
    text = log.read_text()
    assert (info["JobState"], info["ExitCode"]) == ("FAILED", "130:0"), text[-3000:]
    assert f"every node joined: {' '.join(slurm.nodes)}" in text  # both Ray nodes, named after the SLURM nodes
    assert "done: KILLED" in text and "continue with: mist-bench slurm" in text
    _, runs = _runs(db)
    assert runs and "RUNNING" not in {r.info.status for r in runs}, [(r.info.run_name, r.info.status) for r in runs]
    try:  # stopped before the end: not every trial has its rows (the first may have none yet)
        assert load_results(work / "runs" / "smoke").trial.nunique() < 6
    except FileNotFoundError:
        pass
    assert slurm.leftovers() == []

    job2, _ = _submit(slurm, work, "--no-requeue", "--resume")
    info = slurm.wait(job2)
    text = (work / "slurm" / "smoke" / f"slurm-{job2}.log").read_text()
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), text[-3000:]
    assert "resuming the Tune experiment" in text and "done: FINISHED" in text
    _assert_whole(work, db)
    assert slurm.leftovers() == []


@pytest.mark.cluster
def test_sigterm_before_the_time_limit_requeues_the_job_and_it_resumes(slurm, tmp_path):
    """SIGTERM to the job's script alone, as `--signal=B:TERM@S` sends it before the time limit: the driver stops
    and closes its runs, the script requeues the job, and its second start resumes the sweep to the end."""
    job, _ = _submit(slurm, tmp_path)  # requeue: on by default
    log = tmp_path / "slurm" / "smoke" / f"slurm-{job}.log"
    deadline = time.monotonic() + 300
    while "step 3 " not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline, log.read_text() if log.exists() else "no log"
        time.sleep(1)
    slurm.run("scancel", "--signal=TERM", "--batch", job)
    info = slurm.wait(job)
    text = log.read_text()
    assert (info["JobState"], info["ExitCode"], info["Restarts"]) == ("COMPLETED", "0:0", "1"), text[-3000:]
    assert "requeued: the next start resumes the sweep" in text and "(start 2)" in text
    assert "done: KILLED" in text and "resuming the Tune experiment" in text and "done: FINISHED" in text
    _assert_whole(tmp_path, f"sqlite:///{tmp_path}/slurm/smoke/mlflow.db")
    assert slurm.leftovers() == []
