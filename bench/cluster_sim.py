"""A simulated cluster sweep: the real sweep driver (sweeps.driver: Optuna + ASHA, then the seeds) over 1,000 trials
of a stand-in trainable on a fake multi-node Ray cluster with 64 GPUs (ray.cluster_utils.Cluster, GPUs declared,
none present), tracked on the MLflow server over PostgreSQL + S3 (bench.stack); Tune's storage on a local folder
(standing in for NFS) or, with --storage s3, on the S3 endpoint.

    python -m bench.cluster_sim [--trials 1000] [--nodes 4] [--gpus-per-node 16] [--report-s 4]
                                [--checkpoint-kb 64] --out bench/measured/cluster-sim.json

The stand-in sleeps and logs like a paper-scale MIST trial (table 1's schedule: 6,250 steps, a report every 625,
ASHA's first rung at 1,250), at a fixed speed of one report every --report-s seconds (a real one reports every
~84 s on an H200: 625 steps of 134 ms): through sweeps.tracking.TrialRun, its run, its params, a metric batch per
report, a figure of a real figure's size at up to 8 evaluations, the predictions file at its end; to Tune, a report
with a checkpoint (--checkpoint-kb, a stand-in: a real paper MIST checkpoint is ~124 MB, counted separately) at
every report. Its learning curve depends on its sampled parameters and seed, so Optuna and ASHA have work to do.

Measured: wall time, trials per minute, the driver's CPU per trial, scheduling delay (a trial created by the
searcher -> its trainable running), GPU utilisation (trial-seconds / (GPUs x wall)), tracking requests per second by
endpoint (the server's access log), storage per trial (PostgreSQL, S3 artifacts, Tune's storage) and CPU seconds
per component (driver, trials, Ray, MLflow server, PostgreSQL, S3): what saturates first. Lost trials: planned
trials without a FINISHED or ASHA-stopped (KILLED) MLflow run, or missing from the tidy results.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import resource
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

__all__ = ["main", "standin"]

SIM_ENV = "MIST_SIM"  # the stand-in's settings (JSON), in the environment the fake nodes inherit
FIGURE_BYTES = 54 * 1024      # a real example figure (figures/step_NNNNNN.png) measured ~54 KB
MAX_FIGURES = 8               # as sweeps.artifacts: example figures at up to 8 evaluations


# --- the stand-in trainable (runs in Ray workers: imports neither torch nor sweeps.spec) -------------------
def _curve(tuned: dict[str, Any], seed: int, step: int, max_steps: int) -> float:
    """A learning curve whose floor depends on the sampled parameters (deterministic in them and the seed)."""
    rng = random.Random(json.dumps(tuned, sort_keys=True, default=str) + str(seed))
    floor = 0.05 + 0.15 * rng.random()
    return floor + 0.25 * math.exp(-4.0 * step / max_steps) + 0.002 * rng.random()


def standin(config: dict[str, Any]) -> None:
    import numpy as np
    from ray import tune

    from sweeps import tracking
    from sweeps.results import write_atomic

    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)  # as sweeps.trial: no line per report
    sim = json.loads(os.environ[SIM_ENV])
    started = time.time()
    spec, tuned = config["spec"], config.get("tuned", {})
    ctx, run = spec["ctx"], spec["run"]
    tctx = tune.get_context()
    trial_id, name = tctx.get_trial_id(), tctx.get_trial_name()
    params = {k: run[k] for k in ("method", "dataset", "task", "scale", "seed")}
    for prefix in ("method", "dataset", "train"):
        params.update({f"{prefix}.{k}": v for k, v in run[f"{prefix}_params" if prefix != "train" else "train"].items()})
    params.update({f"method.{k}": v for k, v in tuned.items()})
    tags = {"method": run["method"], "dataset": run["dataset"], "seed": run["seed"], "phase": spec["phase"],
            "sweep": ctx["name"], "trial_id": trial_id, "scale": run["scale"], "simulated": "true",
            tracking.TAG_SWEEP: ctx["uid"]}
    mlrun = tracking.TrialRun(ctx["tracking_uri"], ctx["experiment_id"], ctx["parent_run_id"],
                              tracking.trial_key(ctx["uid"], trial_id), name, tags, params)
    max_steps, every = int(run["train"]["max_steps"]), int(run["train"]["eval_every"])
    step = 0
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            step = int(json.loads((Path(d) / "step.json").read_text())["step"])
    tmp = Path(tempfile.mkdtemp(prefix="sim-"))
    figure = tmp / "figure.png"
    figure.write_bytes(os.urandom(FIGURE_BYTES))
    n_reports = max_steps // every
    figure_at = {every * (1 + round(i * (n_reports - 1) / (MAX_FIGURES - 1))) for i in range(MAX_FIGURES)}
    finished = False
    try:
        while step < max_steps:
            time.sleep(sim["report_s"])  # "training": 625 steps at the stand-in's fixed speed
            step += every
            rmse = _curve(tuned, run["seed"], step, max_steps)
            final = step >= max_steps
            metrics = {"rmse": rmse, "det_rate": 1 - rmse, "det_rate_all": 1 - rmse, "mean_iou_matched": 0.7,
                       "ap_iou50": 1 - 1.5 * rmse, "ap_iou75": 1 - 2 * rmse, "seconds": step * 0.134,
                       "core_seconds": step * 0.134, "train_loss": rmse ** 2, "train_heat_loss": rmse / 10,
                       "train_kp_loss": rmse / 5}
            mlrun.log_report(metrics, step=step)
            if step in figure_at:
                mlrun.log_file(figure, f"figures/step_{step:06d}")
            if final:
                rng = np.random.default_rng(run["seed"])
                arrays = {"images": rng.random((8, 1, 80, 80), dtype=np.float32), "gt_counts": np.full(8, 9),
                          "gt_boxes": rng.random((8, 9, 4)) * 80, "boxes": rng.random((8, 9, 4)) * 80,
                          "scores": rng.random((8, 9)), "recon": rng.random((8, 1, 80, 80)).astype(np.float16)}
                npz = tmp / "predictions.npz"
                np.savez_compressed(npz, **arrays)
                mlrun.log_file(npz, "predictions")
                write_atomic("/".join([ctx["trials_dir"], name, "predictions.npz"]), npz.read_bytes())
                mlrun.finish("FINISHED")
                finished = True
            with tempfile.TemporaryDirectory() as d:
                (Path(d) / "step.json").write_text(json.dumps({"step": step}))
                (Path(d) / "state.bin").write_bytes(os.urandom(sim["checkpoint_kb"] * 1024))
                tune.report({**metrics, "step": float(step), "final": float(final), "sim_started": started},
                            checkpoint=tune.Checkpoint.from_directory(d))
    except SystemExit:  # stopped by ASHA at a report
        if not finished:
            mlrun.set_tags({"mist.stopped_by": "tune"})
            mlrun.finish("KILLED")
        raise
    except BaseException:
        if not finished:
            mlrun.finish("FAILED")
        raise


# --- measuring ---------------------------------------------------------------------------------------------
class CpuSampler(threading.Thread):
    """CPU seconds per component, from /proc every `every_s` (a process that lives less than that is missed)."""

    def __init__(self, classify, every_s: float = 2.0):
        super().__init__(daemon=True)
        self.classify, self.every_s = classify, every_s
        self.last: dict[int, tuple[str, float]] = {}
        self.total: dict[str, float] = defaultdict(float)
        self.peak: dict[str, float] = defaultdict(float)   # the busiest interval's CPU-s/s per component
        self.stop = threading.Event()
        self.tick = os.sysconf("SC_CLK_TCK")

    def sample(self) -> dict[str, float]:
        per: dict[str, float] = defaultdict(float)
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            pid = int(d)
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            f = stat[stat.rindex(")") + 2:].split()
            cpu = (int(f[11]) + int(f[12])) / self.tick
            comp = self.classify(pid, cmd, int(f[2]))
            if comp is None:
                continue
            prev = self.last.get(pid)
            per[comp] += cpu - (prev[1] if prev else cpu)  # a new process: counted from now
            self.last[pid] = (comp, cpu)
        return per

    def run(self) -> None:
        self.sample()
        t = time.monotonic()
        while not self.stop.wait(self.every_s):
            per = self.sample()
            dt = time.monotonic() - t
            t = time.monotonic()
            for k, v in per.items():
                self.total[k] += v
                self.peak[k] = max(self.peak[k], v / dt)


def _classifier(driver_pid: int, server_pgid: int):
    def classify(pid: int, cmd: str, pgid: int) -> str | None:
        if pid == driver_pid:
            return "driver"
        if pgid == server_pgid:
            return "mlflow_server"
        if "postgres" in cmd.split(" ")[0] or cmd.startswith("postgres:"):
            return "postgres"
        if "moto_server" in cmd:
            return "s3_moto"
        if cmd.startswith("ray::") and not cmd.startswith(("ray::DashboardAgent", "ray::RuntimeEnvAgent",
                                                            "ray::IDLE")):
            return "trials"
        if any(x in cmd for x in ("gcs_server", "raylet", "ray::", "ray/_private", "dashboard", "log_monitor",
                                  "monitor.py", "ray/autoscaler")):
            return "ray_system"
        return None
    return classify


def _requests(log_dir: Path) -> Counter:
    """Requests per (method path, status) in the MLflow server's access log."""
    n: Counter = Counter()
    for log in log_dir.glob("mlflow-*.log"):
        for line in log.read_text(errors="replace").splitlines():
            if '"' not in line or "HTTP/" not in line:
                continue
            try:
                req = line.split('"')[1]
                method, path = req.split(" ")[:2]
                status = line.split('"')[2].split()[0]
            except (IndexError, ValueError):
                continue
            path = path.split("?")[0]
            if path.startswith("/api/2.0/mlflow-artifacts/artifacts/"):
                path = "/api/2.0/mlflow-artifacts/artifacts/..."
            n[f"{method} {path} {status}"] += 1
    return n


