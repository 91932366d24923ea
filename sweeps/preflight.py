"""The checks every entry point runs before any work: can this run (or sweep) start at all.

One set for `mist-bench train`, `preview`, `sweep` (sweeps.config.plan, also at --check), `python -m bench`, the
ladder and the paper check: non-finite numbers, learning rates far beyond their preset, seeds numpy refuses, unknown
or absent devices, a batch larger than the training data, source data files that are missing or corrupt, and (for a
sweep) a storage folder or MLflow store that cannot be written. Looking only (nothing is created): each function
returns the problems as lines naming the field or file; `check_run` raises them as one ConfigError.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from sweeps.storage import folder_problem

__all__ = ["device_problems", "where_problems", "nonfinite_problems", "dataset_problems", "run_problems",
           "resolved_problems", "source_problems", "check_run", "check_dataset", "SEED_MAX", "LR_CEILING"]

DEVICE = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")
SEED_MAX = 2**32 - 1  # numpy's legacy seeding (np.random.seed, RandomState) takes 0 .. 2**32 - 1
# a learning rate this many times its preset's is taken for a typo: at best it wrecks the run, at worst it makes NaN
# deep inside a network (an error far from the field that caused it)
LR_CEILING = 1000.0
LEARNING_RATE = re.compile(r"(^|_)lr($|_)")  # lr, lr_task, kp_lr (not lr_final: a fraction, bounded by its type)


def device_problems(device: str, gpu: float | None = None, field: str = "train.device") -> list[str]:
    """A device a run cannot use: an unknown name; MPS on a machine without it. `gpu` None: the run is in this
    process, so CUDA must be visible to torch here, index included. `gpu` a number: a sweep's trial, which Ray gives
    that many GPUs (whether the cluster has them is checked once Ray is up: sweeps.cluster)."""
    m = DEVICE.match(device)
    if m is None:
        return [f"{field}={device!r}: unknown device (cpu, cuda, cuda:N or mps)"]
    index = int(m.group(2)[1:]) if m.group(2) else 0
    if device.startswith("cuda") and gpu is None:
        import torch

        if not torch.cuda.is_available():
            return [f"{field}={device!r}: torch sees no CUDA device here (torch.cuda.is_available() is False)"]
        if index >= torch.cuda.device_count():
            return [f"{field}={device!r}: this machine has CUDA devices 0..{torch.cuda.device_count() - 1} only"]
    elif device.startswith("cuda"):
        if gpu <= 0:
            return [f"{field}={device!r} but resources.gpu=0: Ray gives a trial no GPU unless it asks for one"]
        visible = max(1, int(gpu))  # Ray shows a trial only its own GPUs, numbered from 0
        if index >= visible:
            return [f"{field}={device!r}: a trial with resources.gpu={gpu:g} sees GPUs 0..{visible - 1} only"]
    if device == "mps":
        import torch

        if not torch.backends.mps.is_available():
            return [f"{field}='mps': this machine has no MPS device (torch.backends.mps.is_available() is False)"]
    return []


def nonfinite_problems(value: Any, path: str) -> list[str]:
    """'path=inf: not a finite number' for every non-finite float in `value` (nested dicts, lists, tuples)."""
    if isinstance(value, float) and not math.isfinite(value):
        return [f"{path}={value}: not a finite number"]
    if isinstance(value, dict):
        return [e for k, v in value.items() for e in nonfinite_problems(v, f"{path}.{k}")]
    if isinstance(value, (list, tuple)):
        return [e for i, v in enumerate(value) for e in nonfinite_problems(v, f"{path}.{i}")]
    return []


def dataset_problems(dataset: str, values: dict[str, Any]) -> list[str]:
    """A dataset config's non-finite numbers and a seed outside 0..SEED_MAX, named datasets.<d>.<field>."""
    errors = [e for k, v in values.items() for e in nonfinite_problems(v, f"datasets.{dataset}.{k}")]
    return errors + _seed_problems(values.get("seed"), f"datasets.{dataset}.seed")


