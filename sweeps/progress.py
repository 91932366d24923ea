"""Driver side of the trials: progress lines, tidy rows to results.parquet, and the MLflow backstop.

`SweepProgress` is the Tune callback of both phases' experiments; `say` prints the driver's timestamped lines.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

from ray.tune import Callback

from mist_core.registry import display_name
from sweeps import tracking
from sweeps.config import flat_params
from sweeps.failures import trial_failure
from sweeps.results import KEY, ResultsWriter, report_rows
from sweeps.spec import TrialSpec
from sweeps.trial import shown_metrics

__all__ = ["SweepInfo", "SweepProgress", "say", "activate", "PROGRESS_EVERY_S", "STOPPED_BY"]

log = logging.getLogger("sweeps")
PROGRESS_EVERY_S = 30.0  # a trial's report line at most this often (its final report always); between reports the
                         # trial prints its own line (sweeps.trial.HEARTBEAT_S)
STOPPED_BY = "mist.stopped_by"  # the MLflow tag of a trial stopped before its budget: who stopped it


@dataclass(frozen=True)
class SweepInfo:
    """The driver's lines and its progress callback (Tune pickles it with the experiment): what they need of the
    sweep. Each trial's own (MLflow store, experiment, uid) is in its spec."""

    sweep: str
    t0: float              # when the driver started (time.time()): lines show the time since
    metric: str            # the search metric, shown on each report line
    results_path: str
    scheduler: str = "none"   # the search phase's early stopping (SweepConfig.scheduler.type), named in MLflow
    marker: str = ""          # the sweep's marker file (sweeps.storage_watch): gone, Tune stops every trial


_ACTIVE: dict[str, SweepInfo] = {}  # results path -> the running sweep's info, for restored callbacks


def activate(info: SweepInfo) -> None:
    """Make `info` (this driver's sweep info) the one that callbacks of this sweep use, restored ones included."""
    _ACTIVE[info.results_path] = info


def say(info: SweepInfo, msg: str) -> None:
    """Print `msg` prefixed with the sweep's name and the minutes:seconds since it started; URIs redacted."""
    elapsed = time.time() - info.t0
    msg = tracking.redact_uri(msg)  # a backstop: callers pass redacted URIs, but messages may quote errors
    print(f"[{info.sweep} {int(elapsed) // 60:02d}:{int(elapsed) % 60:02d}] {msg}", flush=True)


def _tune_keys() -> set[str]:
    import ray.tune.result as r

    keys = {v for k, v in vars(r).items() if k.isupper() and isinstance(v, str)}
    return keys | set(r.AUTO_RESULT_KEYS) | {"date", "time_since_restore", "iterations_since_restore",
                                            "timesteps_since_restore", "checkpoint_dir_name", "experiment_id"}


class SweepProgress(Callback):
    """One line per trial report; tidy rows to results.parquet; no trial run left RUNNING in MLflow.

    Tune pickles its callbacks with the experiment and restores them on Tuner.restore, so all live state is
    rebuilt in setup() from the files beside the sweep."""

    def __init__(self, info: SweepInfo):
        self.info = info

    def __getstate__(self):  # pickled: the info only (setup() makes the rest)
        return {"info": self.info}

    def setup(self, **kwargs):
        self.info = _ACTIVE.get(self.info.results_path, self.info)  # this driver's, after a restore
        self.writer = ResultsWriter(self.info.results_path)
        self.skip = _tune_keys()
        self.meta: dict[str, dict[str, Any]] = {}
        self.last_flush = time.monotonic()
        self.last: dict[str, dict[str, float]] = {}
        self.said: dict[str, float] = {}

    def _meta(self, trial) -> dict[str, Any]:
        if trial.trial_id not in self.meta:
            spec = TrialSpec.of_trial(trial.config)
            run = spec.run
            self.meta[trial.trial_id] = dict(
                sweep=spec.ctx.name, trial=str(trial), phase=spec.phase, method=display_name(run.method),
                dataset=run.dataset,
                table=spec.ctx.table, task=run.task, scale=run.scale, seed=run.seed,
                params_json=json.dumps(flat_params(run), sort_keys=True, default=str))
        return self.meta[trial.trial_id]

    def on_trial_result(self, iteration, trials, trial, result, **info):
        rep = {k: float(v) for k, v in result.items() if k not in self.skip and isinstance(v, (int, float))
               and not isinstance(v, bool)}
        if "step" not in rep:
            return
        m = self._meta(trial)
        self.last[trial.trial_id] = rep
        # a resumed trial reports again the steps after its checkpoint: the first rows stay, as in MLflow (TrialRun)
        rows = report_rows(m, rep, result.get("time_total_s", math.nan))
        self.writer.add([r for r in rows if tuple(r[k] for k in KEY) not in self.writer.rows])
        if time.monotonic() - self.last_flush > 10:
            self._flush()
        now = time.monotonic()
        if rep.get("final") or now - self.said.get(trial.trial_id, -math.inf) >= PROGRESS_EVERY_S:
            self.said[trial.trial_id] = now
            shown = shown_metrics(rep, dict.fromkeys([self.info.metric, "det_rate"]))  # undefined: n/a
            tag = "final" if rep.get("final") else f"step {int(rep['step'])}"
            say(self.info, f"{m['phase']:6s} {m['dataset']}/{m['method']} s{m['seed']} {trial.trial_id}: "
                           f"{tag} {shown} ({result.get('time_total_s', 0):.1f} s)")

    def on_trial_complete(self, iteration, trials, trial, **info):
        """A trial ended without an error: it trained its budget, or Tune stopped it before (the scheduler, or a
        stopper). Tune does not call this when the sweep is interrupted: the driver closes those runs KILLED."""
        self._flush()
        done = self.last.get(trial.trial_id, {}).get("final") or (trial.last_result or {}).get("final")
        if done:
            self._close(trial, "FINISHED")
            return
        by = self._stopped_by(trial)
        # an early stop is the scheduler doing its job: the run is complete as far as it was meant to go
        self._close(trial, "FINISHED" if by == self.info.scheduler else "KILLED", {STOPPED_BY: by})
        say(self.info, f"stopped early by {by}: {trial}")

    def _stopped_by(self, trial) -> str:
        """Who stopped a trial short of its budget: the search phase's scheduler (e.g. asha), or 'storage' (the
        sweep folder went away: sweeps.storage_watch) or 'tune' (anything else)."""
        from sweeps.storage_watch import lost

        if self.info.marker and lost(self.info.marker):
            return "storage"
        if self.info.scheduler != "none" and self._meta(trial)["phase"] == "search":
            return self.info.scheduler
        return "tune"

    def on_trial_recover(self, iteration, trials, trial, **info):
        say(self.info, f"retrying {trial} from its last checkpoint after: {trial_failure(trial)}")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._flush()
        self._close(trial, "FAILED")
        say(self.info, f"FAILED: {trial}: {trial_failure(trial)}")

    def on_experiment_end(self, trials, **info):
        self._flush(force=True)

    def _flush(self, force: bool = False):
        self.writer.flush(force=force)
        self.last_flush = time.monotonic()

    def _close(self, trial, status: str, tags: dict[str, str] | None = None):
        ctx = TrialSpec.of_trial(trial.config).ctx  # where the trial's MLflow run is
        try:
            tracking.terminate_if_running(ctx.tracking_uri, ctx.experiment_id,
                                          tracking.trial_key(ctx.uid, trial.trial_id), status, tags)
        except Exception as e:  # noqa: BLE001 - the final sweep close retries
            log.warning("could not update the MLflow run of %s: %s", trial, e)
