"""The driver: a validated plan -> phase 1 (a search per cell) -> phase 2 (every cell on every seed), in Tune.

One Tune experiment per search cell (storage/<sweep>/search-<dataset>-<method>) and one for the seeds
(storage/<sweep>/seeds), each restored from storage when it exists (a resumed sweep keeps its finished trials; the
unfinished and errored ones resume from their last checkpoint). The sweep is one MLflow parent run, opened here and
closed here with the sweep's status; its trials are `sweeps.trial.trainable`, watched by `SweepProgress`. A finished
sweep's parent run holds each cell's final metrics over seeds (`Sweep.summary_metrics`) and the report, built here.
"""
from __future__ import annotations

import argparse
import math
import os
import shlex
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mist_core.config import ConfigError
from sweeps import cluster, search, tracking
from sweeps.config import Cell, Plan, plan
from sweeps.estimate import longest_first, step_timings
from sweeps.failures import failure_line
from sweeps.interrupts import Interrupted, deferred, sigterm_raises, tune_caught_sigint
from sweeps.progress import SweepInfo, SweepProgress, activate, say
from sweeps.results import RESULTS_FILE, ResultsWriter, copy_dir, read_bytes, write_atomic
from sweeps.spec import SweepContext, TrialSpec, trial_name
from sweeps.storage import check_storage
from sweeps.storage_watch import StorageWatch, check as check_storage_kept
from sweeps.store import SWEEP_FILE, SweepDir
from sweeps.trial import FAULT_ENV, trainable

__all__ = ["Sweep", "SEEDS_EXPERIMENT", "mlflow_ui"]

SEEDS_EXPERIMENT = "seeds"


def mlflow_ui(uri: str, experiment_id: str) -> str:
    """Where to read the sweep's runs: the URL of the experiment in MLflow's "Model training" view (MLflow 3 opens
    experiments in its GenAI view otherwise), preceded for a local store by the command that serves it."""
    view = f"#/experiments/{experiment_id}?workflowType=machine_learning"
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/{view}"
    if uri.startswith("databricks"):
        return f"{uri}, experiment {experiment_id}"
    exe = Path(sys.executable).with_name("mlflow")
    cmd = str(exe) if exe.is_file() else "mlflow"
    return f"{cmd} ui --backend-store-uri {shlex.quote(uri)} --host 127.0.0.1, then http://127.0.0.1:5000/{view}"


