"""The command lines (the README's and docs' commands run as written in tests/test_docs.py): every expected failure of
every entry point is one line `mist-bench: error: ...` with exit status 2 and no traceback (--debug shows it)."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from sweep_fixtures import BASE, config_with, write_config

ROOT = Path(__file__).resolve().parent.parent


def _error_line(err: str) -> str:
    """The one error line of a command's stderr (and the assertion that there is exactly one, untraced)."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and lines[0].startswith("mist-bench: error: "), err
    return lines[0]


# --- one error path ----------------------------------------------------------------------------------------------
TRAIN = ["train", "--method", "mist", "--dataset", "mnist_hard", "--scale", "smoke"]


def test_train_missing_data_folder_is_one_line(tmp_path, capsys):
    from sweeps.cli import main

    missing = tmp_path / "no-mnist"
    assert main(TRAIN + ["-d", f"digits_dir={missing}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("train: mist on mnist_hard (smoke): preparing data...")  # the first line, before the data
    assert _error_line(err) == f"mist-bench: error: digits_dir {missing}: not a directory"


def test_debug_shows_the_traceback(tmp_path):
    from mist_core.data import DataError
    from sweeps.cli import main

    for argv in (["--debug"] + TRAIN, TRAIN + ["--debug"]):  # a global flag, accepted after the command too
        with pytest.raises(DataError, match="digits_dir"):
            main(argv + ["-d", f"digits_dir={tmp_path / 'no-mnist'}"])


def test_train_out_under_a_file_fails_before_training(tmp_path, capsys):
    from sweeps.cli import main

    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    out = blocker / "sub" / "run.json"
    assert main(TRAIN + ["--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "preparing data" not in err  # refused before any data or training
    assert _error_line(err) == f"mist-bench: error: --out {out}: cannot create its folder, {blocker} is a file"


def test_train_out_creates_its_folder(tmp_path, capsys):
    from sweeps.cli import main

    out = tmp_path / "new" / "run.json"
    assert main(TRAIN + ["-t", "max_steps=2", "--out", str(out)]) == 0
    written = json.loads(out.read_text())
    assert written["config"]["method"] == "mist" and [h["step"] for h in written["history"]] == [2.0]
    assert capsys.readouterr().err.splitlines()[-1] == f"train: config and history in {out}"


def test_out_that_is_a_folder_is_refused(tmp_path, capsys):
    from sweeps.cli import main

    assert main(["preview", "mnist_hard", "--out", str(tmp_path)]) == 2
    assert _error_line(capsys.readouterr().err) == f"mist-bench: error: --out {tmp_path}: is a folder, not a file"


@pytest.mark.parametrize("entry,argv,flag", [
    ("sweeps.cli", ["preview", "mnist_hard", "--n", "0"], "--n"),
    ("sweeps.run", ["smoke", "--num-cpus", "-1"], "--num-cpus"),
    ("sweeps.run", ["smoke", "--num-cpus", "two"], "--num-cpus"),
])
def test_option_ranges_name_the_option(capsys, entry, argv, flag):
    import importlib

    with pytest.raises(SystemExit) as exit_:
        importlib.import_module(entry).main(argv)
    assert exit_.value.code == 2
    line = _error_line(capsys.readouterr().err)
    assert line.startswith(f"mist-bench: error: argument {flag}: must be an integer >= 1, got ")


def test_bad_tracking_uri_is_refused_before_ray(tmp_path, capsys):
    import ray

    from sweeps.run import main

    path = write_config(tmp_path, config_with(methods=["trivial"], search__num_samples=1))
    argv = [str(path), "--storage", str(tmp_path / "runs"), "--tracking-uri", "garbage://alice:s3cret@host/x"]
    assert main(argv) == 2
    line = _error_line(capsys.readouterr().err)
    assert line.startswith("mist-bench: error: invalid sweep 't': --tracking-uri 'garbage://alice:***@host/x': "
                           "unknown scheme 'garbage'") and "s3cret" not in line
    assert not ray.is_initialized()


def test_storage_under_a_file_is_refused(tmp_path, capsys):
    from sweeps.run import main

    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    path = write_config(tmp_path, config_with(methods=["trivial"], search__num_samples=1))
    assert main([str(path), "--storage", str(blocker / "runs")]) == 2
    assert _error_line(capsys.readouterr().err) == \
        f"mist-bench: error: invalid sweep 't': --storage '{blocker / 'runs'}': it is under {blocker}, a file"


def test_report_errors_name_the_file(tmp_path, capsys):
    from analysis.report import main

    assert main([str(tmp_path / "nowhere")]) == 2
    assert _error_line(capsys.readouterr().err).startswith(
        f"mist-bench: error: {tmp_path / 'nowhere'}: no such folder or file")
    (tmp_path / "results.parquet").write_bytes(b"not parquet")
    assert main([str(tmp_path)]) == 2
    line = _error_line(capsys.readouterr().err)
    assert line.startswith(f"mist-bench: error: {tmp_path}: cannot read its result rows")


def test_config_error_lines_are_joined(tmp_path, capsys):
    """A config error listing several fields (one per line in the exception) is one line on the console."""
    from sweeps.cli import main

    path = write_config(tmp_path, {**BASE, "methods": ["nope"], "datasets": ["nada"]})
    assert main(["sweep", str(path), "--check"]) == 2
    line = _error_line(capsys.readouterr().err)
    assert line.startswith("mist-bench: error: invalid sweep 't': methods: ")
    assert "; datasets: unknown dataset 'nada'" in line


def test_console_script_prints_one_line(tmp_path):
    """The installed `mist-bench` (pyproject's entry point, sweeps.cli:main) in a real process: no traceback."""
    script = Path(sys.executable).parent / "mist-bench"
    if not script.is_file():
        pytest.skip("mist-bench is not installed in this environment (pip install -e .)")
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    out = blocker / "run.json"
    r = subprocess.run([str(script), *TRAIN, "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == f"mist-bench: error: --out {out}: cannot create its folder, {blocker} is a file\n"


# --- the layers --------------------------------------------------------------------------------------------------
def test_mist_core_imports_no_upper_layer():
    """mist_core (data, methods, training) imports neither sweeps nor analysis, at top level or in a function."""
    bad = []
    for f in sorted((ROOT / "mist_core").rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            bad += [f"{f.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] in ("sweeps", "analysis")]
    assert bad == []


# --- the cost of a sweep, before it runs -------------------------------------------------------------------------
def test_step_timings_and_core_hours(tmp_path):
    from sweeps.estimate import Planned, core_hours, planned_steps, step_timings

    def ladder_row(rung, method, scale, core_seconds, steps=100):
        return {"rung": rung, "method": method, "task": "recon", "scale": scale,
                "final": {"step": float(steps), "core_seconds": core_seconds}}

    (tmp_path / "ladder").mkdir()
    (tmp_path / "ladder" / "a.json").write_text(json.dumps({"rows": [
        ladder_row("mist", "mist", "quick", 100.0),                           # 1.0 s per step
        ladder_row("mist", "mist", "quick", 200.0),                           # 2.0
        ladder_row("no_blur", "mist", "quick", 900.0),                        # an ablation: not the method's cost
        ladder_row("task_on_gt", "bench.ladder:OracleTask", "quick", 5.0),    # an oracle
        ladder_row("mist", "mist", None, 900.0)]}))                           # scale unknown
    (tmp_path / "ladder" / "broken.json").write_text("{")
    (tmp_path / "cpu.json").write_text(json.dumps({"items": {"steps": {"rows": [
        {"method": "grid", "task": "recon", "scale": "quick", "median_ms": 100.0, "cpu_per_wall": 2.0},  # 0.2 s
        {"method": "mist", "task": "recon", "scale": "quick", "median_ms": 5000.0, "cpu_per_wall": 2.0},  # ladder wins
        {"method": "air", "task": "recon", "scale": "quick", "error": "boom"}]}}}))
    t = step_timings(tmp_path)
    assert t[("mist", "recon", "quick")] == (1.5, 2, "ladder")
    assert t[("grid", "recon", "quick")] == (0.2, 1, "bench")
    assert set(t) == {("mist", "recon", "quick"), ("grid", "recon", "quick")}
    hours, missing = core_hours([Planned("mist", "recon", "quick", steps=1000, trials=2),
                                 Planned("grid", "recon", "quick", steps=1000, trials=2),
                                 Planned("zhang", "recon", "quick", steps=1000, trials=2)], t)
    assert hours == pytest.approx((1.5 * 2000 + 0.2 * 2000) / 3600) and missing == ["zhang (recon, quick)"]
    params = {"train.max_steps": 1000, "train.batch_size": 32, "dataset.n_train": 100}
    assert planned_steps(params) == 1000 and planned_steps(params, learns=False) == 4   # one pass: ceil(100 / 32)
    assert planned_steps({"train.max_steps": 1000, "train.batch_size": 32}, learns=False) == 1000


def test_recorded_sweep_costs_come_before_the_ladders(tmp_path):
    """`python -m sweeps.estimate record`: per trial of phase seeds, its last step and core-seconds; step_timings
    then prefers them to the ladder's."""
    import pandas as pd

    from sweeps.estimate import main, step_timings

    rows = [dict(sweep="q", trial=t, phase=ph, method=m, dataset="d", table="", task="recon", scale="quick", seed=0,
                 step=step, final=step == 100, metric="rmse", value=0.1, core_seconds=cs, wall_seconds=cs, params_json="{}")
            for t, ph, m, step, cs in [("a", "seeds", "mist", 50, 20.0), ("a", "seeds", "mist", 100, 40.0),
                                       ("b", "seeds", "mist", 100, 60.0), ("c", "search", "mist", 100, 900.0),
                                       ("e", "seeds", "grid", 100, 7.0)]]
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    pd.DataFrame(rows).to_parquet(sweep / "results.parquet")
    (tmp_path / "m" / "ladder").mkdir(parents=True)
    (tmp_path / "m" / "ladder" / "l.json").write_text(json.dumps({"rows": [
        {"rung": "mist", "method": "mist", "task": "recon", "scale": "quick",
         "final": {"step": 10.0, "core_seconds": 99.0}}]}))
    assert main(["record", str(sweep), "--out", str(tmp_path / "m" / "sweeps" / "q.json")]) == 0
    t = step_timings(tmp_path / "m")
    assert t[("mist", "recon", "quick")] == (0.5, 2, "sweeps")        # median of 40/100 and 60/100; search left out
    assert t[("grid", "recon", "quick")] == (0.07, 1, "sweeps")


def test_trials_start_longest_first():
    """Cells ordered by measured seconds per trial: unknown cost first, then steps x step cost; a method with
    nothing to learn costs one pass (not max_steps), ties keep the config's order."""
    from types import SimpleNamespace

    from sweeps.estimate import Timing, longest_first

    params = {"train.max_steps": 1000, "train.batch_size": 32, "dataset.n_train": 320}

    def cell(method, dataset="d"):
        return SimpleNamespace(method=method, label=method, dataset=dataset, params=params, imported=True)

    t = {(m, "recon", "quick"): Timing(s, 1, "ladder") for m, s in
         [("grid", 0.1), ("mist", 0.5), ("trivial", 20.0), ("air", 0.1)]}  # trivial: 10 steps x 20 = 200 s
    cells = [cell("grid"), cell("trivial"), cell("mist"), cell("zhang"), cell("air"), cell("grid", "e")]
    got = [(c.method, c.dataset) for c in longest_first(cells, "recon", "quick", t)]
    assert got == [("zhang", "d"), ("mist", "d"), ("trivial", "d"), ("grid", "d"), ("air", "d"), ("grid", "e")]


def test_check_prints_steps_trials_and_estimate(tmp_path, capsys):
    from sweeps.run import main

    path = write_config(tmp_path, BASE)  # trivial + mist at smoke: 2 + 2 search trials of mist, 2 seeds each, 6 steps
    assert main([str(path), "--check"]) == 0
    out = capsys.readouterr().out
    assert "  mnist_hard/mist: search [" in out and "4 trials (2 search + 2 seeds) x 6 steps = 24 steps" in out
    assert "planned: 6 trials, 36 training steps (at most: ASHA stops weak search trials early)" in out
    assert "no timing for mist (recon, smoke)" in out  # nothing measured at smoke scale
    assert not (tmp_path / "runs").exists()
    assert main(["quick", "--check"]) == 0  # the shipped quick sweep: every method measured at quick scale
    out = capsys.readouterr().out
    assert "core-hours of training at scale quick" in out and "no timing" not in out
