"""Run a sweep config with Ray Tune; every trial is an MLflow run and tidy parquet rows.

    python -m sweeps.run sweeps/configs/smoke.yaml [--resume | --fresh] [--storage DIR] [--tracking-uri URI]

Protocol, per (dataset, method) cell of the config:
  phase 1 "search"  `search.num_samples` Optuna trials on the search seed, ASHA stopping the weak ones early
                    (skipped when num_samples == 1 or the method has nothing to search: its defaults are used);
                    the best trial's parameters go to storage/<sweep>/best/<dataset>__<method>.json.
  phase 2 "seeds"   the chosen parameters re-run on every seed, all cells in one Tune experiment (a grid over
                    cell x seed), no early stopping: these are the rows the tables use.
One Tune experiment per search cell (storage/<sweep>/search-<dataset>-<method>) and one for the seeds
(storage/<sweep>/seeds). Each trial checkpoints `Trainer.state_dict()` at every report (at most every
`checkpoint_interval_s`); a failed trial is retried from its checkpoint (max_failures); an interrupted sweep (Ctrl-C,
SIGTERM, a crash, failed trials) continues with --resume: finished trials are kept, unfinished and errored ones
resume from their last checkpoint, each in its own MLflow run. A changed config refuses to resume.

Ray: with --address, inside a submitted job (RAY_ADDRESS set), or on the head of a `ray up` cluster (`ray submit`),
ray.init() joins that cluster; otherwise a private local instance is started (num_cpus = --num-cpus or all cores),
never someone else's `ray start` cluster on the same machine.
Test hook: MIST_SWEEP_FAULT="method=mist,phase=seeds,seed=1,step=3" in the driver's environment makes the matching
trials raise after reporting that step, on their first attempt only (used by the resume and retry tests).
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from ray.tune import Callback

from mist_core.config import ConfigError
from sweeps import tracking
from sweeps.config import Cell, Plan, SweepConfig, load_sweep, plan
from sweeps.results import RESULTS_FILE, ResultsWriter, read_bytes, report_rows, write_atomic

__all__ = ["main", "trainable", "run_sweep"]

log = logging.getLogger("sweeps")
SWEEP_FILE = "sweep.json"
SEEDS_EXPERIMENT = "seeds"
FAULT_ENV = "MIST_SWEEP_FAULT"
PROGRESS_EVERY_S = 30.0  # a trial's progress line at most this often (its first and final reports always)
_ACTIVE: dict[str, dict[str, Any]] = {}  # results path -> the running sweep's info, for restored callbacks


# ======================================================================================================
# The trainable: one trial = one Trainer run, in a Ray worker
# ======================================================================================================
def trial_run_config(config: dict[str, Any]) -> dict[str, Any]:
    """The RunConfig (as a dict) of a trial's Tune config."""
    cell = config["cell"]
    run = copy.deepcopy(cell["run"])
    run["method_params"] = {**run["method_params"], **cell.get("best", {}), **config.get("tuned", {})}
    if "seed" in config:
        run["seed"] = config["seed"]
    return run


