"""bench item trial_split at smoke scale: a benchmark trial's core-seconds split into set-up, steps, evaluations,
figures, checkpoints and the rest, per method, and its Markdown table (no timing asserted, only the accounting)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.trial_split import PARTS, trial_split

ROOT = Path(__file__).resolve().parent.parent
TINY = {"max_steps": 4, "eval_every": 2, "eval_images": 4}


@pytest.mark.parametrize("method", ["mist", "trivial"])
def test_parts_add_up_to_the_trial(method):
    r = trial_split(method, "smoke", checkpoint_interval_s=0.0, train=TINY)
    cs = r["core_seconds"]
    assert list(cs) == list(PARTS) and all(v >= 0 for v in cs.values())
    assert sum(cs.values()) == pytest.approx(r["total_core_seconds"], rel=1e-6)   # other is the remainder
    assert cs["setup"] > 0 and cs["evaluations"] > 0 and cs["figures"] > 0 and cs["checkpoints"] > 0
    if method == "mist":
        assert r["steps"] == 4 and r["reports"] == 2 and r["checkpoints"] == 2 and cs["step"] > 0
    assert 0 <= r["step_share"] <= 1


def test_throttled_checkpoints_keep_the_final_one():
    train = {**TINY, "max_steps": 6}                              # reports at steps 2, 4 and the final one at 6
    assert trial_split("grid", "smoke", checkpoint_interval_s=0.0, train=train)["checkpoints"] == 3
    r = trial_split("grid", "smoke", checkpoint_interval_s=1e9, train=train)
    assert r["reports"] == 3 and r["checkpoints"] == 2          # the first report's, then the final one


def test_bench_item_json_and_table(tmp_path):
    out = tmp_path / "split.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MIST_CACHE_DIR": str(tmp_path / "cache"),
           "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-m", "bench", "--tiny", "--only", "trial_split", "--methods", "grid",
                        "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(out.read_text())
    (row,) = r["items"]["trial_split"]["rows"]
    assert row["method"] == "grid" and row["steps"] == 4 and set(row["core_seconds"]) == set(PARTS)
    from bench.table import render
    md = render(r)
    assert "A benchmark trial's core-seconds by part" in md and re.search(r"\| grid +\| smoke +\| 4 +\|", md)
