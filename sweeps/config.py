"""The sweep config: its schema, loading from YAML, and validation of every (dataset, method) cell up front.

A sweep config is data (sweeps/configs/*.yaml). Unknown keys and wrong types are refused; then `plan(cfg)`
resolves every (dataset, method) cell with `mist_core.train.resolve`, so an unknown method or dataset, a task a
method does not support, a bad method/dataset/train parameter or an impossible budget is ONE ConfigError that
names it, raised before Ray or MLflow start.

    sweep = load_sweep("sweeps/configs/table1.yaml")
    p = plan(sweep)            # raises ConfigError
    for cell in p.cells: ...   # cell.run is a RunConfig dict (seed = search seed), cell.space what Optuna tunes
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, field_validator

from mist_core.config import ConfigError, StrictConfig, load_yaml, parse_config
from mist_core.method import Choice, IntRange, LogUniform, Uniform
from mist_core.presets import Scale

__all__ = ["Budget", "Search", "Scheduler", "Resources", "Override", "SweepConfig", "Cell", "Plan",
           "load_sweep", "find_config", "plan", "CONFIG_DIR"]

CONFIG_DIR = Path(__file__).parent / "configs"


class Budget(StrictConfig):
    """Overrides of the scale's training budget for every trial (None = the scale preset's)."""

    max_steps: int | None = Field(None, ge=1)
    max_seconds: float | None = Field(None, gt=0)


class Search(StrictConfig):
    """Phase 1: an Optuna search per (dataset, method) on seed `seed`; the same num_samples for every method."""

    num_samples: int = Field(1, ge=1)  # 1 (or an empty search space) = no search: the method's defaults
    metric: str                         # a key of the trainer's report, e.g. rmse, det_rate, both, ap_iou50
    mode: Literal["min", "max"]
    seed: int = 0                       # the seed of search trials and of the Optuna sampler


class Scheduler(StrictConfig):
    """ASHA early stopping of phase-1 trials, in training steps (its time attribute is the report's `step`)."""

    type: Literal["asha", "none"] = "none"
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(3.0, gt=1)


class Resources(StrictConfig):
    """Per trial. Torch threads = cpu. gpu may be fractional (several trials share a GPU) or a whole number."""

    cpu: int = Field(1, ge=1)
    gpu: float = Field(0.0, ge=0)

    @field_validator("gpu")
    @classmethod
    def _whole_above_one(cls, v: float) -> float:
        if v > 1 and v != int(v):
            raise ValueError("a fraction of a GPU must be <= 1; above 1 give a whole number")
        return v


class Override(StrictConfig):
    """Fixed parameters for the cells that match (empty list = every method / every dataset), applied in order."""

    methods: tuple[str, ...] = ()
    datasets: tuple[str, ...] = ()
    method_params: dict[str, Any] = {}
    dataset_params: dict[str, Any] = {}
    train: dict[str, Any] = {}


class SweepConfig(StrictConfig):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    table: str | None = None                  # the paper table this reproduces ("1".."4"), None for smoke/quick
    task: Literal["recon", "classify"]
    scale: Scale
    datasets: tuple[str, ...] = Field(min_length=1)
    methods: tuple[str, ...] = Field(min_length=1)
    seeds: tuple[int, ...] = Field((0,), min_length=1)
    budget: Budget = Budget()
    train: dict[str, Any] = {}                # other TrainConfig overrides (eval_every, batch_size, ...)
    search: Search
    scheduler: Scheduler = Scheduler()
    resources: Resources = Resources()
    max_failures: int = Field(1, ge=-1)       # retries of a failed trial from its last checkpoint (-1 = forever)
    checkpoint_interval_s: float = Field(0.0, ge=0)  # min seconds between a trial's checkpoints (0 = every report)
    reuse_actors: bool = True                 # reuse a trial's worker process for the next trial
    max_concurrent_trials: int | None = Field(None, ge=1)
    storage: str = "runs/sweeps"              # Tune storage (local path, NFS or s3://); the sweep lives in storage/name
    tracking_uri: str = "sqlite:///mlflow.db"  # relative sqlite paths are made absolute against the working dir
    cache_dir: str | None = None              # dataset cache (None = mist_core.data's default)
    overrides: tuple[Override, ...] = ()
    exclude: tuple[str, ...] = ()             # "dataset/method" cells not run (e.g. baselines on Gabor in Table 1)

    def canonical(self) -> dict[str, Any]:
        """The config as plain JSON data (to store beside the sweep and compare on resume)."""
        return json.loads(self.model_dump_json())


# --- loading ----------------------------------------------------------------------------------------
def find_config(path: str | Path) -> Path:
    """`path` itself, else a config of that name shipped in sweeps/configs (for `ray submit`, which runs in ~)."""
    p = Path(path).expanduser()
    if p.is_file():
        return p
    for cand in (CONFIG_DIR / p.name, CONFIG_DIR / f"{p.name}.yaml"):
        if cand.is_file():
            return cand
    known = ", ".join(sorted(q.stem for q in CONFIG_DIR.glob("*.yaml")))
    raise ConfigError(f"sweep config {str(path)!r} not found (shipped configs: {known})")


def load_sweep(path: str | Path) -> SweepConfig:
    """Read a sweep YAML; `${VAR}` in a string value is replaced by the environment variable VAR (unset: error)."""
    p = find_config(path)
    try:
        data = load_yaml(p.read_text(), name=str(p))
    except yaml.YAMLError as e:  # a syntax error, or a key given twice (named with its lines)
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: cannot read the sweep config ({type(e).__name__}: {e})") from None
    if data is None:  # an empty file (or only comments) would otherwise read as "every field missing"
        raise ConfigError(f"{p}: empty config (a sweep config needs name, task, scale, datasets, methods, search)")
    return parse_config(SweepConfig, _expand(data, p.stem), where=p.stem)


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _expand(x: Any, where: str) -> Any:
    if isinstance(x, dict):
        return {k: _expand(v, f"{where}.{k}") for k, v in x.items()}
    if isinstance(x, list):
        return [_expand(v, f"{where}[{i}]") for i, v in enumerate(x)]
    if isinstance(x, str):
        missing = [m for m in _VAR.findall(x) if m not in os.environ]
        if missing:
            raise ConfigError(f"{where}: environment variable {missing[0]} is not set (used in {x!r})")
        return _VAR.sub(lambda m: os.environ[m.group(1)], x)
    return x


# --- the plan: every cell resolved -----------------------------------------------------------------------
@dataclass(frozen=True)
class Cell:
    dataset: str
    method: str
    run: dict[str, Any]               # RunConfig fields (JSON data); seed = the search seed
    space: dict[str, Any]             # field -> LogUniform | Uniform | IntRange | Choice (fixed params removed)
    defaults: dict[str, Any]          # the method's value of each searched field
    params: dict[str, Any]            # Resolved.as_params() of the defaults
    data_hash: str                    # identifies the dataset's content (its cache key)

    @property
    def key(self) -> str:
        return f"{self.dataset}__{self.method}"


@dataclass(frozen=True)
class Plan:
    sweep: SweepConfig
    cells: tuple[Cell, ...]

    def needs_search(self, cell: Cell) -> bool:
        return self.sweep.search.num_samples > 1 and bool(cell.space)

    def n_trials(self) -> int:
        n_search = sum(self.sweep.search.num_samples for c in self.cells if self.needs_search(c))
        return n_search + len(self.cells) * len(self.sweep.seeds)


RECON_ONLY = {"rmse"}
CLASSIFY_ONLY = {"cls_acc", "both"}


def _known_metrics() -> set[str]:
    from mist_core import metrics

    return {"rmse", "det_rate", "det_rate_all", "mean_iou_matched", "cls_acc", "both",
            *(metrics.ap_key(t) for t in metrics.AP_THRESHOLDS)}


def data_hash(dataset_cfg: StrictConfig) -> str:
    """The dataset's cache key (name, full config, source-data fingerprint), as mist_core.data computes it."""
    try:
        from mist_core.data.cache import cache_key
        from mist_core.data.registry import ENTRIES, dataset_name

        name = dataset_name(dataset_cfg)
        return cache_key(name, dataset_cfg, ENTRIES[name].fingerprint(dataset_cfg))[:24]
    except (ImportError, AttributeError, KeyError):  # a data layer without these: hash the config ourselves
        blob = json.dumps({"type": type(dataset_cfg).__name__, **dataset_cfg.model_dump(mode="json")}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:24]


def plan(sweep: SweepConfig) -> Plan:
    """Validate the whole sweep; raise one ConfigError listing every problem, or return its cells."""
    from mist_core.data import DATASETS
    from mist_core.registry import get_method
    from mist_core.train import resolve

    where = f"sweep {sweep.name!r}"
    errors: list[str] = []
    methods: dict[str, type] = {}
    for m in sweep.methods:
        try:
            methods[m] = get_method(m)
        except KeyError as e:
            errors.append(f"methods: {e.args[0]}")
        except (ImportError, AttributeError, TypeError) as e:
            errors.append(f"methods: method {m!r} is registered but cannot be loaded ({type(e).__name__}: {e})")
    for m, cls in methods.items():
        if sweep.task not in cls.tasks:
            errors.append(f"methods: {m!r} does not support task {sweep.task!r} (it supports {', '.join(cls.tasks)})")
    for d in sweep.datasets:
        if d not in DATASETS:
            errors.append(f"datasets: unknown dataset {d!r}; known: {', '.join(sorted(DATASETS))}")
    for name, values in (("methods", sweep.methods), ("datasets", sweep.datasets), ("seeds", sweep.seeds)):
        dup = sorted({str(v) for v in values if values.count(v) > 1})
        if dup:
            errors.append(f"{name}: listed twice: {', '.join(dup)}")
    for i, o in enumerate(sweep.overrides):
        for m in o.methods:
            if m not in sweep.methods:
                errors.append(f"overrides[{i}].methods: {m!r} is not one of the sweep's methods {list(sweep.methods)}")
        for d in o.datasets:
            if d not in sweep.datasets:
                errors.append(f"overrides[{i}].datasets: {d!r} is not one of the sweep's datasets "
                              f"{list(sweep.datasets)}")
    for i, x in enumerate(sweep.exclude):
        d, _, m = x.partition("/")
        if d not in sweep.datasets or m not in sweep.methods:
            errors.append(f"exclude[{i}]: {x!r} is not a 'dataset/method' cell of this sweep")
    if len(sweep.exclude) and len(set(sweep.exclude)) == len(sweep.datasets) * len(sweep.methods):
        errors.append("exclude: every cell is excluded")
    clash = set(sweep.train) & {"max_steps", "max_seconds"}
    if clash:
        errors.append(f"train: {', '.join(sorted(clash))} belong in budget")
    metric = sweep.search.metric
    if not metric.startswith("train_"):
        if metric not in _known_metrics():
            errors.append(f"search.metric: unknown metric {metric!r}; known: {', '.join(sorted(_known_metrics()))} "
                          "(or a training loss train_<name>)")
        elif sweep.task == "classify" and metric in RECON_ONLY:
            errors.append(f"search.metric: {metric!r} needs a reconstruction (task recon), the task is classify")
        elif sweep.task == "recon" and metric in CLASSIFY_ONLY:
            errors.append(f"search.metric: {metric!r} needs class predictions (task classify), the task is recon")
    if errors:
        raise ConfigError(_message(where, errors))

    cells = []
    for d in sweep.datasets:
        for m in sweep.methods:
            if f"{d}/{m}" in sweep.exclude:
                continue
            cell, cell_errors = _cell(sweep, d, m, methods[m], resolve)
            errors += cell_errors
            if cell is not None:
                cells.append(cell)
    if errors:
        raise ConfigError(_message(where, errors))
    return Plan(sweep, tuple(cells))


def _cell(sweep: SweepConfig, dataset: str, method: str, method_cls: type, resolve) -> tuple[Cell | None, list[str]]:
    at = f"cell ({dataset}, {method})"
    method_params: dict[str, Any] = {}
    dataset_params: dict[str, Any] = {}
    train: dict[str, Any] = {**sweep.train, **{k: v for k, v in sweep.budget.model_dump().items() if v is not None}}
    for o in sweep.overrides:
        if (not o.methods or method in o.methods) and (not o.datasets or dataset in o.datasets):
            method_params.update(o.method_params)
            dataset_params.update(o.dataset_params)
            train.update(o.train)
    train.setdefault("threads", sweep.resources.cpu)
    if sweep.resources.gpu > 0:
        train.setdefault("device", "cuda")
    run = dict(method=method, dataset=dataset, task=sweep.task, scale=sweep.scale, seed=sweep.search.seed,
               method_params=method_params, dataset_params=dataset_params, train=train, cache_dir=sweep.cache_dir)
    try:
        resolved = resolve(run)
    except (ConfigError, KeyError, ValueError, TypeError) as e:
        return None, [f"{at}: " + str(e).replace("\n", "\n    ")]
    errors = []
    for k, v in resolved.dataset_cfg.model_dump().items():
        if k.endswith("_dir") and isinstance(v, str) and not Path(os.path.expanduser(v)).is_dir():
            errors.append(f"{at}: dataset {k}={v!r} is not a directory (this dataset needs your copy of the data)")
    t = resolved.train_cfg
    if t.max_steps < t.eval_every:
        errors.append(f"{at}: budget max_steps={t.max_steps} < train.eval_every={t.eval_every}: a trial would never "
                      "report before its end (no progress, no checkpoint, nothing for the scheduler)")
    if sweep.scheduler.type == "asha" and sweep.scheduler.grace_period > t.max_steps:
        errors.append(f"{at}: scheduler.grace_period={sweep.scheduler.grace_period} steps > max_steps={t.max_steps}: "
                      "no trial would reach ASHA's first rung")
    space = dict(method_cls.search_space())
    fields = set(method_cls.Config.model_fields)
    for k, dom in space.items():
        if k not in fields:
            errors.append(f"{at}: {method}.search_space() names {k!r}, not a field of {method_cls.Config.__name__}")
        if not isinstance(dom, (LogUniform, Uniform, IntRange, Choice)):
            errors.append(f"{at}: {method}.search_space()[{k!r}] is a {type(dom).__name__}, not a search domain")
    for k in method_params:  # a fixed parameter is not searched
        space.pop(k, None)
    defaults = {k: getattr(resolved.method_cfg, k) for k in space if k in fields}
    if errors:
        return None, errors
    try:
        key = data_hash(resolved.dataset_cfg)
    except (ValueError, OSError) as e:  # mist_core.data.DataError: e.g. the user's data is not where it says
        return None, [f"{at}: {e}"]
    cell = Cell(dataset, method, json.loads(json.dumps(run, default=list)), space, defaults, resolved.as_params(), key)
    return cell, errors


def _message(where: str, errors: list[str]) -> str:
    return f"invalid {where}:\n  - " + "\n  - ".join(errors)