class Sweep:
    def __init__(self, p: Plan, args: argparse.Namespace):
        self.plan, self.cfg, self.args = p, p.sweep, args
        self.store = SweepDir(args.storage or self.cfg.storage, self.cfg.name)
        self.root, self.dir = self.store.root, self.store.path
        self.errors: list[str] = []
        self.info = SweepInfo(self.cfg.name, time.time(), self.cfg.search.metric, self.store.join(RESULTS_FILE),
                              scheduler=self.cfg.scheduler.type, marker=self.store.join(SWEEP_FILE))

    def _resume_command(self) -> str:
        argv = [a for a in getattr(self.args, "argv", [self.args.config]) if a not in ("--resume", "--fresh")]
        return tracking.redact_uri("python -m sweeps.run " + " ".join(argv + ["--resume"]))

    def _note(self) -> str:
        c = self.cfg
        table = f"paper Table {c.table}" if c.table else "not a paper table"
        return (f"mist-bench sweep **{c.name}** ({table}): task {c.task}, scale {c.scale}; methods "
                f"{', '.join(c.methods)} on {', '.join(c.datasets)}; seeds {list(c.seeds)}.\n\n"
                f"Protocol: per (dataset, method), {c.search.num_samples} Optuna trial(s) on seed {c.search.seed} "
                f"(runs named `search-...`; skipped without a search space), then the best config on every seed "
                f"(runs named `seeds-...`: the ones tables use). Metric {c.search.metric} ({c.search.mode}). "
                f"Tidy rows: {tracking.redact_uri(self.dir)}/{RESULTS_FILE}")

    # --- run ---------------------------------------------------------------------------------------------
    def run(self) -> int:
        """The sweep, from the checks Ray is not needed for to the closed MLflow runs: 0 finished, 1 failed trials,
        130 interrupted (SIGINT / SIGTERM); a ConfigError before anything starts."""
        # what --check leaves out: module:Class methods imported (here, before Ray: fail fast) and checked, and the
        # command line's storage and MLflow store
        self.plan = plan(self.cfg, import_methods=True, storage=self.args.storage, tracking_uri=self.args.tracking_uri)
        num_cpus = getattr(self.args, "num_cpus", None)
        if num_cpus is not None and num_cpus < 1:
            raise ConfigError(f"--num-cpus {num_cpus}: the local Ray instance needs at least one CPU (each trial asks "
                              f"for resources.cpu={self.cfg.resources.cpu})")
        cluster.warn_if_temporary(self.cfg, self.args)
        # storage reached once, bounded, before it is read (a resume's sweep.json) or written
        check_storage(self.args.storage or self.cfg.storage, field="--storage" if self.args.storage else "storage")
        state = self.store.open_state(self.cfg, self.args.resume, self.args.fresh, self.args.tracking_uri,
                                      say=lambda msg: say(self.info, msg))
        say(self.info, f"{len(self.plan.cells)} cells, {self.plan.n_trials()} trials: starting Ray...")
        import ray

        # {head_ip}: this machine's address (the driver runs on the head). The real URI is in the environment before
        # Ray starts: the workers of a local instance inherit it (no secret travels through Ray: sweeps.tracking);
        # from here on only the redacted URI is passed around, and MLflow clients swap the real one back in.
        real = state["tracking_uri"].replace("{head_ip}", ray.util.get_node_ip_address())
        # asked once, bounded: a server that is not there is named in seconds, not after MLflow's minutes of retries
        tracking.check_server(real, field="--tracking-uri" if self.args.tracking_uri else "tracking_uri")
        with tracking.credential_env(real) as uri:
            self.ray_mode = cluster.init_ray(self.args)
            try:
                with sigterm_raises():  # e.g. `ray job stop`: close the MLflow runs on the way out
                    cluster.check_resources(self.cfg, {str(c.params.get("train.device", "cpu"))
                                                       for c in self.plan.cells}, local=self.ray_mode == "local")
                    self.store.begin()  # --fresh: the old sweep goes only now that nothing can refuse the new one
                    return self._run_tracked(state, uri)
            except KeyboardInterrupt as e:  # before the sweep's MLflow run was opened: nothing to close
                say(self.info, f"interrupted ({e or 'Ctrl-C'}) before the sweep started")
                return 130
            finally:
                if self.ray_mode:
                    ray.shutdown()

    # --- what leaves this process (MLflow params and tags, Tune's config, the progress callback): no credential
    def parent_tags(self, state: dict[str, Any]) -> dict[str, Any]:
        """Tags of the sweep's parent MLflow run."""
        return tracking.redact_values({"table": self.cfg.table, "scale": self.cfg.scale, "task": self.cfg.task,
                                       "code_version": state["code_version"], "storage": self.dir,
                                       tracking.NOTE: self._note()})

    def parent_params(self) -> dict[str, Any]:
        """Params of the sweep's parent MLflow run: the config, flattened, with the storage and the MLflow store this
        run uses, absolute (as the storage tag), redacted."""
        where = {"storage": self.root, "tracking_uri": tracking.absolute_uri(self.args.tracking_uri or
                                                                             self.cfg.tracking_uri)}
        return tracking.redact_values({**_flat(self.cfg.canonical()), **where})

    def trial_ctx(self, state: dict[str, Any], uri: str, experiment_id: str, parent: str) -> SweepContext:
        """The sweep's part of every trial's spec. Storage paths stay as given: the trials write there."""
        return SweepContext(name=self.cfg.name, uid=state["uid"], table=self.cfg.table,
                            tracking_uri=tracking.redact_uri(uri), experiment_id=experiment_id, parent_run_id=parent,
                            code_version=state["code_version"], fault=os.environ.get(FAULT_ENV),
                            checkpoint_interval_s=self.cfg.checkpoint_interval_s, trials_dir=self.store.join("trials"))

    def _run_tracked(self, state: dict[str, Any], uri: str) -> int:
        import ray

        cluster.warn_if_unshared(uri, self.root)
        say(self.info, f"{len(self.plan.cells)} cells, {self.plan.n_trials()} trials; Ray: "
                       f"{cluster.alive_nodes()} node(s), {ray.cluster_resources().get('CPU', 0):g} CPU, "
                       f"{ray.cluster_resources().get('GPU', 0):g} GPU; storage {self.dir}; MLflow {uri}")
        experiment_id = tracking.prepare(uri, self.cfg.name)
        tracking.describe_experiment(uri, experiment_id, tracking.redact_uri(self._note()))
        state["experiment_id"] = experiment_id
        self.store.write_state(state)
        activate(self.info)
        say(self.info, f"MLflow: {mlflow_ui(uri, experiment_id)}")
        status, code = "FAILED", 1
        with deferred() as pending:  # the parent run is opened, and then closed below, whatever signal comes
            parent = tracking.open_sweep_run(uri, experiment_id, state["uid"], self.cfg.name,
                                             tags=self.parent_tags(state), params=self.parent_params())
        try:
            if pending:
                raise KeyboardInterrupt("SIGTERM" if signal.SIGTERM in pending else "")
            self.ctx = self.trial_ctx(state, uri, experiment_id, parent)
            best = {}
            for cell in self.plan.cells:
                best[cell.key] = self._search(cell) if self.plan.needs_search(cell) else {}
                if best[cell.key] is None:
                    break
            if not self.errors:
                self._seeds(best)
            if self.errors:
                say(self.info, "some trials failed:\n  " + "\n  ".join(self.errors) +
                    f"\nfix the cause, then continue with: {self._resume_command()}")
            else:
                status, code = "FINISHED", 0
                table = self._summary()
                if table is not None:
                    self._log_summary(uri, parent, table)
                self._report(uri)
        except (KeyboardInterrupt, SystemExit, Interrupted) as e:  # SystemExit: a signal handler Ray installed
            status, code = "KILLED", 130
            say(self.info, f"interrupted ({e or 'Ctrl-C'}): continue with {self._resume_command()}")
        finally:
            with deferred():  # a second Ctrl-C must not leave runs RUNNING
                if status != "FINISHED" and getattr(self, "ray_mode", ""):
                    import ray

                    ray.shutdown()  # the trials stop first: none may log, or open a run, after the runs are closed
                closed = tracking.close_sweep_run(uri, experiment_id, parent, status)
            if closed:
                say(self.info, f"{closed} trial run(s) left RUNNING by killed trials marked KILLED in MLflow")
        say(self.info, f"done: {status}. Tidy results: {self.info.results_path}. MLflow: "
                       f"{mlflow_ui(uri, experiment_id)}")
        return code

    # --- the two phases ----------------------------------------------------------------------------------
    def _tune_config(self, **options) -> Any:
        """A TuneConfig with the sweep's concurrency settings and trial names."""
        from ray import tune

        return tune.TuneConfig(reuse_actors=self.cfg.reuse_actors, max_concurrent_trials=self.cfg.max_concurrent_trials,
                               trial_name_creator=trial_name, trial_dirname_creator=trial_name, **options)

    def _tuner(self, name: str, param_space: dict, tune_config) -> Any:
        from ray import tune

        path = self.store.join(name)
        fn = tune.with_resources(trainable, {"cpu": self.cfg.resources.cpu, "gpu": self.cfg.resources.gpu})
        if tune.Tuner.can_restore(path):
            try:
                say(self.info, f"{name}: resuming the Tune experiment at {path}")
                return tune.Tuner.restore(path, trainable=fn, resume_errored=True)
            except FileNotFoundError as e:  # interrupted before anything was saved: start it again
                say(self.info, f"{name}: nothing restorable ({e}); starting it afresh")
        run_config = tune.RunConfig(
            name=name, storage_path=self.dir, verbose=0,
            callbacks=[SweepProgress(self.info), *_tune_loggers()], stop=StorageWatch(self.store.join(SWEEP_FILE)),
            failure_config=tune.FailureConfig(max_failures=self.cfg.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1))
        return tune.Tuner(fn, param_space=param_space, tune_config=tune_config, run_config=run_config)

    def _fit(self, name: str, tuner, every_trial_ends: bool) -> Any:
        """Run a Tune experiment; record errored trials; raise Interrupted if it was stopped (Ctrl-C)."""
        before = signal.getsignal(signal.SIGINT)
        t0 = time.perf_counter()
        grid = tuner.fit()
        wall = time.perf_counter() - t0
        check_storage_kept(self.store.join(SWEEP_FILE), self.dir)  # gone mid-sweep: one line, not a failure per trial
        caught = tune_caught_sigint(before)
        last = [r.metrics or {} for r in grid]
        trial_wall = sum(m.get("time_total_s", 0.0) for m in last)
        train = sum(m.get("seconds", 0.0) for m in last)
        say(self.info, f"{name}: {len(grid)} trials in {wall:.1f} s wall; the trials' own time {trial_wall:.1f} s "
                       f"(of which training steps {train:.1f} s)")
        errors = [f"{name}: {r.path}: {failure_line(r.error)}"
                  for r in grid if r.error is not None]
        self.errors += errors
        # Trial statuses are not trustworthy here (Tune's cleanup marks interrupted trials TERMINATED), so:
        # a trial that was not stopped by a scheduler must have made its final report.
        unfinished = [r for r in grid if r.error is None and not (r.metrics or {}).get("final")]
        if caught or (every_trial_ends and unfinished):
            raise Interrupted(f"{name}: {len(unfinished)} trial(s) did not finish")
        return grid

    def _search(self, cell: Cell) -> dict | None:
        """Phase 1 of one cell: its best parameters (stored in best/<cell>.json), or None when it failed."""
        saved = self.store.read_json("best", f"{cell.key}.json")
        if saved is not None:
            say(self.info, f"search {cell.dataset}/{cell.label}: done before, best {saved['params']}")
            return saved["params"]
        s = self.cfg.search
        tune_config = self._tune_config(metric=s.metric, mode=s.mode, search_alg=search.searcher(self.cfg, cell),
                                        scheduler=search.scheduler(self.cfg, cell), num_samples=s.num_samples)
        space = {"spec": TrialSpec.planned(self.ctx, "search", cell).model_dump(), "tuned": search.tune_space(cell)}
        name = f"search-{cell.dataset}-{cell.label}"   # the Tune experiment; its folder under the sweep
        say(self.info, f"{name}: {s.num_samples} Optuna trials over {sorted(cell.space)}")
        grid = self._fit(name, self._tuner(name, space, tune_config),
                         every_trial_ends=self.cfg.scheduler.type == "none")
        if self.errors:
            return None
        best = search.best_trial(grid, s.metric, s.mode)
        if best is None:
            self.errors.append(f"{name}: no trial reported a finite {s.metric}")
            return None
        value, params, path = best
        self.store.write_json({"params": params, "metric": s.metric, "value": value, "trial": path},
                              "best", f"{cell.key}.json")
        say(self.info, f"{name}: best {s.metric}={value:.4g} with {params}")
        return params

    def _seeds(self, best: dict[str, dict]) -> None:
        """Phase 2: every cell, with its best parameters, on every seed: one grid, no early stopping."""
        from ray import tune

        cells = longest_first(self.plan.cells, self.cfg.task, self.cfg.scale, step_timings())
        specs = [TrialSpec.planned(self.ctx, "seeds", c, seed=seed, params=best[c.key]).model_dump()
                 for c in cells for seed in self.cfg.seeds]
        space = {"spec": tune.grid_search(specs)}  # Tune starts them in this order
        say(self.info, f"seeds: {len(cells)} cell(s) x {len(self.cfg.seeds)} seed(s), longest first by measured "
                       f"step cost: {', '.join(f'{c.dataset}/{c.label}' for c in cells)}")
        self._fit(SEEDS_EXPERIMENT, self._tuner(SEEDS_EXPERIMENT, space, self._tune_config(num_samples=1)),
                  every_trial_ends=True)

    # --- the end -----------------------------------------------------------------------------------------
    def summary_metrics(self) -> tuple[str, ...]:
        """The metrics of the parent run's summary: the search metric and those the report's tables show for the
        task (recon: rmse, det_rate, ap_iou50)."""
        from analysis.tables import TASK_METRICS

        return tuple(dict.fromkeys([self.cfg.search.metric, *TASK_METRICS.get(self.cfg.task, ())]))

    def _summary(self):
        """Per (dataset, method, metric), the final evaluations' mean, std and count over the seeds; printed."""
        import pandas as pd

        w = ResultsWriter(self.info.results_path)
        if not w.rows:
            return None
        df = pd.DataFrame(list(w.rows.values()))
        df = df[df["final"] & (df["phase"] == "seeds") & df["metric"].isin(self.summary_metrics())]
        if df.empty:
            return None
        t = df.groupby(["dataset", "method", "metric"])["value"].agg(["mean", "std", "count"])
        shown = pd.Series([_mean_std(a, b) for a, b in zip(t["mean"], t["std"])], index=t.index).unstack("metric")
        shown = shown[[m for m in self.summary_metrics() if m in shown.columns]]
        seeds = t["count"].groupby(["dataset", "method"]).max().rename("seeds")
        say(self.info, "final evaluation over seeds (mean ± std):\n" + shown.join(seeds).fillna("n/a").to_string())
        return t

    def _log_summary(self, uri: str, parent: str, table) -> None:
        """Per cell and metric, the mean and std over seeds on the parent run (`<dataset>/<method>/<metric>_mean`):
        readable without expanding it; an undefined value (one seed's std) is left out."""
        tracking.log_metrics(uri, parent, {f"{d}/{meth}/{m}_{stat}": float(row[stat])
                                           for (d, meth, m), row in table.iterrows() for stat in ("mean", "std")})

    def _report(self, uri: str) -> None:
        """Build the sweep's report (report/ in the sweep folder) and log it on the parent run; a failure to do so
        is a line, not a failed sweep (`mist-bench report` builds it again)."""
        from analysis.report import log_to_mlflow, report_sweep

        try:
            if "://" in self.dir:  # e.g. s3://: built from a local copy of what the report reads, then copied back
                with tempfile.TemporaryDirectory() as tmp:
                    local = Path(tmp) / self.cfg.name
                    for part in (SWEEP_FILE, RESULTS_FILE):
                        write_atomic(local / part, read_bytes(self.store.join(part)) or b"")
                    copy_dir(self.store.join("trials"), str(local / "trials"))
                    path = report_sweep(local)
                    log_to_mlflow(path.parent, tracking_uri=uri, sweep_dir=local)
                    copy_dir(str(path.parent), self.store.join("report"))
                    path = self.store.join("report", path.name)
            else:
                path = report_sweep(self.dir)
                log_to_mlflow(path.parent, tracking_uri=uri, sweep_dir=self.dir)
        except Exception as e:  # noqa: BLE001 - the sweep's results are safe; only the report is missing
            say(self.info, f"report: not built or not logged ({type(e).__name__}: {e})")
            return
        say(self.info, f"report: {path} (and on the sweep's MLflow run, under report/)")


def _mean_std(mean: float, std: float) -> str:
    """'0.2 ± 0.01'; '0.2' when the std is undefined (one seed); 'n/a' when the mean is."""
    if not math.isfinite(mean):
        return "n/a"
    return f"{mean:.4g} ± {std:.2g}" if math.isfinite(std) else f"{mean:.4g}"


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> one level with dotted keys (the sweep config as the parent run's params)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def _tune_loggers() -> list:
    """Tune's per-trial result.json, params.json and progress.csv, without its TensorBoard logger (sweeps.cluster
    turns Tune's automatic loggers off)."""
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    return [JsonLoggerCallback(), CSVLoggerCallback()]
