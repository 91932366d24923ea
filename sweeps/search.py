"""Phase 1 of a cell in Tune's terms: the method's search space as Tune domains, the Optuna searcher (which tries
the method's defaults first), ASHA early stopping, and the choice of the best trial."""
from __future__ import annotations

import math
from typing import Any

from sweeps.config import Cell, SweepConfig

__all__ = ["to_tune_domain", "tune_space", "searcher", "scheduler", "best_trial"]


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


def tune_space(cell: Cell) -> dict[str, Any]:
    """The cell's search space as Tune domains (the trial config's `tuned`)."""
    return {k: to_tune_domain(d) for k, d in cell.space.items()}


def searcher(cfg: SweepConfig, cell: Cell):
    from ray.tune.search.optuna import OptunaSearch

    s = cfg.search
    defaults = {k: v for k, v in cell.defaults.items() if _in_domain(v, cell.space[k])}
    # the method's defaults are always the first point tried: a search never ends worse than no search
    first = [{f"tuned/{k}": v for k, v in defaults.items()}] if len(defaults) == len(cell.space) else None
    return OptunaSearch(metric=s.metric, mode=s.mode, seed=s.seed, points_to_evaluate=first)


def scheduler(cfg: SweepConfig, cell: Cell):
    """ASHA on the reports' `step`, up to the cell's max_steps; None without a scheduler."""
    from ray.tune.schedulers import ASHAScheduler

    sch = cfg.scheduler
    if sch.type != "asha":
        return None
    return ASHAScheduler(time_attr="step", max_t=cell.params["train.max_steps"], grace_period=sch.grace_period,
                         reduction_factor=sch.reduction_factor)


def best_trial(grid, metric: str, mode: str) -> tuple[float, dict[str, Any], str] | None:
    """(value, tuned parameters, trial path) of the best trial, preferring those that made their final report (not
    stopped early); None when no trial reported a finite `metric`."""
    ranked = []
    for r in grid:
        v = (r.metrics or {}).get(metric)
        if v is not None and math.isfinite(v):
            done = bool((r.metrics or {}).get("final"))
            ranked.append((not done, v if mode == "min" else -v, r.config["tuned"], r.path))
    if not ranked:
        return None
    _, value, params, path = min(ranked, key=lambda t: (t[0], t[1]))
    return (value if mode == "min" else -value), params, path