def trainable(config: dict[str, Any]) -> None:
    import torch
    from ray import tune

    from mist_core.train import Trainer, resolve

    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)  # "Checkpoint created" per report
    ctx, cell, phase = config["ctx"], config["cell"], config["phase"]
    resolved = resolve(trial_run_config(config))
    run = resolved.run
    tctx = tune.get_context()
    trial_id = tctx.get_trial_id()
    tags = {"method": run.method, "dataset": run.dataset, "table": ctx["table"], "seed": run.seed,
            "scale": run.scale, "task": run.task, "phase": phase, "sweep": ctx["sweep"], "trial_id": trial_id,
            "code_version": ctx["code_version"], "data_hash": cell["data_hash"]}
    mlrun = tracking.TrialRun(ctx["tracking_uri"], ctx["experiment_id"], ctx["parent_run_id"],
                              f"{ctx['sweep_uid']}/{trial_id}", tctx.get_trial_name(), tags, resolved.as_params())
    fault = _fault(ctx.get("fault"), run, phase, mlrun.attempts)
    final: dict[str, float] = {}
    finished = False

    last_ckpt = [-math.inf]

    def report(metrics: dict[str, float], trainer) -> None:
        if not metrics["final"] and time.monotonic() - last_ckpt[0] < ctx.get("checkpoint_interval_s", 0):
            tune.report(metrics)  # too soon after the previous checkpoint (fast methods report very often)
            return
        with tempfile.TemporaryDirectory() as d:
            torch.save(trainer.state_dict(), Path(d) / "state.pt")
            last_ckpt[0] = time.monotonic()
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))

    def on_report(rep: dict[str, float], trainer) -> None:
        metrics = {k: float(v) for k, v in rep.items()}
        metrics.setdefault("final", 0.0)
        mlrun.log_report(metrics, step=int(metrics["step"]))
        if metrics["final"]:
            final.update(metrics)  # reported to Tune after the artifacts are safe (Tune may stop us at any report)
            return
        report(metrics, trainer)
        if fault is not None and int(metrics["step"]) >= fault:
            raise RuntimeError(f"{FAULT_ENV}: failing on purpose after step {int(metrics['step'])}")

    try:
        trainer = Trainer(resolved)
        ckpt = tune.get_checkpoint()
        if ckpt is not None:
            with ckpt.as_directory() as d:
                trainer.load_state_dict(torch.load(Path(d) / "state.pt", weights_only=True))
        result = trainer.run(on_report, progress=False)
        if result.example is not None:
            n = result.example.boxes.shape[0]
            score = ", ".join(f"{k}={final[k]:.4g}" for k in ("rmse", "det_rate", "both") if k in final)
            title = f"{run.method} on {run.dataset}, seed {run.seed}, step {trainer.step}: {score}"
            tracking.log_outputs(mlrun, result.example, trainer.splits.test.subset(n), title)
        shown = ", ".join(f"{k}={v:.4g}" for k, v in final.items() if k not in ("step", "final", "seconds",
                                                                                 "core_seconds"))
        mlrun.set_tags({tracking.NOTE: f"**{run.method}** on **{run.dataset}**, seed {run.seed}, phase {phase} "
                                       f"(Tune trial {tctx.get_trial_name()}), {trainer.step} steps, "
                                       f"{trainer.train_seconds:.1f} s of training.\n\nFinal test metrics: {shown}."
                                       "\n\nArtifacts: figures/examples.png (inputs with ground truth, "
                                       "detections, reconstructions), predictions/predictions.npz."})
        mlrun.finish("FINISHED")
        finished = True
        report(final, trainer)
    except SystemExit:  # Tune stopped the trial at a report (ASHA, or the sweep is shutting down)
        if not finished:
            mlrun.set_tags({"mist.stopped_by": "tune"})  # ASHA, or the sweep shutting down
            mlrun.finish("KILLED")
        raise
    except BaseException:
        if not finished:
            mlrun.finish("FAILED")
        raise


def _fault(spec: str | None, run, phase: str, attempt: int) -> int | None:
    if not spec or attempt > 1:
        return None
    want = dict(kv.split("=", 1) for kv in spec.split(",") if "=" in kv)
    have = {"method": run.method, "dataset": run.dataset, "phase": phase, "seed": str(run.seed)}
    if any(have.get(k) != v for k, v in want.items() if k != "step"):
        return None
    return int(want.get("step", "1"))


def trial_name(trial) -> str:
    c = trial.config
    run = c["cell"]["run"]
    return f"{c['phase']}-{run['dataset']}-{run['method']}-s{c.get('seed', run['seed'])}-{trial.trial_id}"


# ======================================================================================================
# Driver side: progress lines, tidy rows, MLflow backstop
# ======================================================================================================
def _tune_keys() -> set[str]:
    import ray.tune.result as r

    keys = {v for k, v in vars(r).items() if k.isupper() and isinstance(v, str)}
    return keys | set(r.AUTO_RESULT_KEYS) | {"date", "time_since_restore", "iterations_since_restore",
                                            "timesteps_since_restore", "checkpoint_dir_name", "experiment_id"}


