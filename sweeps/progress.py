"""Driver side of the trials: progress lines, tidy rows to results.parquet, and the MLflow backstop.

`SweepProgress` is the Tune callback of both phases' experiments; `say` prints the driver's timestamped lines.
"""
from __future__ import annotations

import json
import logging
import math
import time
from typing import Any

from ray.tune import Callback

from sweeps import tracking
from sweeps.results import KEY, ResultsWriter, report_rows
from sweeps.trial import shown_metrics, trial_run_config

__all__ = ["SweepProgress", "say", "activate", "PROGRESS_EVERY_S"]

log = logging.getLogger("sweeps")
PROGRESS_EVERY_S = 30.0  # a trial's report line at most this often (its final report always); between reports the
                         # trial prints its own line (sweeps.trial.HEARTBEAT_S)
_ACTIVE: dict[str, dict[str, Any]] = {}  # results path -> the running sweep's info, for restored callbacks


def activate(info: dict[str, Any]) -> None:
    """Make `info` (this driver's sweep info) the one that callbacks of this sweep use, restored ones included."""
    _ACTIVE[info["results_path"]] = info


def say(info: dict[str, Any], msg: str) -> None:
    """Print `msg` prefixed with the sweep's name and the minutes:seconds since info["t0"]; URIs redacted."""
    elapsed = time.time() - info.get("t0", time.time())
    msg = tracking.redact_uri(msg)  # a backstop: callers pass redacted URIs, but messages may quote errors
    print(f"[{info['sweep']} {int(elapsed) // 60:02d}:{int(elapsed) % 60:02d}] {msg}", flush=True)


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
        # a resumed trial reports again the steps after its checkpoint: the first rows stay, as in MLflow (TrialRun)
        rows = report_rows(m, rep, result.get("time_total_s", math.nan))
        self.writer.add([r for r in rows if tuple(r[k] for k in KEY) not in self.writer.rows])
        if time.monotonic() - self.last_flush > 10:
            self._flush()
        now = time.monotonic()
        if rep.get("final") or now - self.said.get(trial.trial_id, -math.inf) >= PROGRESS_EVERY_S:
            self.said[trial.trial_id] = now
            shown = shown_metrics(rep, dict.fromkeys([self.info["metric"], "det_rate"]))  # undefined: n/a
            tag = "final" if rep.get("final") else f"step {int(rep['step'])}"
            say(self.info, f"{m['phase']:6s} {m['dataset']}/{m['method']} s{m['seed']} {trial.trial_id}: "
                           f"{tag} {shown} ({result.get('time_total_s', 0):.1f} s)")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._flush()
        done = self.last.get(trial.trial_id, {}).get("final") or (trial.last_result or {}).get("final")
        self._close(trial, "FINISHED" if done else "KILLED")
        if not done:
            say(self.info, f"stopped early: {trial}")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._flush()
        self._close(trial, "FAILED")
        err = (trial.error_file or "").strip()
        say(self.info, f"FAILED: {trial} (error: {err or 'see the Tune log'})")

    def on_experiment_end(self, trials, **info):
        self._flush(force=True)

    def _flush(self, force: bool = False):
        self.writer.flush(force=force)
        self.last_flush = time.monotonic()

    def _close(self, trial, status: str):
        try:
            tracking.terminate_if_running(self.info["tracking_uri"], self.info["experiment_id"],
                                          tracking.trial_key(self.info["sweep_uid"], trial.trial_id), status)
        except Exception as e:  # noqa: BLE001 - the final sweep close retries
            log.warning("could not update the MLflow run of %s: %s", trial, e)
