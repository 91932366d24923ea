"""The paper check (bench/paper_check.py) at smoke scale on the CPU, so it cannot rot while no GPU is lent.

Each test runs `python -m bench.paper_check` in a subprocess from the repository root, on 1 thread (a few seconds).
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _run(*args: str, code: str | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "bench.paper_check", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=ENV)


def _unit(x) -> bool:
    return isinstance(x, float) and 0.0 <= x <= 1.0


def test_paper_check_smoke(tmp_path):
    out = tmp_path / "res" / "check.json"
    proc = _run("--scale", "smoke", "--device", "cpu", "--threads", "1", "--steps", "5", "--bf16",
                "--compare-fp32", "2", "--profile-steps", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-4000:]
    r = json.loads(out.read_text())
    assert {"machine", "settings", "data", "bf16_vs_fp32", "timing", "cut", "parts", "paper", "total_seconds"} <= set(r)
    assert r["machine"]["torch"] == __import__("torch").__version__ and r["machine"]["torch_threads"] == 1
    assert r["settings"]["bf16"] is True and r["data"]["n_train"] == 64
    assert not {"ray", "mlflow", "optuna"} & set(r["loaded_modules"])  # the device image has none of them
    assert r["cut"]["cut"] is False and r["cut"]["fraction"] == 1.0
    for p in ("mist_classify", "mist_recon", "grid_recon"):
        x = r["parts"][p]
        assert x["steps"] == x["steps_requested"] == 5 and not x["stopped_by_time"]
        assert x["images_per_s"] > 0 and x["train_seconds"] > 0 and x["peak_gpu_mem_mb"] is None
        assert x["losses"] and x["losses"][-1]["step"] == 5.0 and math.isfinite(x["losses"][-1]["task"])
        assert _unit(x["metrics"]["det_rate"]) and r["timing"][p]["step_ms"] > 0
    mc = r["parts"]["mist_classify"]["metrics"]
    assert all(_unit(mc[k]) for k in ("cls_acc", "both", "ap_iou50")) and mc["both"] <= mc["det_rate"]
    assert all(0 < r["parts"][p]["metrics"]["rmse"] < 1 for p in ("mist_recon", "grid_recon"))
    cmp = r["bf16_vs_fp32"]
    assert cmp["fp32"]["steps"] == cmp["bf16"]["steps"] == 2 and _unit(cmp["bf16"]["det_rate"])

    lines = proc.stdout.strip().splitlines()
    assert lines[-1].startswith("| grid recon: detection") and "| figure | ours | paper |" in lines
    assert any(line.startswith("| MIST classify: Both |") and line.endswith("| 97.5% |") for line in lines)
    assert any(line.startswith("| MIST recon: RMSE |") and line.endswith("| 0.053 |") for line in lines)


def test_paper_check_dry_run(tmp_path):
    out = tmp_path / "check.json"
    proc = _run("--dry-run", "--device", "cpu", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "nothing trained, no JSON written" in proc.stdout and "device cpu" in proc.stdout
    assert "| mist_classify | mist | classify | 6,250 | 32 | 200,000 | 10.0 |" in proc.stdout
    assert "| grid_recon | grid | recon | 6,250 | 32 | 200,000 | 10.0 |" in proc.stdout
    assert not out.exists()
    bad = _run("--dry-run", "--device", "cpu", "--recon-steps", "0")
    assert bad.returncode == 2 and "--recon-steps must be >= 1" in bad.stderr


def test_paper_check_compile_falls_back(tmp_path):
    """A torch.compile that fails at the first step leaves each part training eagerly, with the reason in the JSON."""
    out = tmp_path / "check.json"
    code = ("import sys, torch\n"
            "class Broken(torch.nn.Module):\n"
            "    def forward(self, *a, **k): raise RuntimeError('no compiler here')\n"
            "torch.compile = lambda fn, **kw: Broken()\n"
            "from bench.paper_check import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    proc = _run("--scale", "smoke", "--device", "cpu", "--threads", "1", "--steps", "4", "--compile",
                "--out", str(out), code=code)
    assert proc.returncode == 0, proc.stderr[-4000:]
    r = json.loads(out.read_text())
    for p, t in r["timing"].items():
        assert "torch.compile failed" in t["compile_error"] and "no compiler here" in t["compile_error"]
        assert r["parts"][p]["steps"] == 4