class SweepProgress(Callback):
    """One line per trial report; tidy rows to results.parquet; no trial run left RUNNING in MLflow.

    Tune pickles its callbacks with the experiment and restores them on Tuner.restore, so all live state is
    rebuilt in setup() from the files beside the sweep."""

    def __init__(self, info: dict[str, Any]):
        self.info = info

    def __getstate__(self):
        return {"info": self.info}

    def __setstate__(self, state):
        self.info = state["info"]

    def setup(self, **kwargs):
        self.info = _ACTIVE.get(self.info["results_path"], self.info)  # this driver's, after a restore
        self.writer = ResultsWriter(self.info["results_path"])
        self.skip = _tune_keys()
        self.meta: dict[str, dict[str, Any]] = {}
        self.last_flush = time.monotonic()
        self.last: dict[str, dict[str, float]] = {}
        self.said: dict[str, float] = {}

    def _meta(self, trial) -> dict[str, Any]:
        if trial.trial_id not in self.meta:
            from mist_core.train import resolve

            run = trial_run_config(trial.config)
            try:
                params = json.dumps(resolve(run).as_params(), sort_keys=True, default=str)
            except Exception as e:  # noqa: BLE001 - the trial itself will report the error
                params = json.dumps({"error": str(e)})
            self.meta[trial.trial_id] = dict(
                sweep=self.info["sweep"], trial=str(trial), phase=trial.config["phase"], method=run["method"],
                dataset=run["dataset"], table=self.info["table"], task=run["task"], scale=run["scale"],
                seed=int(run["seed"]), params_json=params)
        return self.meta[trial.trial_id]

    def on_trial_result(self, iteration, trials, trial, result, **info):
        rep = {k: float(v) for k, v in result.items() if k not in self.skip and isinstance(v, (int, float))
               and not isinstance(v, bool)}
        if "step" not in rep:
            return
        m = self._meta(trial)
        self.last[trial.trial_id] = rep
        self.writer.add(report_rows(m, rep, result.get("time_total_s", math.nan)))
        if time.monotonic() - self.last_flush > 10:
            self._flush()
        now = time.monotonic()
        if rep.get("final") or now - self.said.get(trial.trial_id, -math.inf) >= PROGRESS_EVERY_S:
            self.said[trial.trial_id] = now
            metric = self.info["metric"]
            shown = f"{metric}={rep[metric]:.4g}" if metric in rep else ""
            tag = "final" if rep.get("final") else f"step {int(rep['step'])}"
            _say(self.info, f"{m['phase']:6s} {m['dataset']}/{m['method']} s{m['seed']} {trial.trial_id}: "
                            f"{tag} {shown} ({result.get('time_total_s', 0):.1f} s)")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._flush()
        done = self.last.get(trial.trial_id, {}).get("final") or (trial.last_result or {}).get("final")
        self._close(trial, "FINISHED" if done else "KILLED")
        if not done:
            _say(self.info, f"stopped early: {trial}")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._flush()
        self._close(trial, "FAILED")
        err = (trial.error_file or "").strip()
        _say(self.info, f"FAILED: {trial} (error: {err or 'see the Tune log'})")

    def on_experiment_end(self, trials, **info):
        self._flush(force=True)

    def _flush(self, force: bool = False):
        self.writer.flush(force=force)
        self.last_flush = time.monotonic()

    def _close(self, trial, status: str):
        try:
            tracking.terminate_if_running(self.info["tracking_uri"], self.info["experiment_id"],
                                          f"{self.info['sweep_uid']}/{trial.trial_id}", status)
        except Exception as e:  # noqa: BLE001 - the final sweep close retries
            log.warning("could not update the MLflow run of %s: %s", trial, e)


def _say(info: dict[str, Any], msg: str) -> None:
    elapsed = time.time() - info.get("t0", time.time())
    print(f"[{info['sweep']} {int(elapsed) // 60:02d}:{int(elapsed) % 60:02d}] {msg}", flush=True)


# ======================================================================================================
# The sweep
# ======================================================================================================
def to_tune_domain(dom):
    from ray import tune

    from mist_core.method import Choice, IntRange, LogUniform, Uniform

    if isinstance(dom, LogUniform):
        return tune.loguniform(dom.low, dom.high)
    if isinstance(dom, Uniform):
        return tune.uniform(dom.low, dom.high)
    if isinstance(dom, IntRange):
        return tune.randint(dom.low, dom.high + 1)  # Tune's upper bound is exclusive, IntRange's inclusive
    if isinstance(dom, Choice):
        return tune.choice(list(dom.values))
    raise TypeError(f"not a search domain: {dom!r}")


