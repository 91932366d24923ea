"""Datasets by name: their config classes, generators, source fingerprints and checks, and the cached loader."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from mist_core.config import ConfigError, StrictConfig, parse_config
from mist_core.data.cache import cache_key, cache_path, cached, default_cache_dir
from mist_core.data.container import Splits
from mist_core.data.digits import digit_pools, source_fingerprint
from mist_core.data.gabor import GaborConfig, generate_gabor
from mist_core.data.mnist_multi import (MnistEasyConfig, MnistHardConfig, MnistHardK1to9Config, MnistHardK3to9Config,
                                        MnistHardK6to9Config, MnistHardK9Config, MnistUnevenConfig,
                                        generate_easy, generate_hard, generate_uneven)
from mist_core.data.svhn import SvhnConfig, check_svhn, generate_svhn, svhn_fingerprint

__all__ = ["DatasetEntry", "ENTRIES", "DATASETS", "dataset_config", "dataset_name", "load_splits", "check_source"]


@dataclass(frozen=True)
class DatasetEntry:
    config: type[StrictConfig]
    generate: Callable[[Any], Splits]   # config -> Splits, deterministic
    fingerprint: Callable[[Any], str]   # config -> hash of the source data it reads ("" if none)
    check: Callable[[Any], None] = lambda cfg: None  # DataError naming the source file that is missing or corrupt


def _digits(cfg: Any) -> str:
    return source_fingerprint(cfg.digits_dir)


def _check_digits(cfg: Any) -> None:
    if cfg.digits_dir is not None:
        digit_pools(cfg.digits_dir)  # reads and validates every file (kept in memory for this process's run)


ENTRIES: dict[str, DatasetEntry] = {
    "mnist_easy": DatasetEntry(MnistEasyConfig, generate_easy, _digits, _check_digits),
    "mnist_hard": DatasetEntry(MnistHardConfig, generate_hard, _digits, _check_digits),
    "mnist_hard_k9": DatasetEntry(MnistHardK9Config, generate_hard, _digits, _check_digits),
    "mnist_hard_k6_9": DatasetEntry(MnistHardK6to9Config, generate_hard, _digits, _check_digits),
    "mnist_hard_k3_9": DatasetEntry(MnistHardK3to9Config, generate_hard, _digits, _check_digits),
    "mnist_hard_k1_9": DatasetEntry(MnistHardK1to9Config, generate_hard, _digits, _check_digits),
    "mnist_uneven": DatasetEntry(MnistUnevenConfig, generate_uneven, _digits, _check_digits),
    "gabor": DatasetEntry(GaborConfig, generate_gabor, lambda cfg: ""),
    "svhn": DatasetEntry(SvhnConfig, generate_svhn, svhn_fingerprint, check_svhn),
}
DATASETS: dict[str, type[StrictConfig]] = {name: e.config for name, e in ENTRIES.items()}


def dataset_config(name: str, overrides: dict[str, Any] | None = None) -> StrictConfig:
    """The validated config of dataset `name`; ConfigError naming an unknown dataset, key or bad value."""
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    return parse_config(DATASETS[name], overrides, where=name)


def dataset_name(cfg: StrictConfig) -> str:
    """The registry name of a dataset config (by its exact type)."""
    for name, cls in DATASETS.items():
        if type(cfg) is cls:
            return name
    raise ConfigError(f"{type(cfg).__name__} is not a dataset config; known: {', '.join(sorted(DATASETS))}")


def check_source(cfg: StrictConfig) -> None:
    """Read and validate the source files `cfg` names (the user's MNIST IDX files, SVHN's digitStruct.mat), before a
    run: DataError naming the file and what is wrong. Generated data has none."""
    ENTRIES[dataset_name(cfg)].check(cfg)


def load_splits(cfg: StrictConfig, cache_dir: str | Path | None = None, *, use_cache: bool = True) -> Splits:
    """The train/test splits of `cfg`, generated once and then read from the cache.

    cache_dir: None -> $MIST_CACHE_DIR or ~/.cache/mist-bench. The cache key hashes the dataset name, the
    full config and a fingerprint of the source files, so a change to any of them makes a new entry.
    """
    name = dataset_name(cfg)
    entry = ENTRIES[name]
    if not use_cache:
        return entry.generate(cfg)
    key = cache_key(name, cfg, entry.fingerprint(cfg))
    path = cache_path(default_cache_dir() if cache_dir is None else Path(cache_dir).expanduser(), name, key)
    return cached(path, lambda: entry.generate(cfg))
