"""A content-addressed cache of generated splits: one npz per (dataset, config, source fingerprint)."""
from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path
from typing import Callable

from mist_core.config import StrictConfig
from mist_core.data.container import Splits

__all__ = ["CACHE_VERSION", "default_cache_dir", "cache_key", "cache_path", "cached"]

CACHE_VERSION = 1  # bump when a generator's output changes for the same config


def default_cache_dir() -> Path:
    """$MIST_CACHE_DIR, else ~/.cache/mist-bench."""
    return Path(os.environ.get("MIST_CACHE_DIR") or Path.home() / ".cache" / "mist-bench").expanduser()


def cache_key(name: str, cfg: StrictConfig, fingerprint: str) -> str:
    """sha256 of the dataset name, its full config, the source fingerprint and CACHE_VERSION."""
    blob = json.dumps({"name": name, "config": cfg.model_dump(mode="json"), "source": fingerprint,
                       "version": CACHE_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def cache_path(cache_dir: str | Path, name: str, key: str) -> Path:
    return Path(cache_dir) / f"{name}-{key[:24]}.npz"


def cached(path: Path, make: Callable[[], Splits]) -> Splits:
    """Load `path`, or make the splits and save them there atomically (nothing is written if make fails)."""
    if path.is_file():
        try:
            return Splits.load(path)
        except (OSError, ValueError, KeyError, AssertionError, zipfile.BadZipFile, EOFError):
            pass  # unreadable entry (e.g. damaged by hand): rebuild it
    splits = make()
    splits.save(path)
    return splits