def _in_domain(value, dom) -> bool:
    from mist_core.method import Choice, IntRange, LogUniform, Uniform

    if isinstance(dom, (LogUniform, Uniform, IntRange)):
        return isinstance(value, (int, float)) and dom.low <= value <= dom.high
    if isinstance(dom, Choice):
        return value in list(dom.values)
    return False


def code_version() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty", "--tags"],
                             capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    import mist_core

    return f"mist-bench {mist_core.__version__}"


def _storage_root(storage: str) -> str:
    return storage if "://" in storage else str(Path(os.path.expanduser(storage)).resolve())


def _join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts])


class Interrupted(Exception):
    pass


def _sigterm(signum, frame):
    raise KeyboardInterrupt("SIGTERM")


class Sweep:
    def __init__(self, p: Plan, args: argparse.Namespace):
        self.plan, self.cfg, self.args = p, p.sweep, args
        self.root = _storage_root(args.storage or self.cfg.storage)
        self.dir = _join(self.root, self.cfg.name)
        self.errors: list[str] = []

    # --- sweep state beside the Tune experiments ---------------------------------------------------------
    def _read_json(self, *parts: str) -> dict | None:
        blob = read_bytes(_join(self.dir, *parts))
        return None if blob is None else json.loads(blob)

    def _write_json(self, data: dict, *parts: str) -> None:
        write_atomic(_join(self.dir, *parts), json.dumps(data, indent=2, sort_keys=True).encode())

    def _open_state(self) -> dict[str, Any]:
        state = self._read_json(SWEEP_FILE)
        want = self.cfg.canonical()
        if state is not None and not self.args.resume:
            if not self.args.fresh:
                raise ConfigError(f"sweep {self.cfg.name!r} already exists at {self.dir} (started "
                                  f"{state.get('created', '?')}): pass --resume to continue it, or --fresh to "
                                  "discard it and start over")
            self._discard()
            state = None
        if state is not None:
            old = {k: v for k, v in state["config"].items() if k not in ("storage", "tracking_uri")}
            new = {k: v for k, v in want.items() if k not in ("storage", "tracking_uri")}
            changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
            if changed:
                raise ConfigError(f"cannot resume sweep {self.cfg.name!r} at {self.dir}: the config changed "
                                  f"({', '.join(changed)}); restore the old config, or use --fresh / another name")
            uri = self.args.tracking_uri and tracking.absolute_uri(self.args.tracking_uri)
            if uri and uri != state["tracking_uri"]:
                raise ConfigError(f"cannot resume sweep {self.cfg.name!r}: it logs to {state['tracking_uri']}, "
                                  f"not {uri} (its trials' MLflow runs live there)")
            return state
        if self.args.resume:
            _say(self._info(), f"nothing to resume at {self.dir}: starting the sweep")
        uri = tracking.absolute_uri(self.args.tracking_uri or self.cfg.tracking_uri)
        return {"uid": uuid.uuid4().hex[:12], "created": time.strftime("%Y-%m-%d %H:%M:%S"), "config": want,
                "tracking_uri": uri, "code_version": code_version()}

    def _discard(self) -> None:
        if "://" in self.dir:
            import pyarrow.fs as pafs

            fs, p = pafs.FileSystem.from_uri(self.dir)
            fs.delete_dir(p)
        else:
            shutil.rmtree(self.dir)

    def _info(self) -> dict[str, Any]:
        return {"sweep": self.cfg.name, "t0": getattr(self, "t0", time.time())}

    def _warn_if_temporary(self) -> None:
        """In a `ray job submit --working-dir` job the cwd is a temporary copy: relative paths die with the job."""
        if "runtime_resources" not in os.getcwd():
            return
        rel = lambda p: "://" not in p and not os.path.isabs(os.path.expanduser(p))  # noqa: E731
        if not self.args.storage and rel(self.cfg.storage):
            log.warning("storage %r is inside this job's temporary working dir: pass --storage /shared/dir or "
                        "s3://... to keep the sweep", self.cfg.storage)
        uri = self.args.tracking_uri or self.cfg.tracking_uri
        if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
            log.warning("MLflow store %s is inside this job's temporary working dir: pass --tracking-uri "
                        "http://{head_ip}:5000 (ray_cluster.yaml starts that server) or an absolute sqlite path", uri)

    def _resume_command(self) -> str:
        argv = [a for a in getattr(self.args, "argv", [self.args.config]) if a not in ("--resume", "--fresh")]
        return "python -m sweeps.run " + " ".join(argv + ["--resume"])

    def _note(self) -> str:
        c = self.cfg
        table = f"paper Table {c.table}" if c.table else "not a paper table"
        return (f"mist-bench sweep **{c.name}** ({table}): task {c.task}, scale {c.scale}; methods "
                f"{', '.join(c.methods)} on {', '.join(c.datasets)}; seeds {list(c.seeds)}.\n\n"
                f"Protocol: per (dataset, method), {c.search.num_samples} Optuna trial(s) on seed {c.search.seed} "
                f"(runs named `search-...`; skipped without a search space), then the best config on every seed "
                f"(runs named `seeds-...`: the ones tables use). Metric {c.search.metric} ({c.search.mode}). "
                f"Tidy rows: {self.dir}/{RESULTS_FILE}")

    # --- run ---------------------------------------------------------------------------------------------
    def run(self) -> int:
        self.t0 = time.time()
        self._warn_if_temporary()
        state = self._open_state()
        import ray

        cwd = os.getcwd()
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _sigterm)  # e.g. `ray job stop`: close the MLflow runs on the way out
        started_ray = _init_ray(self.args)
        try:
            os.getcwd()
        except FileNotFoundError:
            # measured: in a `ray job submit --working-dir` job, ray.init() unpacks the working dir afresh, so the
            # driver's cwd is a deleted directory (MLflow's getcwd() then fails); the same path exists again
            os.chdir(cwd)
        try:
            return self._run(state)
        finally:
            if started_ray:
                ray.shutdown()

    def _run(self, state: dict[str, Any]) -> int:
        import ray

        uri = state["tracking_uri"].replace("{head_ip}", ray.util.get_node_ip_address())
        _warn_if_unshared(uri, self.root)
        n_nodes = len([n for n in ray.nodes() if n.get("Alive")])
        _say(self._info(), f"{len(self.plan.cells)} cells, {self.plan.n_trials()} trials; Ray: {n_nodes} node(s), "
                           f"{ray.cluster_resources().get('CPU', 0):g} CPU, {ray.cluster_resources().get('GPU', 0):g} "
                           f"GPU; storage {self.dir}; MLflow {uri}")
        experiment_id = tracking.prepare(uri, self.cfg.name)
        tracking.describe_experiment(uri, experiment_id, self._note())
        state["experiment_id"] = experiment_id
        self._write_json(state, SWEEP_FILE)
        parent = tracking.open_sweep_run(uri, experiment_id, state["uid"], self.cfg.name,
                                         tags={"table": self.cfg.table, "scale": self.cfg.scale,
                                               "task": self.cfg.task, "code_version": state["code_version"],
                                               "storage": self.dir, tracking.NOTE: self._note()},
                                         params=_flat(self.cfg.canonical()))
        self.ctx = {"sweep": self.cfg.name, "sweep_uid": state["uid"], "table": self.cfg.table,
                    "tracking_uri": uri, "experiment_id": experiment_id, "parent_run_id": parent,
                    "code_version": state["code_version"], "fault": os.environ.get(FAULT_ENV),
                    "checkpoint_interval_s": self.cfg.checkpoint_interval_s}
        self.info = {**self._info(), "t0": self.t0, "table": self.cfg.table, "metric": self.cfg.search.metric,
                     "results_path": _join(self.dir, RESULTS_FILE), "tracking_uri": uri,
                     "experiment_id": experiment_id, "sweep_uid": state["uid"]}
        _ACTIVE[self.info["results_path"]] = self.info
        status, code = "FAILED", 1
        try:
            best = {}
            for cell in self.plan.cells:
                best[cell.key] = self._search(cell) if self.plan.needs_search(cell) else {}
                if best[cell.key] is None:
                    break
            if not self.errors:
                self._seeds(best)
            if self.errors:
                _say(self.info, "some trials failed:\n  " + "\n  ".join(self.errors) +
                     f"\nfix the cause, then continue with: {self._resume_command()}")
            else:
                status, code = "FINISHED", 0
                table = self._summary()
                if table is not None:
                    self._log_summary(uri, parent, table)
        except (KeyboardInterrupt, Interrupted) as e:
            status, code = "KILLED", 130
            _say(self.info, f"interrupted ({e or 'Ctrl-C'}): continue with {self._resume_command()}")
        finally:
            closed = tracking.close_sweep_run(uri, experiment_id, state["uid"], parent, status)
            if closed:
                _say(self.info, f"{closed} trial run(s) left RUNNING by killed trials marked KILLED in MLflow")
        ui = (f"mlflow ui --backend-store-uri {uri}, then http://127.0.0.1:5000/#/experiments/{experiment_id}"
              "?workflowType=machine_learning" if not uri.startswith("http") else
              f"{uri}/#/experiments/{experiment_id}?workflowType=machine_learning")
        _say(self.info, f"done: {status}. Tidy results: {self.info['results_path']}. MLflow: {ui}")
        return code

    # --- the two phases ----------------------------------------------------------------------------------
    def _tuner(self, name: str, param_space: dict, tune_config) -> Any:
        from ray import tune

        path = _join(self.dir, name)
        fn = tune.with_resources(trainable, {"cpu": self.cfg.resources.cpu, "gpu": self.cfg.resources.gpu})
        if tune.Tuner.can_restore(path):
            try:
                _say(self.info, f"{name}: resuming the Tune experiment at {path}")
                return tune.Tuner.restore(path, trainable=fn, resume_errored=True)
            except FileNotFoundError as e:  # interrupted before anything was saved: start it again
                _say(self.info, f"{name}: nothing restorable ({e}); starting it afresh")
        run_config = tune.RunConfig(
            name=name, storage_path=self.dir, verbose=0,
            callbacks=[SweepProgress(self.info)],
            failure_config=tune.FailureConfig(max_failures=self.cfg.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1))
        return tune.Tuner(fn, param_space=param_space, tune_config=tune_config, run_config=run_config)

    def _fit(self, name: str, tuner, every_trial_ends: bool) -> Any:
        """Run a Tune experiment; record errored trials; raise Interrupted if it was stopped (Ctrl-C)."""
        before = signal.getsignal(signal.SIGINT)
        t0 = time.perf_counter()
        grid = tuner.fit()
        wall = time.perf_counter() - t0
        caught = _tune_caught_sigint(before)
        last = [r.metrics or {} for r in grid]
        trial_wall = sum(m.get("time_total_s", 0.0) for m in last)
        train = sum(m.get("seconds", 0.0) for m in last)
        _say(self.info, f"{name}: {len(grid)} trials in {wall:.1f} s wall; the trials' own time {trial_wall:.1f} s "
                        f"(of which training steps {train:.1f} s)")
        errors = [f"{name}: {r.path}: {type(r.error).__name__}: {str(r.error).strip().splitlines()[-1:]}"
                  for r in grid if r.error is not None]
        self.errors += errors
        # Trial statuses are not trustworthy here (Tune's cleanup marks interrupted trials TERMINATED), so:
        # a trial that was not stopped by a scheduler must have made its final report.
        unfinished = [r for r in grid if r.error is None and not (r.metrics or {}).get("final")]
        if caught or (every_trial_ends and unfinished):
            raise Interrupted(f"{name}: {len(unfinished)} trial(s) did not finish")
        return grid

    def _search(self, cell: Cell) -> dict | None:
        from ray import tune
        from ray.tune.schedulers import ASHAScheduler
        from ray.tune.search.optuna import OptunaSearch

        saved = self._read_json("best", f"{cell.key}.json")
        if saved is not None:
            _say(self.info, f"search {cell.dataset}/{cell.method}: done before, best {saved['params']}")
            return saved["params"]
        s, sch = self.cfg.search, self.cfg.scheduler
        defaults = {k: v for k, v in cell.defaults.items() if _in_domain(v, cell.space[k])}
        # the method's defaults are always the first point tried: a search never ends worse than no search
        first = [{f"tuned/{k}": v for k, v in defaults.items()}] if len(defaults) == len(cell.space) else None
        searcher = OptunaSearch(metric=s.metric, mode=s.mode, seed=s.seed, points_to_evaluate=first)
        scheduler = None
        if sch.type == "asha":
            from mist_core.presets import train_config

            max_t = train_config(cell.run["scale"], cell.run["train"]).max_steps
            scheduler = ASHAScheduler(time_attr="step", max_t=max_t, grace_period=sch.grace_period,
                                      reduction_factor=sch.reduction_factor)
        tune_config = tune.TuneConfig(metric=s.metric, mode=s.mode, search_alg=searcher, scheduler=scheduler,
                                      num_samples=s.num_samples, reuse_actors=self.cfg.reuse_actors,
                                      max_concurrent_trials=self.cfg.max_concurrent_trials,
                                      trial_name_creator=trial_name, trial_dirname_creator=trial_name)
        space = {"ctx": self.ctx, "phase": "search", "cell": {"run": cell.run, "data_hash": cell.data_hash},
                 "tuned": {k: to_tune_domain(d) for k, d in cell.space.items()}}
        name = f"search-{cell.dataset}-{cell.method}"
        _say(self.info, f"{name}: {s.num_samples} Optuna trials over {sorted(cell.space)}")
        grid = self._fit(name, self._tuner(name, space, tune_config),
                         every_trial_ends=self.cfg.scheduler.type == "none")
        if self.errors:
            return None
        ranked = []
        for r in grid:
            v = (r.metrics or {}).get(s.metric)
            if v is not None and math.isfinite(v):
                done = bool((r.metrics or {}).get("final"))
                ranked.append((not done, v if s.mode == "min" else -v, r.config["tuned"], r.path))
        if not ranked:
            self.errors.append(f"{name}: no trial reported a finite {s.metric}")
            return None
        _, value, params, path = min(ranked, key=lambda t: (t[0], t[1]))
        value = value if s.mode == "min" else -value
        self._write_json({"params": params, "metric": s.metric, "value": value, "trial": path},
                         "best", f"{cell.key}.json")
        _say(self.info, f"{name}: best {s.metric}={value:.4g} with {params}")
        return params

    def _seeds(self, best: dict[str, dict]) -> None:
        from ray import tune

        cells = [{"run": c.run, "data_hash": c.data_hash, "best": best[c.key]} for c in self.plan.cells]
        space = {"ctx": self.ctx, "phase": "seeds", "cell": tune.grid_search(cells),
                 "seed": tune.grid_search(list(self.cfg.seeds))}
        tune_config = tune.TuneConfig(num_samples=1, reuse_actors=self.cfg.reuse_actors,
                                      max_concurrent_trials=self.cfg.max_concurrent_trials,
                                      trial_name_creator=trial_name, trial_dirname_creator=trial_name)
        _say(self.info, f"seeds: {len(cells)} cell(s) x {len(self.cfg.seeds)} seed(s)")
        self._fit(SEEDS_EXPERIMENT, self._tuner(SEEDS_EXPERIMENT, space, tune_config), every_trial_ends=True)

    def _summary(self):
        import pandas as pd

        w = ResultsWriter(self.info["results_path"])
        if not w.rows:
            return None
        df = pd.DataFrame(list(w.rows.values()))
        df = df[df["final"] & (df["phase"] == "seeds") & (df["metric"] == self.cfg.search.metric)]
        if df.empty:
            return None
        t = df.groupby(["dataset", "method"])["value"].agg(["mean", "std", "count"])
        _say(self.info, f"{self.cfg.search.metric} over seeds (final evaluation):\n{t.to_string()}")
        return t

    def _log_summary(self, uri: str, parent: str, table) -> None:
        """Per cell, the metric's mean and std over seeds on the parent run: readable without expanding it."""
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient

        now, m = int(time.time() * 1000), self.cfg.search.metric
        metrics = [Metric(f"{d}/{meth}/{m}_{stat}", float(row[stat]), now, 0)
                   for (d, meth), row in table.iterrows() for stat in ("mean", "std") if math.isfinite(row[stat])]
        if metrics:
            MlflowClient(uri).log_batch(parent, metrics=metrics)


