"""The sweep config: its schema, loading from YAML, and validation of every (dataset, method) cell up front.

A sweep config is data (sweeps/configs/*.yaml). Unknown keys and wrong types are refused; then `plan(cfg)`
resolves every (dataset, method) cell, so an unknown method or dataset, a task a method does not support, a bad
method/dataset/train parameter (sweeps.preflight's checks, which every entry point shares: a non-finite number, a
learning rate far beyond its preset, a seed, a batch larger than the training data, a device, corrupt source data),
an impossible budget, a storage folder or MLflow store that cannot be written is ONE ConfigError that names it, raised
before Ray or MLflow start. `--check` and the real run share it; the real run plans again with
`import_methods=True` (a `module:Class` method is imported only then) and with its --storage / --tracking-uri.

Data folders (dataset parameters named *_dir) and cache_dir given relative to a config file are relative to that
file's folder (load_sweep); the plan holds them absolute, since trials run in other working directories.

    sweep = load_sweep("sweeps/configs/table1.yaml")
    p = plan(sweep)            # raises ConfigError
    for cell in p.cells: ...   # cell.run: the resolved RunConfig trials run (seed = search seed)
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, field_validator

from mist_core.config import ConfigError, StrictConfig, load_yaml, parse_config
from mist_core.method import Choice, IntRange, LogUniform, Uniform
from mist_core.presets import Scale
from mist_core.train import RunConfig, resolve
from sweeps.preflight import nonfinite_problems, run_problems, source_problems, where_problems

__all__ = ["Budget", "Search", "Scheduler", "Resources", "Override", "Slurm", "SweepConfig", "Cell", "Plan", "flat_params",
           "load_sweep", "find_config", "plan", "CONFIG_DIR"]

CONFIG_DIR = Path(__file__).parent / "configs"
# numpy's legacy seeding (np.random.seed, RandomState) takes 0 .. 2**32 - 1
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]
METHOD_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")  # module.path:ClassName


class Budget(StrictConfig):
    """Overrides of the scale's training budget for every trial (None = the scale preset's)."""

    max_steps: int | None = Field(None, ge=1)
    max_seconds: float | None = Field(None, gt=0)


class Search(StrictConfig):
    """Phase 1: an Optuna search per (dataset, method) on seed `seed`; the same num_samples for every method."""

    num_samples: int = Field(1, ge=1)  # 1 (or an empty search space) = no search: the method's defaults
    metric: str                         # a key of the trainer's report, e.g. rmse, det_rate, both, ap_iou50
    mode: Literal["min", "max"]
    seed: Seed = 0                      # the seed of search trials and of the Optuna sampler


class Scheduler(StrictConfig):
    """ASHA early stopping of phase-1 trials, in training steps (its time attribute is the report's `step`)."""

    type: Literal["asha", "none"] = "none"
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(3.0, gt=1)


# `resources.gpu: auto`: this share of a GPU per trial when the machine that plans the sweep has CUDA, else none. Four
# trials per GPU keeps a GPU busy between one trial's kernels (host work, evaluation, logging); bench item
# `concurrency` measures the curve on a given GPU (python -m bench --only concurrency --device cuda).
AUTO_GPU_SHARE = 0.25


class Resources(StrictConfig):
    """Per trial. Torch threads = cpu. gpu may be fractional (several trials share a GPU) or a whole number; "auto"
    is AUTO_GPU_SHARE where this machine has a CUDA device and 0 where it has none (a local sweep: the quick
    benchmark; a cluster's configs give the share their GPUs were measured to take)."""

    cpu: int = Field(1, ge=1)
    gpu: float = Field(0.0, ge=0)

    @field_validator("gpu", mode="before")
    @classmethod
    def _auto(cls, v: Any) -> Any:
        if v == "auto":
            import torch

            return AUTO_GPU_SHARE if torch.cuda.is_available() else 0.0
        return v

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


# SLURM's --time formats: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS
SLURM_TIME = r"^(\d+-\d+(:\d+){0,2}|\d+(:\d+){0,2})$"


class Slurm(StrictConfig):
    """How `mist-bench slurm` runs the sweep as one SLURM job (its flags override these; sweeps.slurm)."""

    nodes: int = Field(1, ge=1)
    gpus_per_node: int = Field(0, ge=0)
    cpus_per_node: int | None = Field(None, ge=1)   # None: what the node's trials ask for (resources.cpu x trials)
    time: str = Field("01:00:00", pattern=SLURM_TIME)
    partition: str | None = None
    account: str | None = None
    signal_s: int = Field(300, ge=0)        # SIGTERM this many seconds before the time limit (0: none)
    requeue: bool = True                    # after a SIGTERM, requeue the job (it resumes the sweep)
    tracking: Literal["auto", "sqlite", "server"] = "auto"
    ray_port: int = Field(6379, ge=1, le=65535)
    tracking_port: int = Field(5000, ge=1, le=65535)
    postgres_port: int = Field(5432, ge=1, le=65535)
    join_timeout_s: float = Field(300.0, gt=0)
    job_dir: str = "slurm"                  # the job's script, log and MLflow store: job_dir/<sweep name>


class SweepConfig(StrictConfig):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    table: str | None = None                  # the paper table this reproduces ("1".."4"), None for smoke/quick
    task: Literal["recon", "classify"]
    scale: Scale
    datasets: tuple[str, ...] = Field(min_length=1)
    methods: tuple[str, ...] = Field(min_length=1)
    seeds: tuple[Seed, ...] = Field((0,), min_length=1)
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
    cache_dir: str | None = None              # dataset cache (None = mist_core.data's default; relative: to the
                                              # config file's folder)
    overrides: tuple[Override, ...] = ()
    exclude: tuple[str, ...] = ()             # "dataset/method" cells not run (e.g. baselines on Gabor in Table 1)
    slurm: Slurm | None = None                # `mist-bench slurm`'s job (nodes, GPUs, time limit...)

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
    return parse_config(SweepConfig, _anchor(_expand(data, p.stem), p.resolve().parent), where=p.stem)


def _anchor(data: Any, base: Path) -> Any:
    """The config's data folders (overrides' dataset *_dir parameters, cache_dir) relative to `base`, made absolute:
    a path in a config file means the same folder wherever the sweep is started from."""
    if not isinstance(data, dict):
        return data
    out = dict(data)
    if isinstance(out.get("cache_dir"), str):
        out["cache_dir"] = _absolute(out["cache_dir"], base)
    if isinstance(out.get("overrides"), list):
        out["overrides"] = [_anchor_override(o, base) for o in out["overrides"]]
    return out


def _anchor_override(o: Any, base: Path) -> Any:
    if not (isinstance(o, dict) and isinstance(o.get("dataset_params"), dict)):
        return o
    params = {k: _absolute(v, base) if k.endswith("_dir") and isinstance(v, str) else v
              for k, v in o["dataset_params"].items()}
    return {**o, "dataset_params": params}


def _absolute(path: str, base: str | Path | None = None) -> str:
    """A local path made absolute against `base` (default: the working directory); a URI (s3://...) unchanged."""
    if "://" in path:
        return path
    return os.path.abspath(Path(base or os.getcwd()) / os.path.expanduser(path))


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
    run: RunConfig                    # what its trials run: every method, dataset and train field resolved and
                                      # explicit, data folders absolute; seed = the search seed
    space: dict[str, Any]             # field -> LogUniform | Uniform | IntRange | Choice (fixed params removed)
    defaults: dict[str, Any]          # the method's value of each searched field
    data_hash: str                    # identifies the dataset's content (its cache key)
    imported: bool = True             # False: a module:Class method left unimported (--check): its config unchecked

    @property
    def key(self) -> str:
        return f"{self.dataset}__{self.method}"

    @property
    def label(self) -> str:
        """The method's name in results (mist_core.registry.display_name); the config's spelling if not imported."""
        from mist_core.registry import display_name

        return display_name(self.method) if self.imported else self.method

    @property
    def params(self) -> dict[str, Any]:
        return flat_params(self.run)


@dataclass(frozen=True)
class Plan:
    sweep: SweepConfig
    cells: tuple[Cell, ...]

    def needs_search(self, cell: Cell) -> bool:
        return self.sweep.search.num_samples > 1 and bool(cell.space)

    def n_trials(self) -> int:
        n_search = sum(self.sweep.search.num_samples for c in self.cells if self.needs_search(c))
        return n_search + len(self.cells) * len(self.sweep.seeds)

    def unimported(self) -> list[str]:
        """The module:Class methods this plan did not import (their search spaces and configs are unchecked)."""
        return sorted({c.method for c in self.cells if not c.imported})

    def describe(self) -> list[str]:
        """What --check prints: the sweep's size and, per cell, what it searches and its data."""
        more = " (at least: not-imported methods may add search trials)" if self.unimported() else ""
        lines = [f"{self.sweep.name}: {len(self.cells)} cells, {self.n_trials()} trials{more}: OK"]
        for c in self.cells:
            if c.imported:
                search = sorted(c.space) if self.needs_search(c) else "none"
            else:
                search = "? (not imported at --check; the real run imports it before Ray starts and checks it then)"
            lines.append(f"  {c.dataset}/{c.method}: search {search}, data {c.data_hash}")
        return lines


def flat_params(run: RunConfig) -> dict[str, Any]:
    """A run's loggable parameters as Resolved.as_params() has them: for an explicit run (a cell's), the same values,
    without resolving it again."""
    out: dict[str, Any] = {k: getattr(run, k) for k in ("method", "dataset", "task", "scale", "seed")}
    for prefix, params in (("method", run.method_params), ("dataset", run.dataset_params), ("train", run.train)):
        out.update({f"{prefix}.{k}": v for k, v in params.items()})
    return out


RECON_ONLY = {"rmse"}
CLASSIFY_ONLY = {"cls_acc", "both"}


def _known_metrics() -> set[str]:
    from mist_core import metrics

    return {"rmse", "det_rate", "det_rate_all", "mean_iou_matched", "cls_acc", "both",
            *(metrics.ap_key(t) for t in metrics.AP_THRESHOLDS)}


def data_hash(dataset_cfg: StrictConfig) -> str:
    """The dataset's cache key (name, full config, source-data fingerprint), as mist_core.data computes it."""
    from mist_core.data.cache import cache_key
    from mist_core.data.registry import ENTRIES, dataset_name

    name = dataset_name(dataset_cfg)
    return cache_key(name, dataset_cfg, ENTRIES[name].fingerprint(dataset_cfg))[:24]


def plan(sweep: SweepConfig, *, import_methods: bool = False, storage: str | None = None,
         tracking_uri: str | None = None) -> Plan:
    """Validate the whole sweep; raise one ConfigError listing every problem, or return its cells.

    A method named 'module:Class' is imported only with `import_methods` (the real run): at --check its name's syntax
    is checked and its cells resolved without it (dataset, training, overrides), since importing runs the module's
    code. `storage` / `tracking_uri` (the command line's) replace the config's where it is checked they can be
    written."""
    from mist_core.data import DATASETS
    from mist_core.registry import BUILTIN, get_method

    where = f"sweep {sweep.name!r}"
    errors: list[str] = []
    methods: dict[str, type | None] = {}   # None: not imported
    for m in sweep.methods:
        if m not in BUILTIN and ":" in m and not import_methods:
            if METHOD_PATH.match(m):
                methods[m] = None
            else:
                errors.append(f"methods: {m!r} is neither a registered method nor 'package.module:ClassName'")
            continue
        try:
            methods[m] = get_method(m)
        except KeyError as e:
            errors.append(f"methods: {e.args[0]}")
        except (ImportError, AttributeError, TypeError) as e:
            errors.append(f"methods: method {m!r} cannot be loaded ({type(e).__name__}: {e})")
    by_name: dict[str, list[str]] = {}
    for m, cls in methods.items():
        if cls is not None:
            by_name.setdefault(cls.name, []).append(m)
    for name, ms in by_name.items():
        if len(ms) > 1:   # their rows, lines and MLflow tags would be one method's
            errors.append(f"methods: {' and '.join(ms)} share the name {name!r} (a method's results carry its "
                          "class's `name`): give one another")
    for m, cls in methods.items():
        if cls is not None and sweep.task not in cls.tasks:
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
    # overrides and train are checked resolved, per cell
    errors += [e for k, v in sweep.model_dump().items() if k not in ("overrides", "train")
               for e in nonfinite_problems(v, k)]
    errors += where_problems(storage or sweep.storage, tracking_uri or sweep.tracking_uri,
                             storage_field="--storage" if storage else "storage",
                             uri_field="--tracking-uri" if tracking_uri else "tracking_uri")
    if errors:
        raise ConfigError(_message(where, errors))

    cells = []
    for d in sweep.datasets:
        for m in sweep.methods:
            if f"{d}/{m}" in sweep.exclude:
                continue
            cell, cell_errors = _cell(sweep, d, m, methods[m])
            errors += cell_errors
            if cell is not None:
                cells.append(cell)
    if errors:
        raise ConfigError(_message(where, errors))
    return Plan(sweep, tuple(cells))


def _cell(sweep: SweepConfig, dataset: str, method: str, method_cls: type | None) -> tuple[Cell | None, list[str]]:
    """The cell's resolved run, or the problems found. `method_cls` None: the method is not imported (--check)."""
    from mist_core.data import dataset_config
    from mist_core.presets import DATA_PRESETS, train_config

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
               method_params=method_params, dataset_params=dataset_params, train=train,
               cache_dir=None if sweep.cache_dir is None else _absolute(sweep.cache_dir))
    try:
        if method_cls is not None:
            resolved = resolve(run)
            method_cfg, dataset_cfg, train_cfg = resolved.method_cfg, resolved.dataset_cfg, resolved.train_cfg
        else:
            parse_config(RunConfig, run, where="run")
            method_cfg = None
            dataset_cfg = dataset_config(dataset, {**DATA_PRESETS[sweep.scale], **dataset_params})
            train_cfg = train_config(sweep.scale, train)
        # data folders absolute: trials run in other working directories
        dataset_cfg = dataset_cfg.replace(**{k: _absolute(v) for k, v in dataset_cfg.model_dump().items()
                                             if k.endswith("_dir") and isinstance(v, str)})
    except (ConfigError, KeyError, ValueError, TypeError) as e:
        return None, [f"{at}: " + str(e).replace("\n", "\n    ")]
    # the checks every entry point shares (sweeps.preflight), then the sweep's own
    method_values = method_cfg.model_dump() if method_cfg is not None else method_params
    preset = method_cls.default_config(sweep.scale).model_dump() if method_cls is not None else None
    errors = [f"{at}: {e}" for e in run_problems(method, method_values, preset, dataset, dataset_cfg.model_dump(),
                                                 train_cfg.model_dump(), sweep.search.seed, gpu=sweep.resources.gpu)]
    for k, v in dataset_cfg.model_dump().items():
        if k.endswith("_dir") and isinstance(v, str) and not Path(v).is_dir():
            errors.append(f"{at}: dataset {k}={v!r} is not a directory (this dataset needs your copy of the data)")
    t = train_cfg
    if t.max_steps < t.eval_every:
        errors.append(f"{at}: budget max_steps={t.max_steps} < train.eval_every={t.eval_every}: a trial would never "
                      "report before its end (no progress, no checkpoint, nothing for the scheduler)")
    if sweep.scheduler.type == "asha" and sweep.scheduler.grace_period > t.max_steps:
        errors.append(f"{at}: scheduler.grace_period={sweep.scheduler.grace_period} steps > max_steps={t.max_steps}: "
                      "no trial would reach ASHA's first rung")
    space: dict[str, Any] = {}
    if method_cls is not None:
        space = dict(method_cls.search_space())
        fields = set(method_cls.Config.model_fields)
        for k, dom in space.items():
            if k not in fields:
                errors.append(f"{at}: {method}.search_space() names {k!r}, not a field of {method_cls.Config.__name__}")
            if not isinstance(dom, (LogUniform, Uniform, IntRange, Choice)):
                errors.append(f"{at}: {method}.search_space()[{k!r}] is a {type(dom).__name__}, not a search domain")
        for k in method_params:  # a fixed parameter is not searched
            space.pop(k, None)
    # the source files read where they are local, before Ray: a corrupt one is named here, not in a trial
    errors = errors or [f"{at}: {e}" for e in source_problems(dataset_cfg)]
    if errors:
        return None, errors
    try:
        key = data_hash(dataset_cfg)
    except (ValueError, OSError) as e:  # mist_core.data.DataError: e.g. the user's data is not where it says
        return None, [f"{at}: {e}"]
    # what trials run: every field explicit, so the run is the one validated here whatever the presets say later
    run = {**run, "dataset_params": dataset_cfg.model_dump(mode="json"), "train": train_cfg.model_dump(mode="json")}
    if method_cfg is None:
        return Cell(dataset, method, parse_config(RunConfig, run, where="run"), {}, {}, key, imported=False), []
    resolved = resolve({**run, "method_params": method_cfg.model_dump(mode="json")})
    return Cell(dataset, method, resolved.run, space, {k: getattr(resolved.method_cfg, k) for k in space}, key), []


def _message(where: str, errors: list[str]) -> str:
    return f"invalid {where}:\n  - " + "\n  - ".join(errors)
