"""Measurements kept the moment they exist: one JSON object per line, appended to the file named by $MIST_BENCH_ROWS.

A device call can end at any moment (its time limit, a crash, a signal): a benchmark that writes its JSON at the end
of a phase loses the whole phase. So every measurement (a method's host row, a concurrent worker's count, a paper
check part) is also appended here as soon as it is measured, flushed and fsync'd, under an exclusive lock (several
processes append to one file). Without $MIST_BENCH_ROWS, `emit` does nothing. `read` returns the complete lines; a
line cut short by a kill (the last one) is dropped.

    MIST_BENCH_ROWS=rows.jsonl python -m bench --only host ...     # each row: {"phase", "kind", "t", ...}
"""
from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any

__all__ = ["ROWS_ENV", "emit", "append", "read"]

ROWS_ENV = "MIST_BENCH_ROWS"


def append(path: str | Path, row: dict[str, Any]) -> None:
    """One line for `row` at the end of `path` (created), on disk before this returns (flush + fsync)."""
    from bench.cli import finite_json

    line = (json.dumps(finite_json(row), allow_nan=False, default=str) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)           # whole lines even when several processes append at once
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)                             # closing releases the lock


def emit(phase: str, kind: str, row: dict[str, Any]) -> None:
    """Append {"phase", "kind", "t" (Unix time), **row} to $MIST_BENCH_ROWS, if set."""
    path = os.environ.get(ROWS_ENV)
    if path:
        append(path, {"phase": phase, "kind": kind, "t": time.time(), **row})


def read(path: str | Path) -> list[dict[str, Any]]:
    """Every complete row of `path` ([] when it does not exist); a line a kill cut short is skipped."""
    p = Path(path)
    if not p.exists():
        return []
    rows = []
    for line in p.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows
