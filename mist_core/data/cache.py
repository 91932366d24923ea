"""A content-addressed cache of generated splits: one npz per (dataset, config, source fingerprint)."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Callable

from mist_core.config import StrictConfig
from mist_core.data.container import Splits

__all__ = ["CACHE_VERSION", "default_cache_dir", "cache_key", "cache_path", "cached"]

log = logging.getLogger(__name__)
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
    """Load `path`, or make the splits and save them there atomically (nothing is written if make fails).

    A damaged entry (unreadable, truncated, wrong arrays, a directory or anything else in place of the file) is
    removed and rebuilt, with a warning naming the entry and the reason. A cache that cannot be written is a
    warning too: the splits are made from their config either way."""
    path = Path(path)
    reason = _damage(path)
    if reason is None and path.is_file():
        try:
            return Splits.load(path)
        except Exception as e:  # noqa: BLE001 - any failure to read is a damaged entry, rebuilt from the config
            reason = f"unreadable ({type(e).__name__}: {e})"
    if reason is not None:
        log.warning("dataset cache entry %s is %s: regenerating it", path, reason)
        try:
            _remove(path)
        except OSError as e:
            log.warning("cannot remove the damaged cache entry %s (%s); the new splits will not be cached", path, e)
            return make()
    splits = make()
    try:
        splits.save(path)
    except OSError as e:
        log.warning("cannot write the dataset cache entry %s (%s): using the splits uncached", path, e)
    return splits


def _damage(path: Path) -> str | None:
    """Why the entry at `path` cannot be a cache file (a directory, a dangling link, a FIFO...), or None."""
    if path.is_symlink() and not path.exists():
        return "a dangling symbolic link"
    if not path.exists() or path.is_file():
        return None
    return "a directory, not a file" if path.is_dir() else "not a regular file"


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)  # a file, a symbolic link (not its target), a FIFO...