def _tune_caught_sigint(before) -> bool:
    """Whether Tune's own SIGINT handler fired during fit (it then re-installs the previous handler; otherwise its
    handler stays installed after fit, and we put the previous one back)."""
    now = signal.getsignal(signal.SIGINT)
    if getattr(now, "__name__", "") == "signal_interrupt_tune_run":
        signal.signal(signal.SIGINT, before)
        return False
    tune_installs = threading.current_thread() is threading.main_thread() and not int(
        os.environ.get("TUNE_DISABLE_SIGINT_HANDLER", "0"))
    return tune_installs and now is before


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def _warn_if_unshared(uri: str, storage: str) -> None:
    import ray

    if len([n for n in ray.nodes() if n.get("Alive")]) <= 1:
        return
    if uri.startswith("sqlite:") or "://" not in uri:
        log.warning("MLflow store %s is a local file: trials on other nodes can reach it only over a shared "
                    "filesystem; use --tracking-uri http://<server>:5000 (e.g. http://{head_ip}:5000)", uri)
    if "://" not in storage:
        log.warning("storage %s is a local path: with several nodes it must be shared (NFS) or s3://...", storage)


AUTOSCALER_HEAD_FILE = "~/ray_bootstrap_config.yaml"  # written by `ray up` on a cluster's head node