def _timing_callback(base):
    """The driver's progress callback, also recording when each trial is created, started and first reports."""
    class Timed(base):
        times: dict[str, dict[str, float]] = defaultdict(dict)

        seen = 0

        def on_step_end(self, iteration, trials, **info):  # trials the searcher created since: "added" now
            now = time.time()
            for trial in trials[Timed.seen:]:
                Timed.times[trial.trial_id].setdefault("added", now)
            Timed.seen = len(trials)
            super().on_step_end(iteration, trials, **info)

        def setup(self, **kwargs):
            Timed.seen = 0  # a new experiment (the seeds phase): a new list of trials
            super().setup(**kwargs)

        def on_trial_start(self, iteration, trials, trial, **info):
            Timed.times[trial.trial_id].setdefault("started", time.time())

        def on_trial_result(self, iteration, trials, trial, result, **info):
            t = Timed.times[trial.trial_id]
            t.setdefault("running", result.get("sim_started", math.nan))
            t["last_result"] = time.time()
            t["reports"] = t.get("reports", 0) + 1
            super().on_trial_result(iteration, trials, trial, result, **info)
    return Timed


def _pct(xs: list[float], q: float) -> float | None:
    xs = sorted(x for x in xs if math.isfinite(x))
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))] if xs else None


def simulate(a: argparse.Namespace) -> dict[str, Any]:
    import psycopg
    import yaml
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient
    from ray.cluster_utils import Cluster

    import sweeps.driver as driver
    from bench.stack import local_stack
    from sweeps.results import load_results
    from sweeps.run import main as sweep_main

    n_seeds = 3
    num_samples = a.trials - n_seeds
    cfg = {"name": "sim", "task": "recon", "scale": "paper", "datasets": ["mnist_hard"], "methods": ["mist"],
           "seeds": list(range(n_seeds)), "budget": {"max_steps": 6250},
           "search": {"num_samples": num_samples, "metric": "rmse", "mode": "min"},
           "scheduler": {"type": "asha", "grace_period": 1250, "reduction_factor": 3},
           "resources": {"cpu": 1, "gpu": 1}, "max_failures": 1}
    os.environ[SIM_ENV] = json.dumps({"report_s": a.report_s, "checkpoint_kb": a.checkpoint_kb})
    # the fake nodes' workers import bench.cluster_sim (the stand-in) from this checkout
    os.environ["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parent.parent),
                                                os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    driver.trainable = standin                        # the driver's trainable, replaced by the stand-in
    timed = _timing_callback(driver.SweepProgress)
    driver.SweepProgress = timed
    out: dict[str, Any] = {"settings": {**vars(a), "planned_trials": a.trials, "config": cfg}}
    with local_stack(workers=a.server_workers) as st, tempfile.TemporaryDirectory() as tmp:
        cfg_path = Path(tmp) / "sim.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg))
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "num_gpus": 0,
                                                                "include_dashboard": False})
        try:
            for _ in range(a.nodes):
                cluster.add_node(num_cpus=a.gpus_per_node, num_gpus=a.gpus_per_node)
            with psycopg.connect(st.pg.uri) as db:
                db_bytes0 = db.execute("select pg_database_size('mlflow')").fetchone()[0]
            sampler = CpuSampler(_classifier(os.getpid(), st.server.procs[0].pid))
            sampler.start()
            ru0 = resource.getrusage(resource.RUSAGE_SELF)
            t0 = time.time()
            storage = f"s3://{st.bucket}/sweeps" if a.storage == "s3" else str(Path(tmp) / "sweeps")
            argv = [str(cfg_path), "--storage", storage, "--tracking-uri", st.url, "--address", cluster.address]
            if a.profile:  # where the driver's CPU goes (cProfile of this thread: Tune's loop, the callbacks)
                import cProfile
                import pstats

                prof = cProfile.Profile()
                code = prof.runcall(sweep_main, argv)
                prof.dump_stats(a.profile)
                stats = pstats.Stats(a.profile).stats  # (file, line, name) -> (.., .., tottime, cumtime, ..)
                picked = {("experiment_state.py", "wait_for_sync"), ("experiment_state.py", "sync_up_experiment_state"),
                          ("tune_controller.py", "step"), ("progress.py", "_flush"), ("progress.py", "_close"),
                          ("progress.py", "on_trial_result"), ("storage.py", "_delete_fs_path"),
                          ("results.py", "write_atomic")}
                out["driver_profile_cumulative_s"] = {f"{Path(k[0]).name}:{k[2]}": round(v[3], 2)
                                                      for k, v in stats.items() if (Path(k[0]).name, k[2]) in picked}
            else:
                code = sweep_main(argv)
            wall = time.time() - t0
            ru1 = resource.getrusage(resource.RUSAGE_SELF)
            sampler.stop.set()
            sampler.join()
        finally:
            cluster.shutdown()
        driver_cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)

        # what landed: MLflow runs (PostgreSQL), tidy rows and the Tune experiments (S3)
        client = MlflowClient(st.url)
        exp = client.get_experiment_by_name("sim")
        runs, token = [], None
        while True:
            page = client.search_runs([exp.experiment_id], run_view_type=ViewType.ALL, max_results=1000,
                                      page_token=token)
            runs += list(page)
            token = page.token
            if not token:
                break
        trials = [r for r in runs if r.data.tags.get("mist.role") == "trial"]
        statuses = Counter(r.info.status for r in trials)
        rows = load_results(f"{storage}/sim")
        with psycopg.connect(st.pg.uri) as db:
            db_bytes = db.execute("select pg_database_size('mlflow')").fetchone()[0]
            metric_rows = db.execute("select count(*) from metrics").fetchone()[0]
        objects = st.s3_objects()
        artifacts = sum(v for k, v in objects.items() if k.startswith("mlflow/"))
        tune_bytes = sum(v for k, v in objects.items() if k.startswith("sweeps/")) + sum(
            p.stat().st_size for p in Path(tmp, "sweeps").rglob("*") if p.is_file())
        requests = _requests(st.folder / "logs")

    times = timed.times
    delays = [t["running"] - t["added"] for t in times.values() if "running" in t and "added" in t]
    trial_seconds = [t["last_result"] - t["running"] for t in times.values() if "running" in t]
    n_gpus = a.nodes * a.gpus_per_node
    total_requests = sum(requests.values())
    out.update({
        "exit_code": code, "wall_s": wall, "trials_started": len(times), "mlflow_trial_runs": len(trials),
        "mlflow_status": dict(statuses), "trials_in_results": int(rows.trial.nunique()),
        "lost_trials": a.trials - sum(statuses.get(s, 0) for s in ("FINISHED", "KILLED")),
        "trials_per_minute": 60 * len(times) / wall,
        "driver_cpu_s": driver_cpu, "driver_cpu_s_per_trial": driver_cpu / max(1, len(times)),
        "driver_cpu_busy": driver_cpu / wall,
        "scheduling_delay_s": {"p50": _pct(delays, .5), "p95": _pct(delays, .95), "max": _pct(delays, 1.0)},
        "reports": sum(t.get("reports", 0) for t in times.values()),
        "gpu_utilisation": sum(trial_seconds) / (n_gpus * wall), "gpus": n_gpus,
        "tracking_requests": total_requests, "tracking_requests_per_s": total_requests / wall,
        "tracking_requests_by_endpoint": dict(requests.most_common()),
        # a 404 of experiments/get-by-name is the driver asking whether the experiment exists yet
        "tracking_errors": sum(v for k, v in requests.items() if not k.endswith((" 200", " 201"))
                               and k != "GET /api/2.0/mlflow/experiments/get-by-name 404"),
        "metric_rows": metric_rows,
        "storage_bytes_per_trial": {"postgres": (db_bytes - db_bytes0) / a.trials, "s3_artifacts": artifacts / a.trials,
                                    "tune": tune_bytes / a.trials},
        "cpu_s_by_component": dict(sampler.total), "peak_cpu_per_s_by_component": dict(sampler.peak),
        "real_checkpoint_bytes_paper_mist_recon": 124_241_293,
        "compression": 84.0 / a.report_s,  # a real report every ~84 s (625 steps x 134 ms on an H200)
    })
    return out


