"""Tidy results: one row per (trial, report, metric), written as parquet beside the sweep.

    df = load_results("runs/sweeps/table1")          # a sweep dir, its results.parquet, or a dir of sweeps
    final = df[df.final & (df.phase == "seeds") & (df.metric == "rmse")]
    final.groupby(["dataset", "method"]).value.agg(["mean", "std"])

Columns (COLUMNS): sweep, trial, phase ("search" = phase-1 Optuna trials on the search seed, "seeds" = the chosen
config on every seed: the rows tables use), method, dataset, table, task, scale, seed, step, final (the row comes from
the trial's last report, the test metrics on the final evaluation set), metric, value, core_seconds (CPU seconds of
training steps so far), wall_seconds (Tune's wall time of the trial so far, evaluations included), params_json
(the resolved run config, Resolved.as_params(), as JSON). No server is needed to read them.
"""
from __future__ import annotations

import math
import os
import uuid
from pathlib import Path
from typing import Any, Iterable

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

__all__ = ["COLUMNS", "SCHEMA", "RESULTS_FILE", "report_rows", "ResultsWriter", "load_results", "write_atomic",
           "read_bytes", "delete_dir", "copy_dir"]

RESULTS_FILE = "results.parquet"
SCHEMA = pa.schema([
    ("sweep", pa.string()), ("trial", pa.string()), ("phase", pa.string()), ("method", pa.string()),
    ("dataset", pa.string()), ("table", pa.string()), ("task", pa.string()), ("scale", pa.string()),
    ("seed", pa.int64()), ("step", pa.int64()), ("final", pa.bool_()), ("metric", pa.string()),
    ("value", pa.float64()), ("core_seconds", pa.float64()), ("wall_seconds", pa.float64()),
    ("params_json", pa.string()),
])
COLUMNS = tuple(SCHEMA.names)
KEY = ("trial", "step", "final", "metric")
NOT_METRICS = {"step", "final", "core_seconds"}


def report_rows(meta: dict[str, Any], report: dict[str, Any], wall_seconds: float) -> list[dict[str, Any]]:
    """Rows of one trainer report. `meta` holds sweep, trial, phase, method, dataset, table, task, scale, seed,
    params_json; `report` the trainer's floats (step, seconds, core_seconds, final, metrics...)."""
    base = {**meta, "step": int(report["step"]), "final": bool(report.get("final", 0.0)),
            "core_seconds": float(report.get("core_seconds", math.nan)), "wall_seconds": float(wall_seconds)}
    return [{**base, "metric": k, "value": float(v)} for k, v in report.items() if k not in NOT_METRICS]


# per s3://bucket (gs://bucket): building one resolves the bucket's region, a request each time (~37 ms measured)
_FILESYSTEMS: dict[str, pafs.FileSystem] = {}


def _fs(path: str) -> tuple[pafs.FileSystem, str]:
    if "://" not in path:
        return pafs.LocalFileSystem(), os.path.abspath(path)
    scheme, rest = path.split("://", 1)
    if scheme not in ("s3", "gs") or "?" in rest:  # other schemes, and options in the URI: as pyarrow reads them
        return pafs.FileSystem.from_uri(path)
    key = f"{scheme}://{rest.split('/', 1)[0]}"
    if key not in _FILESYSTEMS:
        _FILESYSTEMS[key] = pafs.FileSystem.from_uri(path)[0]
    return _FILESYSTEMS[key], rest.rstrip("/")  # these filesystems' paths are bucket/key


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write to a hidden temporary file beside `path` (a local path or a URI such as s3://...), then rename it
    over `path`: a reader sees the old file or the new one, never half of one. Creates the directory; on failure
    the temporary file is removed. The one atomic write of the project (bench.cli.write_json_atomic uses it)."""
    fs, p = _fs(str(path))
    parent, base = os.path.split(p)
    fs.create_dir(parent, recursive=True)
    tmp = f"{parent}/.{base}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
    try:
        with fs.open_output_stream(tmp) as f:
            f.write(data)
        fs.move(tmp, p)
    except BaseException:
        if fs.get_file_info(tmp).type != pafs.FileType.NotFound:
            fs.delete_file(tmp)
        raise


def read_bytes(path: str) -> bytes | None:
    fs, p = _fs(path)
    if fs.get_file_info(p).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(p) as f:
        return f.read()


def delete_dir(path: str) -> None:
    """Delete a directory and everything in it (a local path or a URI such as s3://...)."""
    fs, p = _fs(path)
    fs.delete_dir(p)


def copy_dir(src: str, dst: str) -> None:
    """Copy a directory tree between storages (local paths or URIs such as s3://...); a missing `src` copies
    nothing. E.g. a sweep's trials/ from S3 to a local folder, where the report is built."""
    sfs, sp = _fs(src)
    if sfs.get_file_info(sp).type != pafs.FileType.Directory:
        return
    dfs, dp = _fs(dst)
    dfs.create_dir(dp, recursive=True)
    pafs.copy_files(sp, dp, source_filesystem=sfs, destination_filesystem=dfs)


def _table(rows: Iterable[dict[str, Any]]) -> pa.Table:
    rows = list(rows)
    return pa.Table.from_pylist([{c: r.get(c) for c in COLUMNS} for r in rows], schema=SCHEMA)


class ResultsWriter:
    """Accumulates rows and rewrites storage/<sweep>/results.parquet atomically; keeps rows already written."""

    def __init__(self, path: str):
        self.path = path
        self.rows: dict[tuple, dict[str, Any]] = {}
        blob = read_bytes(path)
        if blob is not None:
            for r in pq.read_table(pa.BufferReader(blob)).to_pylist():
                self.rows[tuple(r[k] for k in KEY)] = r
        self.dirty = False

    def add(self, rows: Iterable[dict[str, Any]]) -> None:
        for r in rows:
            self.rows[tuple(r[k] for k in KEY)] = r  # a report seen again after a resume replaces its old row
            self.dirty = True

    def flush(self, force: bool = False) -> None:
        if not (self.dirty or force):
            return
        sink = pa.BufferOutputStream()
        pq.write_table(_table(self.rows.values()), sink)
        write_atomic(self.path, sink.getvalue().to_pybytes())
        self.dirty = False


def load_results(path: str | os.PathLike) -> pd.DataFrame:
    """All rows of a results.parquet, a sweep dir, or every sweep under a storage dir (concatenated)."""
    path = str(path)
    if "://" not in path:
        p = Path(path)
        files = [p] if p.is_file() else ([p / RESULTS_FILE] if (p / RESULTS_FILE).is_file() else
                                         sorted(p.glob(f"*/{RESULTS_FILE}")))
        if not files:
            raise FileNotFoundError(f"no {RESULTS_FILE} at {path} (nor in its sub-directories)")
        tables = [pq.read_table(f) for f in files]
    else:
        target = path if path.endswith(".parquet") else f"{path.rstrip('/')}/{RESULTS_FILE}"
        blob = read_bytes(target)
        if blob is None:
            raise FileNotFoundError(target)
        tables = [pq.read_table(pa.BufferReader(blob))]
    df = pa.concat_tables([t.cast(SCHEMA) for t in tables]).to_pandas()
    return df.sort_values(["sweep", "phase", "dataset", "method", "seed", "trial", "step", "metric"],
                          kind="stable").reset_index(drop=True)