def run_problems(method: str, method_values: dict[str, Any], preset: dict[str, Any] | None, dataset: str,
                 dataset_values: dict[str, Any], train_values: dict[str, Any], seed: int,
                 gpu: float | None = None) -> list[str]:
    """Why one run could not train, each line naming its field as a sweep config does (methods.<m>.<field>,
    datasets.<d>.<field>, train.<field>, seed): dataset_problems; a non-finite number; a learning rate over
    LR_CEILING times its preset (`preset`: the method's config at the run's scale; None: not known, e.g. a method
    not imported); a seed outside 0..SEED_MAX; a batch larger than the training data (for every method: one with
    nothing to learn would silently run on fewer images than its batch); a device the run cannot use (`gpu`: see
    device_problems)."""
    errors = dataset_problems(dataset, dataset_values)
    for values, prefix in ((method_values, f"methods.{method}"), (train_values, "train")):
        errors += [e for k, v in values.items() for e in nonfinite_problems(v, f"{prefix}.{k}")]
    for k, v in method_values.items():
        base = (preset or {}).get(k)
        if (LEARNING_RATE.search(k) and isinstance(v, (int, float)) and isinstance(base, (int, float)) and base > 0
                and math.isfinite(v) and v > LR_CEILING * base):
            errors.append(f"methods.{method}.{k}={v:g}: a learning rate over {LR_CEILING:g} times its preset "
                          f"({base:g}); refused as a likely typo")
    errors += _seed_problems(seed, "seed")
    n_train, batch = dataset_values.get("n_train"), train_values.get("batch_size")
    if isinstance(n_train, int) and isinstance(batch, int) and batch > n_train:
        errors.append(f"train.batch_size={batch} > datasets.{dataset}.n_train={n_train}: not one whole training "
                      "batch")
    return errors + device_problems(str(train_values.get("device", "cpu")), gpu)


def _seed_problems(value: Any, field: str) -> list[str]:
    if isinstance(value, int) and not 0 <= value <= SEED_MAX:
        return [f"{field}={value}: a seed must be in 0..{SEED_MAX} (numpy's seeds)"]
    return []


def resolved_problems(r: Any, gpu: float | None = None) -> list[str]:
    """run_problems of a mist_core.train.Resolved run."""
    return run_problems(r.run.method, r.method_cfg.model_dump(), r.method_cls.default_config(r.run.scale).model_dump(),
                        r.run.dataset, r.dataset_cfg.model_dump(), r.train_cfg.model_dump(), r.run.seed, gpu)


def source_problems(dataset_cfg: Any) -> list[str]:
    """The dataset's source files (the user's MNIST IDX files, SVHN's digitStruct.mat) missing or corrupt: the data
    layer's one line naming the file, as a trial reading them would raise it; [] for generated data. Reads them, so
    only where they are local: a trial on another node reads them again and fails with the same line."""
    from mist_core.data import DataError, check_source

    try:
        check_source(dataset_cfg)
    except DataError as e:
        return [str(e)]
    return []


def check_run(r: Any, gpu: float | None = None) -> None:
    """One ConfigError listing resolved_problems of a Resolved run; then its source files checked (a DataError)."""
    from mist_core.data import check_source

    _raise("run", resolved_problems(r, gpu))
    check_source(r.dataset_cfg)


def check_dataset(dataset: str, cfg: Any) -> None:
    """One ConfigError listing dataset_problems of a dataset config; then its source files checked (a DataError)."""
    from mist_core.data import check_source

    _raise("dataset", dataset_problems(dataset, cfg.model_dump()))
    check_source(cfg)


def _raise(what: str, errors: list[str]) -> None:
    from mist_core.config import ConfigError

    if errors:
        raise ConfigError(f"invalid {what}:\n  - " + "\n  - ".join(errors))


def where_problems(storage: str, tracking_uri: str, storage_field: str = "storage",
                   uri_field: str = "tracking_uri") -> list[str]:
    """Why the sweep could not use its storage (sweeps.storage.location_problems: a scheme it does not support, a
    likely typo, a local folder that cannot be written) or write its MLflow store (local paths only: a server is
    reached by sweeps.storage.check_storage and sweeps.tracking.check_server), or why MLflow would not know the
    store's URI scheme. Without the network."""
    from sweeps import tracking
    from sweeps.storage import location_problems

    problems = location_problems(storage, storage_field)
    shown = tracking.redact_uri(tracking_uri)
    scheme = tracking_uri.split("://", 1)[0] if "://" in tracking_uri else ""
    known = _mlflow_schemes()
    if scheme and known is not None and scheme.split("+", 1)[0] not in known:
        problems.append(f"{uri_field} {shown!r}: unknown scheme {scheme!r}; MLflow's tracking stores: "
                        f"{', '.join(sorted(k for k in known if k))} (or a local folder)")
        return problems
    uri = tracking.absolute_uri(tracking_uri)
    db = tracking.sqlite_path(uri)
    if db is not None:
        if db.exists() and not db.is_file():
            problems.append(f"{uri_field} {shown!r}: {tracking.redact_uri(str(db))} is not a file")
        else:
            p = folder_problem(db.parent)
            if p:
                problems.append(f"{uri_field} {shown!r}: {p}")
    elif "://" not in uri and not uri.startswith(("databricks", "uc", "file:")):  # a local folder store
        p = folder_problem(Path(uri))
        if p:
            problems.append(f"{uri_field} {shown!r}: {p}")
    return problems


def _mlflow_schemes() -> set[str] | None:
    """The URI schemes MLflow has a tracking store for (plugins included); None if MLflow cannot tell."""
    try:
        from mlflow.tracking._tracking_service.utils import _tracking_store_registry
    except ImportError:
        return None
    return set(getattr(_tracking_store_registry, "_registry", {})) or None