def main(argv: list[str] | None = None) -> int:
    from sweeps.command import Parser, run_command

    ap = Parser(prog="python -m bench.cluster_sim", description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=1000, help="trials in all (3 of them the seeds phase)")
    ap.add_argument("--nodes", type=int, default=4, help="fake worker nodes")
    ap.add_argument("--gpus-per-node", type=int, default=16, help="fake GPUs (and CPUs) per node")
    ap.add_argument("--report-s", type=float, default=4.0, help="seconds between a stand-in's reports")
    ap.add_argument("--checkpoint-kb", type=int, default=64, help="KiB of each stand-in checkpoint")
    ap.add_argument("--server-workers", type=int, default=4)
    ap.add_argument("--storage", choices=["local", "s3"], default="local",
                    help="Tune's storage: a local folder (standing in for a shared filesystem) or the S3 endpoint")
    ap.add_argument("--profile", help="also write a cProfile of the driver here (pstats)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--debug", action="store_true")
    a = ap.parse_args(argv)
    return run_command(lambda: _run(a, argv), a.debug)


def _run(a: argparse.Namespace, argv: list[str] | None) -> int:
    from bench.cli import write_json_atomic
    from bench.machine import machine_info
    from bench.stack import missing
    from sweeps.command import CommandError, writable_file

    writable_file(a.out, "--out")
    if a.trials < 4 or a.nodes < 1 or a.gpus_per_node < 1 or a.report_s <= 0:
        raise CommandError("--trials >= 4, --nodes >= 1, --gpus-per-node >= 1, --report-s > 0")
    lacks = missing()
    if lacks:
        raise CommandError(lacks)
    machine = machine_info("cpu")
    result = simulate(a)
    command = ["python", "-m", "bench.cluster_sim", *(sys.argv[1:] if argv is None else argv)]
    write_json_atomic(a.out, {"command": command, "machine": machine, **result})
    print(f"[cluster_sim] {result['trials_started']} trials in {result['wall_s']:.0f} s "
          f"({result['trials_per_minute']:.1f}/min), lost {result['lost_trials']}, driver "
          f"{result['driver_cpu_s_per_trial']:.2f} CPU-s/trial, {result['tracking_requests_per_s']:.1f} tracking "
          f"requests/s; wrote {a.out}", file=sys.stderr)
    return 0 if result["lost_trials"] == 0 and result["exit_code"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
