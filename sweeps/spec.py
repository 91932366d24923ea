"""What one trial runs, typed and frozen. The driver builds it from the plan's cell; Tune carries it as the trial
config {"spec": TrialSpec.model_dump()} (plus "tuned" in phase 1: Optuna's picks); the trial, the progress callback
and the trial's name validate it back. Nothing resolves presets again: a cell's run is explicit.
"""
from __future__ import annotations

from typing import Any, Literal

from mist_core.config import ConfigError, StrictConfig, parse_config
from mist_core.train import RunConfig
from sweeps.config import Cell

__all__ = ["SweepContext", "TrialSpec", "trial_name"]


class SweepContext(StrictConfig):
    """The sweep as its trials see it. Tune writes it into each trial's params.json and state: no credential (the
    real MLflow URI travels in the environment: sweeps.tracking.credential_env)."""

    name: str
    uid: str                       # tells this sweep's runs from another's of the same name
    table: str | None
    tracking_uri: str              # redacted
    experiment_id: str
    parent_run_id: str
    code_version: str
    fault: str | None              # the test hook sweeps.trial.FAULT_ENV, from the driver's environment
    checkpoint_interval_s: float
    trials_dir: str                # <storage>/<sweep>/trials: each trial's files for the report


class TrialSpec(StrictConfig):
    ctx: SweepContext
    phase: Literal["search", "seeds"]
    run: RunConfig                 # the cell's run with the trial's seed and search parameters
    data_hash: str

    @classmethod
    def planned(cls, ctx: SweepContext, phase: str, cell: Cell, seed: int | None = None,
                params: dict[str, Any] | None = None) -> TrialSpec:
        """A trial of `cell` on `seed` (default: the search seed), `params` (phase 2: its search's best) on top."""
        run = cell.run.replace(seed=cell.run.seed if seed is None else seed,
                               method_params={**cell.run.method_params, **(params or {})})
        return cls(ctx=ctx, phase=phase, run=run, data_hash=cell.data_hash)

    @classmethod
    def of_trial(cls, config: dict[str, Any]) -> TrialSpec:
        """The spec of a trial's Tune config, with Optuna's picks ("tuned", phase 1) on the method's parameters."""
        if "spec" not in config:
            raise ConfigError(f"Tune trial config without a 'spec' (keys: {sorted(config)}): a sweep started by an "
                              "older version of sweeps; start it again with --fresh")
        spec, tuned = parse_config(cls, config["spec"], where="trial spec"), config.get("tuned", {})
        return spec.replace(run=spec.run.replace(method_params={**spec.run.method_params, **tuned})) if tuned else spec


def trial_name(trial) -> str:
    """A Tune trial's name and directory (and its MLflow run's name): <phase>-<dataset>-<method's name>-s<seed>-<id>."""
    from mist_core.registry import display_name

    s = TrialSpec.of_trial(trial.config)
    return f"{s.phase}-{s.run.dataset}-{display_name(s.run.method)}-s{s.run.seed}-{trial.trial_id}"
