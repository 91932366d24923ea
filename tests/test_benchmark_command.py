"""The README's main job: `mist-bench benchmark` (what `make benchmark` runs) end to end at smoke scale."""
from __future__ import annotations

import os
import subprocess
import sys

PY = sys.executable


def test_benchmark_command_runs_again_only_when_asked(tmp_path):
    """`mist-bench benchmark` (what `make benchmark` runs): sweep + report, the report's path printed last; a second
    run of the same scale is refused (exit 2) unless --fresh (what the Makefile passes) or --resume."""
    env = {**os.environ, "MIST_CACHE_DIR": str(tmp_path / "cache")}
    cmd = [PY, "-m", "sweeps.cli", "benchmark", "--scale", "smoke", "--storage", str(tmp_path / "runs")]

    def bench(*extra):
        return subprocess.run(cmd + list(extra), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)

    first = bench()
    assert first.returncode == 0, first.stderr[-3000:]
    report = tmp_path / "runs" / "smoke" / "report" / "report.html"
    lines = first.stdout.strip().splitlines()
    assert lines[-1].endswith("runs/smoke/report/report.html")   # the path, last
    assert f"report: mist-bench report {(tmp_path / 'runs' / 'smoke').resolve()}" in lines  # the sweep's own ending
    assert report.is_file() and (tmp_path / "mlflow.db").is_file()
    again = bench()
    assert again.returncode == 2 and "Traceback" not in again.stderr
    assert again.stderr.splitlines()[-1].startswith("mist-bench: error: sweep 'smoke' already exists")
    assert "--fresh" in again.stderr.splitlines()[-1]
    report.unlink()
    fresh = bench("--fresh")
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert report.is_file()
