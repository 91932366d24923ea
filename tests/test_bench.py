"""The benchmark suite (bench/): `python -m bench --tiny` end to end, its JSON, and the Markdown table.

test_bench_tiny runs steps (2 methods), breakdown, flops and data (1 generator) in a subprocess (~15 s), and
test_bench_authors_configuration two MIST steps at the authors' configuration (batch 32, 80 x 80); the Ray
sweep item starts a local Ray instance (~45 s on 2 busy cores), so it has its own test under the `cluster`
marker (deselect with -m "not cluster").
"""
from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.table import render

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("mist", "trivial")


def _bench(tmp_path: Path, *args: str) -> dict:
    """Run `python -m bench --tiny ARGS` from the repository root (bench/ is not an installed package)."""
    out = tmp_path / "results" / "tiny.json"           # the directory does not exist yet: bench creates it
    proc = subprocess.run([sys.executable, "-m", "bench", "--tiny", *args, "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert not list(out.parent.glob(".*.tmp")), "the atomic write left its temporary file"
    return json.loads(out.read_text())


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_bench_tiny(tmp_path):
    from mist_core.registry import get_method

    r = _bench(tmp_path, "--only", "steps,breakdown,flops,data", "--methods", ",".join(METHODS),
               "--datasets", "mnist_hard")
    assert {"schema", "command", "settings", "machine", "items", "seconds"} <= set(r)
    m = r["machine"]
    assert {"platform", "cpu_model", "usable_cores", "torch", "torch_threads", "date", "device"} <= set(m)
    assert m["torch_threads"] == 1 and r["settings"]["tiny"] is True
    assert set(r["items"]) == {"steps", "breakdown", "flops", "data"}

    steps = r["items"]["steps"]["rows"]
    assert [(x["method"], x["task"]) for x in steps] == [(n, t) for n in METHODS for t in get_method(n).tasks]
    for x in steps:
        assert "error" not in x, x
        assert x["scale"] == "smoke" and x["n"] == 2
        assert all(_positive(x[k]) for k in ("median_ms", "min_ms", "images_per_s", "batch_size")), x
        assert math.isfinite(x["iqr_ms"]) and x["iqr_ms"] >= 0 and x["peak_mem_mb"] >= 0

    (b,) = r["items"]["breakdown"]["rows"]
    groups = r["items"]["breakdown"]["groups"]
    assert _positive(b["step_ms"]) and _positive(b["profiled_step_ms"])
    for view in ("fwd_share", "attributed_share"):
        assert set(b[view]) == set(groups)
        assert all(math.isfinite(v) and v >= 0 for v in b[view].values())
        assert sum(b[view].values()) == pytest.approx(1.0, abs=1e-6), view
    for g in ("heatmap", "E_K", "S", "task_net", "S_inv", "G", "optimisers"):
        assert b["fwd_ms"][g] > 0, g                    # every named range was seen in the profile
    assert b["calls_per_step"]["E_K"] == 1 and b["calls_per_step"]["task_net"] >= 2
    assert b["attributed_share"]["backward"] < b["fwd_share"]["backward"]   # backward found its forward ranges
    assert 0 < b["mist_ops_share_fwd"] < 1 and 0 < b["mist_ops_share_attributed"] < 1
    for comp, t in b["isolated"].items():
        assert any(v is not None for v in t.values()), comp
        assert all(_positive(v) for v in t.values() if v is not None), (comp, t)

    f = r["items"]["flops"]
    (row,) = f["rows"]
    assert all(_positive(row[k]) for k in ("step_flops", "step_ms", "achieved_gflops_per_s", "ratio_to_conv_peak"))
    assert row["flops_per_op"].get("aten.convolution_backward", 0) > 0        # backward counted
    assert _positive(f["conv_peak_gflops_per_s"]) and all(_positive(c["gflops_per_s"]) for c in f["conv"])

    (d,) = r["items"]["data"]["rows"]
    assert d["dataset"] == "mnist_hard" and _positive(d["images_per_s"])

    md = subprocess.run([sys.executable, "-m", "bench.table", str(tmp_path / "results" / "tiny.json")], cwd=ROOT,
                        capture_output=True, text=True, check=True).stdout
    assert md.startswith("Machine:") and "| heatmap network" in md and "| mnist_hard" in md


def test_bench_authors_configuration(tmp_path):
    """The `authors` item: two MIST steps at the authors' MNIST configuration, each number as they set it."""
    r = _bench(tmp_path, "--only", "authors", "--warmup", "0", "--repeats", "2")
    assert set(r["items"]) == {"authors"} and {"cpu_model", "usable_cores", "torch", "device"} <= set(r["machine"])
    a = r["items"]["authors"]
    (row,) = a["rows"]
    assert "error" not in row, row
    assert (row["method"], row["task"], row["dataset"], row["batch_size"], row["n"]) == (
        "mist", "classify", "mnist_hard", 32, 2)
    assert _positive(row["images_per_s"]) and _positive(row["n_parameters"])
    m, d = a["method_config"], a["dataset_config"]
    assert (m["k"], m["sizes"], m["heat_width"], m["heat_blocks"], m["patch_res"]) == (9, [20.0], 32, 4, 32)
    assert (m["task_levels"], m["task_blocks"], m["task_width"], m["kp_steps"]) == (5, 3, 8, 2)
    assert (d["canvas"], d["digit_size"], d["count_range"], d["n_train"]) == (80, 20, [9, 9], 32)
    md = render(r)
    assert "MIST step at the authors' configuration (classify, batch 32, K 9, sizes [20.0], heatmap 4 blocks of 32" in md
    assert f" {row['images_per_s']:.3g} " in md.splitlines()[-1]                   # the row: images/s
    # the step's place against the machine: FLOPs at the median time, over the best conv2d rate of the same run
    assert row["step_flops"] > 1e9                                                  # ~10^11 at this configuration
    assert row["achieved_gflops_per_s"] == pytest.approx(row["step_flops"] / row["median_ms"] / 1e6)
    assert row["ratio_to_conv_peak"] == pytest.approx(row["achieved_gflops_per_s"] / row["conv_peak_gflops_per_s"])
    assert row["images_per_s_at_conv_peak"] == pytest.approx(row["images_per_s"] / row["ratio_to_conv_peak"])
    assert f"{100 * row['ratio_to_conv_peak']:.1f}%" in md.splitlines()[-1]


@pytest.mark.cluster
def test_bench_sweep_tiny(tmp_path):
    r = _bench(tmp_path, "--only", "sweep")
    s = r["items"]["sweep"]
    assert s["trials"] == 2 and s["cores"] >= 1
    assert all(_positive(s[k]) for k in ("wall_s", "train_seconds_sum", "core_seconds_sum", "utilisation"))
    assert s["utilisation"] <= 1.0 and s["per_trial_overhead_s"] >= 0


def test_oracle_ladder_at_smoke_scale(tmp_path, capsys):
    """Each rung trains and writes its row; the task oracle's boxes are the ground truth (detection 1), and the
    table renders mean and spread per rung."""
    from bench import ladder
    out = tmp_path / "ladder.json"
    assert ladder.main(["run", "--scale", "smoke", "--steps", "2", "--eval-every", "1", "--threads", "1",
                        "--rungs", "task_on_gt,heatmap_on_gt,mist", "--task", "classify", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["rung"] for r in rows] == ["task_on_gt", "heatmap_on_gt", "mist"]
    assert rows[0]["final"]["det_rate"] == 1.0 and 0 <= rows[2]["final"]["det_rate"] <= 1
    assert 0 <= rows[2]["final"]["det_after_x"] <= 1 and "det_after_x" not in rows[0]["final"]
    assert all(r["final"]["step"] == 2 and len(r["history"]) == 2 for r in rows)
    assert rows[2]["method_config"]["heat_blocks"] == 1 and rows[2]["train_config"]["max_steps"] == 2  # smoke preset
    capsys.readouterr()
    assert ladder.main(["table", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| classify | task_on_gt | 0 | 2 |" in table and "1.000 (2)" in table


@pytest.mark.parametrize("argv,needle", [(["--only", "nope"], "--only: unknown item(s) nope"),
                                          (["--only", "data", "--tiny"], "cannot create its folder")])
def test_bench_errors_are_one_line_before_any_work(tmp_path, capsys, argv, needle):
    from bench.cli import main

    (tmp_path / "a-file").write_text("x")
    assert main([*argv, "--out", str(tmp_path / "a-file" / "r.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("mist-bench: error: ") and needle in err, err
    assert "[bench] data" not in err                                       # nothing measured first



def test_device_check_runs_every_phase_at_smoke_scale_on_the_cpu(tmp_path):
    """bench/device_check.sh as the device call runs it, shrunk (--device cpu --scale smoke): host work of every
    learning method (no host read), 1 and 2 concurrent MIST trials, the smoke sweep's trials in 2 processes and
    their report, the paper check's parts in parallel processes; every row in rows.jsonl, one JSON of them and the
    tables."""
    import os

    from bench.rows import read
    from mist_core.registry import get_method, method_names

    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path / "out"), "OMP_NUM_THREADS": "1",
           "BUDGET": "1200"}                                     # phase caps far above a smoke run, even on busy cores
    proc = subprocess.run(["bash", "bench/device_check.sh", "--device", "cpu", "--scale", "smoke"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = read(tmp_path / "out" / "rows.jsonl")
    assert json.loads((tmp_path / "out" / "device_check.json").read_text())["rows"] == rows
    assert {r["phase"]: r["exit"] for r in rows if r["kind"] == "phase"} == {"host": 0, "paper_check": 0,
                                                                            "concurrency": 0, "workstation": 0}
    ws = [r for r in rows if r["phase"] == "workstation" and r["kind"] == "trial"]
    assert len(ws) == 4 and all(r["steps"] == 2 for r in ws)                # the smoke sweep, 2 steps a trial
    assert (tmp_path / "out" / "workstation" / "report" / "report.html").exists()
    host = [r for r in rows if r["phase"] == "host" and r["kind"] == "row"]
    learners = [(n, t) for n in method_names() if get_method(n).learns for t in get_method(n).tasks]
    assert [(x["method"], x["task"]) for x in host] == learners
    for x in host:
        assert x["mode"] == "eager" and x["host_reads"] == 0 and x["aten_ops"] > 50 and _positive(x["step_ms"]), x
    parts = {r["part"]: r for r in rows if r["phase"] == "paper_check" and r["kind"] == "part"}
    assert set(parts) == {"mist_classify", "mist_recon", "grid_recon"}
    for p, x in parts.items():
        assert x["steps"] == 4 and x["losses"][-1]["step"] == 4.0 and 0 <= x["metrics"]["det_rate"] <= 1, (p, x)
    workers = [r for r in rows if r["phase"] == "concurrency" and r["kind"] == "worker"]
    assert sorted((r["n"], r["worker"]) for r in workers) == [(1, 0), (2, 0), (2, 1)]
    conc = [r for r in rows if r["phase"] == "concurrency" and r["kind"] == "row"]
    assert [(x["method"], x["n"]) for x in conc] == [("mist", 1), ("mist", 2)]
    for x in conc:
        assert len(x["steps"]) == x["n"] and min(x["steps"]) > 0 and _positive(x["images_per_s"]), x
    assert conc[0]["speedup"] == 1.0 and _positive(conc[1]["speedup"])
    for title in ("### Phases", "### Host work per training step", "### Concurrent trials on one device",
                  "### Workstation path", "### Paper check parts"):
        assert title in proc.stdout and title in (tmp_path / "out" / "tables.md").read_text()
    assert "finished after" in proc.stdout


def _start_device_check(out: Path) -> subprocess.Popen:
    """python -m bench.device_check at smoke scale on the CPU, in its own session (its group is killed whole)."""
    import os

    return subprocess.Popen([sys.executable, "-m", "bench.device_check", "--device", "cpu", "--scale", "smoke",
                             "--budget", "1200", "--out-dir", str(out)], cwd=ROOT, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)


def _wait_for_rows(proc: subprocess.Popen, path: Path, phase: str, n: int) -> list[dict]:
    import time

    from bench.rows import read

    t0 = time.monotonic()
    while time.monotonic() - t0 < 600:
        rows = [r for r in read(path) if r["phase"] == phase and r["kind"] == "row"]
        if len(rows) >= n:
            return rows
        assert proc.poll() is None, "the check ended before the rows the test kills it after"
        time.sleep(0.2)
    raise AssertionError(f"no {n} {phase} rows in 600 s")


def _group_gone(pgid: int) -> bool:
    import os
    import time

    for _ in range(100):
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def test_device_check_sigterm_mid_phase_keeps_rows_and_prints_tables(tmp_path):
    """SIGTERM (a time limit) while the host phase runs: the rows measured so far stay in rows.jsonl, the tables of
    them are printed and written, the phase's process is stopped and no process of the check is left."""
    import signal

    from bench.rows import read

    proc = _start_device_check(tmp_path)
    try:
        kept = _wait_for_rows(proc, tmp_path / "rows.jsonl", "host", 2)
        proc.send_signal(signal.SIGTERM)                       # the parent only: it stops its phase itself
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1
    assert _group_gone(proc.pid), "a process of the check outlived it"
    rows = read(tmp_path / "rows.jsonl")
    assert [r for r in rows if r["phase"] == "host" and r["kind"] == "row"][:len(kept)] == kept
    assert rows[-1]["kind"] == "end" and rows[-1]["status"] == "interrupted by SIGTERM"
    assert "interrupted by SIGTERM after" in out
    assert re.search(r"^\| host +\| - +\| did not finish +\| - +\| stopped while it ran", out, re.M), out
    for r in kept:                                             # each kept row is in the printed host table
        assert re.search(rf"^\| {r['method']} +\| {r['task']} +\| smoke +\| eager +\| ", out, re.M), r
    assert (tmp_path / "tables.md").read_text() == out
    assert not any(r["phase"] == "concurrency" for r in rows)  # nothing started after the signal


def test_device_check_sigkill_keeps_rows_and_tables_prints_them(tmp_path):
    """SIGKILL of the whole group (nothing of the check runs after it): the finished rows are on disk and
    `python -m bench.device_check tables` prints them, saying the check was killed."""
    import os
    import signal

    proc = _start_device_check(tmp_path)
    try:
        kept = _wait_for_rows(proc, tmp_path / "rows.jsonl", "host", 2)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert _group_gone(proc.pid)
    t = subprocess.run([sys.executable, "-m", "bench.device_check", "tables", str(tmp_path / "rows.jsonl")],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert t.returncode == 0, t.stderr
    assert "no end row: the check was killed" in t.stdout and "### Host work per training step" in t.stdout
    for r in kept:
        assert re.search(rf"^\| {r['method']} +\| {r['task']} +\| smoke +\| eager +\| ", t.stdout, re.M), r


def test_device_check_plan_fits_360_device_seconds(capsys):
    from bench.device_check import main, plan

    assert main(["--plan"]) == 0
    out = capsys.readouterr().out
    total = float(out.strip().splitlines()[-1].split()[4])
    assert total <= 360 and abs(total - sum(s for _, s, _ in plan(360))) < 1
    for name in ("host", "concurrency", "workstation", "paper_check"):
        assert f"| {name} |" in out
    assert "nothing run" in out


def test_host_skips_what_does_not_fit_its_deadline_and_keeps_each_row(tmp_path, monkeypatch):
    """With a deadline already reached, the first case still runs (nothing to estimate from), the next is skipped
    with a row saying so; both rows are in $MIST_BENCH_ROWS as they happen."""
    import time

    from bench import host
    from bench.rows import ROWS_ENV, read
    from bench.settings import Settings

    monkeypatch.setenv(ROWS_ENV, str(tmp_path / "rows.jsonl"))
    s = Settings().replace(**Settings.tiny_defaults(), methods=("grid",), deadline=time.time())
    r = host.run(s)
    assert [("skipped" in x, x["task"]) for x in r["rows"]] == [(False, "recon"), (True, "classify")]
    assert "left before the phase's deadline" in r["rows"][1]["skipped"]
    rows = read(tmp_path / "rows.jsonl")
    assert [(x["phase"], x["kind"], x["task"]) for x in rows] == [("host", "row", "recon"),
                                                                  ("host", "skipped", "classify")]
    assert rows[0]["step_ms"] == r["rows"][0]["step_ms"]
    assert "skipped: " in render({"machine": {}, "items": {"host": r}})


def test_rows_survive_a_cut_last_line(tmp_path):
    from bench.rows import append, read

    path = tmp_path / "rows.jsonl"
    append(path, {"a": 1, "x": float("nan")})
    with open(path, "a") as f:
        f.write('{"b": 2, "cut sho')                         # a kill in the middle of a write
    assert read(path) == [{"a": 1, "x": None}] and read(tmp_path / "none.jsonl") == []


def test_workstation_path_runs_its_trials_in_processes_without_ray_or_mlflow(tmp_path):
    """bench.workstation at smoke scale on the CPU, with ray, mlflow and optuna made unimportable (as on the device
    image): the smoke sweep's 4 trials run in 2 worker processes, each trial's rows reach $MIST_BENCH_ROWS when it
    finishes, and the rows become results.parquet and the report."""
    import os

    import pandas as pd

    from bench.rows import read

    shadow = tmp_path / "shadow"
    for m in ("ray", "mlflow", "optuna"):
        (shadow / m).mkdir(parents=True)
        (shadow / m / "__init__.py").write_text(f"raise ImportError('{m} is not installed here')\n")
    env = {**os.environ, "PYTHONPATH": f"{shadow}:{ROOT}", "OMP_NUM_THREADS": "1",
           "MIST_BENCH_ROWS": str(tmp_path / "rows.jsonl")}
    proc = subprocess.run([sys.executable, "-m", "bench.workstation", "--device", "cpu", "--sweep", "smoke", "--steps",
                           "2", "--eval-images", "8", "--workers", "2", "--time-limit", "600", "--out-dir",
                           str(tmp_path / "ws")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read(tmp_path / "rows.jsonl")
    trials = [r for r in rows if r["kind"] == "trial"]
    assert sorted((r["method"], r["seed"]) for r in trials) == [("mist", 0), ("mist", 1), ("trivial", 0),
                                                                 ("trivial", 1)]
    assert len({r["worker"] for r in trials}) <= 2 and all(r["loaded_modules"] == [] for r in trials)
    assert all(r["steps"] == 2 and r["device"] == "cpu" for r in trials)
    summary = [r for r in rows if r["kind"] == "summary"]
    assert len(summary) == 1 and rows[-1] is not None and summary[0]["trained"] == 4 and not summary[0]["failed"]
    assert summary[0]["t"] > max(r["t"] for r in trials)                    # the trials' rows came first
    df = pd.read_parquet(tmp_path / "ws" / "results.parquet")
    final = df[df.final & (df.metric == "rmse")]
    assert sorted(final.trial) == sorted(r["trial"] for r in trials) and final.value.between(0, 1).all()
    page = (tmp_path / "ws" / "report" / "report.html").read_text()
    assert "<li><b>precision</b>: fp32 on cpu</li>" in page and summary[0]["report"].endswith("report.html")