def _init_ray(args: argparse.Namespace) -> bool:
    """Join a cluster when there is one to join, else start a private local instance.

    Joined: --address; RAY_ADDRESS (set inside a `ray job submit` job, where ray.init(num_cpus=...) raises); or the
    head of an autoscaler cluster (`ray submit` runs the script there without RAY_ADDRESS). Otherwise a new local
    instance, never someone else's `ray start` cluster on the same machine. Returns True when Ray was started or
    joined here (and so must be shut down here)."""
    import ray

    # a checkpoint at every report of short trials trips this warning at every report; it is expected here
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    try:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
    except ImportError:
        pass
    if ray.is_initialized():
        return False
    if args.address:
        ray.init(address=args.address)
    elif os.environ.get("RAY_ADDRESS"):
        ray.init()
    elif Path(os.path.expanduser(AUTOSCALER_HEAD_FILE)).is_file():
        ray.init(address="auto")
    else:
        ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=args.dashboard,
                 configure_logging=True, logging_level=logging.WARNING)
    return True


def run_sweep(config: str | SweepConfig, **options) -> int:
    """Programmatic entry point: run_sweep("sweeps/configs/smoke.yaml", resume=True, storage="/tmp/s")."""
    argv = [str(config)] if not isinstance(config, SweepConfig) else ["<config>"]
    for k, v in options.items():
        flag = "--" + k.replace("_", "-")
        if v is True:
            argv.append(flag)
        elif v not in (None, False):
            argv += [flag, str(v)]
    return main(argv, _config=config if isinstance(config, SweepConfig) else None)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m sweeps.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("config", help="a sweep YAML (a path, or the name of one in sweeps/configs)")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue the sweep stored under storage/<name>")
    mode.add_argument("--fresh", action="store_true", help="discard an existing sweep of that name and start over")
    ap.add_argument("--storage", help="override the config's storage (local dir, NFS or s3://...)")
    ap.add_argument("--tracking-uri", help="override the config's MLflow URI ({head_ip} = the driver node's IP)")
    ap.add_argument("--address", help="join this Ray cluster (auto, HOST:PORT); default: RAY_ADDRESS, else local")
    ap.add_argument("--num-cpus", type=int, help="CPUs of the local Ray instance (default: all cores)")
    ap.add_argument("--dashboard", action="store_true", help="start the Ray dashboard with the local instance")
    ap.add_argument("--check", action="store_true", help="validate the config and print the plan, run nothing")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None, _config: SweepConfig | None = None) -> int:
    args = parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        sweep = _config or load_sweep(args.config)
        p = plan(sweep)
        if args.check:
            print(f"{sweep.name}: {len(p.cells)} cells, {p.n_trials()} trials: OK")
            for c in p.cells:
                print(f"  {c.dataset}/{c.method}: search {sorted(c.space) if p.needs_search(c) else 'none'}, "
                      f"data {c.data_hash}")
            return 0
        return Sweep(p, args).run()
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    # Import the module by name so Ray pickles `sweeps.run.trainable` by reference, not `__main__.trainable`.
    from sweeps.run import main as _main

    sys.exit(_main())
