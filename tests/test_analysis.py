"""analysis: tables in the paper's layout, paired comparisons, cost, and the self-contained HTML report,
from a small hand-made set of tidy result rows (no training)."""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis import compare, paper, report, tables

# Final values: (table, task, dataset, method) -> {seed: {metric: value}}. grid lacks seed 2 on MNIST hard;
# channel-wise, AIR, Zhang and Tables 3-4 are missing entirely; trivial and kmeans are the reference lines.
FINAL = {
    ("1", "recon", "mnist_easy", "mist"): {0: {"rmse": 0.040, "det_rate": 0.90}, 1: {"rmse": 0.042, "det_rate": 0.92},
                                           2: {"rmse": 0.044, "det_rate": 0.94}},
    ("1", "recon", "mnist_easy", "grid"): {0: {"rmse": 0.050, "det_rate": 0.10}, 1: {"rmse": 0.053, "det_rate": 0.11},
                                           2: {"rmse": 0.053, "det_rate": 0.12}},
    ("1", "recon", "mnist_hard", "mist"): {0: {"rmse": 0.045, "det_rate": 0.80, "ap_iou50": 0.70},
                                           1: {"rmse": 0.055, "det_rate": 0.85, "ap_iou50": 0.72},
                                           2: {"rmse": 0.065, "det_rate": 0.90, "ap_iou50": 0.74}},
    ("1", "recon", "mnist_hard", "grid"): {0: {"rmse": 0.065, "det_rate": 0.2}, 1: {"rmse": 0.055, "det_rate": 0.3}},
    ("1", "recon", "mnist_hard", "trivial"): {0: {"rmse": 0.057, "det_rate": 0.0}, 1: {"rmse": 0.059, "det_rate": 0.0}},
    ("1", "recon", "mnist_hard", "kmeans"): {0: {"rmse": 0.030, "det_rate": 0.5}, 1: {"rmse": 0.030, "det_rate": 0.5}},
    ("2", "classify", "mnist_hard", "mist"): {0: {"det_rate": 0.97, "cls_acc": 0.99}, 1: {"det_rate": 0.98, "cls_acc": 0.99},
                                              2: {"det_rate": 0.99, "cls_acc": 0.99}},
}


def _rows() -> pd.DataFrame:
    rows = []

    def add(trial, phase, table, task, dataset, method, seed, step, final, metric, value, core):
        rows.append(dict(sweep="fixture", trial=trial, phase=phase, method=method, dataset=dataset, table=table,
                         task=task, scale="smoke", seed=seed, step=step, final=final, metric=metric, value=value,
                         core_seconds=core, wall_seconds=core / 2, params_json="{}"))

    for (table, task, dataset, method), per_seed in FINAL.items():
        for seed, mets in per_seed.items():
            trial = f"{method}_{dataset}_{task}_s{seed}"
            core = 10.0 * (seed + 1)
            for step, loss in ((10, 1.0 + seed), (20, 0.5 + seed)):  # training curves, then the final evaluation
                add(trial, "seeds", table, task, dataset, method, seed, step, False, "train_task", loss, core * step / 20)
            for metric, value in mets.items():  # an interim evaluation at step 10 (1.5x), the final one at 20
                add(trial, "seeds", table, task, dataset, method, seed, 10, False, metric, 1.5 * value, core / 2)
                add(trial, "seeds", table, task, dataset, method, seed, 20, True, metric, value, core)
    # a search trial: counted in cost, never in the tables (a seeds phase exists)
    add("mist_easy_search0", "search", "1", "recon", "mnist_easy", "mist", 0, 20, True, "rmse", 0.5, 7.0)
    add("mist_easy_search0", "search", "1", "recon", "mnist_easy", "mist", 0, 10, False, "train_task", 3.0, 3.0)
    return pd.DataFrame(rows)


def _cell(cells: pd.DataFrame, row: str, column: str) -> pd.Series:
    return cells[(cells["row"] == row) & (cells["column"] == column)].iloc[0]


PAPER_TEXT = Path(__file__).resolve().parents[2] / "shared" / "paper" / "mist-paper.txt"


@pytest.mark.skipif(not PAPER_TEXT.is_file(), reason=f"no paper text at {PAPER_TEXT}")
def test_paper_numbers_match_the_paper_text() -> None:
    """Every row of every TableSpec, printed as the paper prints it ('MNIST hard .053 .062 ...', 'IOU 50% 97.8% ...',
    '-' for None), is a line of the paper's text: a mistyped, swapped or missing number fails."""
    lines = {" ".join(ln.split()) for ln in PAPER_TEXT.read_text(encoding="utf-8").splitlines()}
    key = lambda t: re.sub(r"[^0-9a-z]", "", t.lower())  # noqa: E731  'AP@IoU .50' and 'APIoU=.50' alike
    for spec in paper.TABLES.values():
        for row in spec.rows:
            vals = [spec.paper[(row.label, c.label)] for c in spec.columns]
            printed = " ".join("-" if v is None else f"{v:.1f}%" if spec.unit == "%" else f"{v:.3f}".lstrip("0")
                               for v in vals)
            assert any(ln.endswith(printed) and key(ln[:-len(printed)]) == key(row.label) for ln in lines), \
                f"Table {spec.id}, {row.label}: {printed!r}"


def test_tables_values_and_missing() -> None:
    out = tables.all_tables(_rows())  # the paper's layout (tables.tex, cells.csv)
    cells1, wide1 = out["1"]
    assert wide1.loc["MNIST easy", ("MIST", "ours")] == "0.042 ± 0.002 (n=3)"  # search trial (0.5) excluded
    assert wide1.loc["MNIST easy", ("MIST", "paper")] == "0.038" and wide1.loc["MNIST easy", ("MIST", "Δ")] == "+0.004"
    assert wide1.loc["MNIST hard", ("Grid", "ours")] == "0.060 ± 0.007 (n=2)"  # missing seed 2
    assert wide1.loc["MNIST hard", ("Ch.-wise", "ours")] == "— (n=0)"  # missing method
    assert wide1.loc["MNIST hard", ("Ch.-wise", "Δ")] == "—" and wide1.loc["Gabor", ("Grid", "paper")] == "∅"
    c = _cell(cells1, "MNIST hard", "Grid")
    assert c["n"] == 2 and c["seeds"] == "0,1" and math.isclose(c["std"], np.std([0.065, 0.055], ddof=1))
    assert [m for m, _ in wide1.columns[::3]] == ["MIST", "Grid", "Ch.-wise", "Esl16", "Zha18"]
    _, wide2 = out["2"]  # percent, and a task filter: the recon det_rate rows must not leak in
    assert wide2.loc["IoU 50%", "MIST"].tolist() == ["98.0 ± 1.0 (n=3)", "97.8", "+0.2"]
    assert (out["4"][1].xs("ours", axis=1, level=1) == "— (n=0)").all().all()  # a table with no results at all
    tex = tables.to_latex(wide1)
    assert r"0.042 $\pm$ 0.002 (n=3)" in tex and r"\begin{tabular}" in tex and r"$\emptyset$" in tex
    # the report's layout: one row per (dataset, method), every recon metric, references below, losers flagged
    v = tables.table_view(_rows(), paper.TABLES["1"])
    hard = v.frame[v.frame["dataset"] == "MNIST hard"].set_index("method")
    assert list(hard.index) == ["MIST", "Grid", "Ch.-wise", "Esl16", "Zha18", "Trivial (reference)",
                                "k-means floor (reference)"]
    assert hard.loc["MIST", ("detection (IoU .5)", "ours")] == "0.850 ± 0.050"  # (.80 + .85 + .90) / 3
    assert hard.loc["MIST", ("AP@.5", "ours")] == "0.720 ± 0.020" and hard.loc["Grid", ("AP@.5", "ours")] == "—"
    assert hard.loc["MIST", ("RMSE", "Δ")] == "+0.002" and hard.loc["Trivial (reference)", ("RMSE", "paper")] == "∅"
    assert hard.loc["Trivial (reference)", ("RMSE", "ours")] == "0.058 ± 0.001"
    assert hard.loc["Grid", ("RMSE", "ours")] == "0.060 ± 0.007 †"  # 0.060 is not below the mean image's 0.058
    assert hard.loc["Grid", ("core-s / trial", "")] == "15.0" and hard.loc["MIST", ("steps", "")] == "20"
    assert hard.loc["Zha18", ("RMSE", "ours")] == "—" and hard.loc["Zha18", ("RMSE", "paper")] == "0.191"
    assert v.not_run == ["Gabor"] and v.flags == [
        "Grid on MNIST hard: RMSE not below the mean image's (0.058).",
        "Grid on MNIST hard: detection not above the k-means floor (0.500)."]
    cls = v.classes[v.frame["dataset"] == "MNIST hard"].set_index(hard.index)
    assert cls.loc["Trivial (reference)"].eq("ref refstart").all()
    assert cls.loc["k-means floor (reference)"].eq("ref").all()
    assert cls.loc["Grid", ("RMSE", "ours")] == "flag" and cls.loc["MIST", ("RMSE", "ours")] == ""


def test_paired_comparisons() -> None:
    comps = compare.comparisons(_rows()).set_index(["table", "row", "baseline"])
    easy = comps.loc[("1", "MNIST easy", "grid")]
    assert easy["n"] == 3 and easy["ci"] == "bootstrap" and math.isclose(easy["mean_diff"], -0.010, abs_tol=1e-12)
    assert -0.011 - 1e-12 <= easy["ci_low"] <= easy["ci_high"] <= -0.009 + 1e-12  # percentile CI of 3 diffs
    assert easy["sentence"] == ("MIST has lower RMSE than Grid on MNIST easy (better): mean difference -0.0100, "
                                "95% CI [-0.0110, -0.0090], 3 seeds (bootstrap).")
    hard = comps.loc[("1", "MNIST hard", "grid")]  # seeds 0 and 1 pair; diffs -0.020, 0.000
    half = stats.t.ppf(0.975, 1) * np.std([-0.020, 0.0], ddof=1) / np.sqrt(2)
    assert hard["n"] == 2 and hard["ci"] == "paired t" and hard["seeds"] == "0,1"
    assert math.isclose(hard["ci_low"], -0.010 - half) and math.isclose(hard["ci_high"], -0.010 + half)
    assert hard["sentence"].startswith("No significant difference between MIST and Grid in RMSE on MNIST hard")
    assert "includes 0, 2 seeds (paired t)" in hard["sentence"]
    cw = comps.loc[("1", "MNIST hard", "channelwise")]
    assert cw["n"] == 0 and "n=0" in cw["sentence"] and math.isnan(cw["ci_low"])
    assert compare.paired_ci(np.array([0.1]))[2] == "n too small"
    assert ("2", "IoU 50%", "channelwise") in comps.index  # MIST ran, the baseline did not


def test_cost_counts_search_and_seeds() -> None:
    cost = tables.cost_table(_rows()).set_index(["table", "dataset", "method"])
    easy = cost.loc[("1", "mnist_easy", "mist")]
    assert (easy["trials_search"], easy["trials_seeds"], easy["trials"]) == (1, 3, 4)
    assert math.isclose(easy["core_seconds_total"], 10 + 20 + 30 + 7)  # every trial, the search one included
    assert math.isclose(easy["core_seconds_mean"], 20.0)  # per trial: the seeds the results come from, as Table 1
    assert cost.loc[("1", "mnist_hard", "grid")]["trials"] == 2


def _write_sweep(root: Path) -> Path:
    sweep = root / "fixture"
    sweep.mkdir()
    _rows().to_parquet(sweep / "results.parquet")
    rng = np.random.default_rng(0)
    for method in ("mist", "grid"):  # figures inputs for MNIST hard; none for MNIST easy (skipped with a note)
        d = sweep / "trials" / f"{method}_mnist_hard_recon_s0"
        d.mkdir(parents=True)
        images = rng.random((2, 1, 32, 32)).astype(np.float32)
        boxes = np.tile(np.array([[2, 2, 12, 12], [15, 4, 27, 16], [5, 18, 17, 30]], np.float32), (2, 1, 1))
        np.savez(d / "predictions.npz", images=images, boxes=boxes, scores=rng.random((2, 3)),
                 recon=images * 0.9, patches=rng.random((2, 3, 1, 8, 8)), gt_boxes=boxes,
                 gt_labels=np.ones((2, 3), np.int64), gt_counts=np.array([3, 2]))
    np.savez(sweep / "trials" / "mist_mnist_hard_recon_s0" / "heatmaps_over_time.npz", steps=np.arange(0, 50, 10),
             heatmaps=rng.random((5, 32, 32)), image=rng.random((1, 32, 32)))
    return sweep


def test_report_html_is_self_contained(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep = _write_sweep(tmp_path)
    out = tmp_path / "out"
    assert report.main([str(sweep), "--out", str(out)]) == 0
    path = Path(capsys.readouterr().out.strip())
    assert path == out / "report.html"
    page = path.read_text(encoding="utf-8")
    srcs = re.findall(r'src="([^"]*)"', page)
    assert len(srcs) >= 5 and all(s.startswith("data:image/png;base64,") for s in srcs)  # nothing external
    assert 'src="http' not in page and "<script" not in page and "<link" not in page
    assert "0.042&nbsp;±&nbsp;0.002" in page and "Heatmap during training" in page
    assert "MIST has lower RMSE than Grid on MNIST easy (better)" in page
    assert "no predictions.npz" in page  # MNIST easy figure inputs are missing: noted, not fatal
    for name in ("tables.md", "tables.tex", "cells.csv", "comparisons.csv", "cost.csv"):
        assert (out / name).stat().st_size > 0
    assert report.main([str(tmp_path / "nowhere")]) == 2


def test_report_content(tmp_path: Path) -> None:
    """The report from rows alone: the detection column with its mean, the reference rows and the flag on a method
    that does not beat the mean image, the tables with no results folded into one line (not printed empty), the
    symbols explained once, a learning-curve figure per task and the method-internal losses below them."""
    page = report.build_report(_rows(), tmp_path / "r").read_text(encoding="utf-8")
    assert ">0.850&nbsp;±&nbsp;0.050</td>" in page and ">detection (IoU .5)</th>" in page
    assert ">Trivial (reference)</td>" in page and "ref refstart" in page
    assert ">0.060&nbsp;±&nbsp;0.007 †</td>" in page
    assert "† Grid on MNIST hard: RMSE not below the mean image's (0.058)." in page
    assert ("Tables 3-4: not in this run; run sweeps/configs/table3.yaml, sweeps/configs/table4.yaml" in page
            and "Table 3: sensitivity" not in page and "Gabor: not in this run (sweeps/configs/table1.yaml" in page)
    assert page.count("= the paper reports no number") == 1
    assert "<li><b>precision</b>: not recorded on ?</li>" in page                  # fixture rows carry no params
    rows = _rows().assign(params_json='{"train.precision": "fp32", "train.device": "cuda"}')
    page = report.build_report(rows, tmp_path / "r2").read_text(encoding="utf-8")
    assert "<li><b>precision</b>: fp32 on cuda</li>" in page
    alts = re.findall(r'<img src="data:image/png;base64,[^"]+" alt="([^"]*)"', page)
    for task in ("recon", "classify"):
        assert {f"learning curves ({task}) against training steps",
                f"learning curves ({task}) against training core-seconds"} <= set(alts)
    assert page.index("Learning curves (test metrics)") < page.index("Training losses (method-internal)")
    assert "Grid: MIST&#x27;s task network on a fixed grid of patches" in page          # what each method is
    assert "Perturbed top-K:" not in page                                   # only the methods of this run


def test_learning_curves_plot_mean_band_and_reference() -> None:
    """The plotted line is the mean over seeds at each step, the band the min-max; a reference is a dashed level."""
    from analysis import figures

    fig = figures.learning_curve_figure(tables.check_rows(_rows()), "recon", x="step")
    ax = next(a for a in fig.axes if a.get_title() == "MNIST hard: RMSE")
    mist = next(ln for ln in ax.lines if ln.get_color() == figures.method_color("mist") and ln.get_marker() == "o")
    assert list(mist.get_xdata()) == [10, 20] and np.allclose(mist.get_ydata(), [1.5 * 0.055, 0.055])
    band = ax.collections[0].get_paths()[0].vertices  # MIST's band: min-max over its seeds at each step
    assert set(np.round(band[:, 1], 6)) == set(np.round([1.5 * 0.045, 1.5 * 0.065, 0.045, 0.065], 6))
    trivial = [ln for ln in ax.lines if ln.get_linestyle() == "--"]
    assert ax.get_xscale() == "log" and any(np.allclose(ln.get_ydata(), 0.058) for ln in trivial)


def test_heatmap_history_and_figure(tmp_path: Path) -> None:
    """At most MAX_SNAPSHOTS evenly spaced snapshots, the first and last kept; the strip shows them with a colour bar."""
    from analysis import figures
    from sweeps.artifacts import MAX_SNAPSHOTS, HeatmapHistory

    h = HeatmapHistory.__new__(HeatmapHistory)  # no data needed to choose snapshots
    h.maps = [None] * 25
    keep = h.evenly_spaced()
    assert len(keep) == MAX_SNAPSHOTS == 12 and keep[0] == 0 and keep[-1] == 24 and set(np.diff(keep)) <= {2, 3}
    h.maps = [None] * 5
    assert list(h.evenly_spaced()) == [0, 1, 2, 3, 4]
    assert list(figures.evenly_spaced(9, 8)) == [0, 1, 2, 3, 5, 6, 7, 8] and len(figures.evenly_spaced(0, 8)) == 0
    fig = figures.heatmap_figure(np.arange(100, 1100, 100), np.random.default_rng(0).random((10, 8, 8)),
                                 image=np.zeros((1, 8, 8)))
    shown = [a for a in fig.axes if a.get_title().startswith("step ")]
    assert len(shown) == 10 and shown[0].images[0].get_cmap().name == "magma"
    assert len(fig.axes) == 12  # the image, 10 snapshots, the colour bar


def test_example_figure_draws_ground_truth_and_scored_detections() -> None:
    """The input panel holds the image's gt_count ground-truth boxes; the detections panel its top gt_count boxes by
    score, each named with its score in the panel's legend."""
    from matplotlib.patches import Rectangle

    from analysis import figures

    gt = np.zeros((1, 3, 4))
    gt[0, :2] = [[1, 1, 9, 9], [10, 10, 20, 20]]                           # 2 instances, one padding row
    boxes = np.array([[[0, 0, 8, 8], [2, 2, 6, 6], [12, 12, 18, 18]]])
    fig = figures.example_figure(np.zeros((1, 1, 24, 24)), boxes, np.array([[0.9, 0.1, 0.5]]),
                                 gt_counts=np.array([2]), gt_boxes=gt, n_examples=1)
    panel = {a.get_title(): a for a in fig.axes}
    rects = {t: [p.get_xy() for p in panel[t].patches if isinstance(p, Rectangle)] for t in ("input", "detections")}
    assert rects["input"] == [(0.5, 0.5), (9.5, 9.5)]
    assert rects["detections"] == [(-0.5, -0.5), (11.5, 11.5)]                # scores 0.9 and 0.5, not 0.1
    assert [t.get_text() for t in panel["detections"].get_legend().get_texts()] == ["0.90", "0.50"]


def test_main_logs_the_report_to_mlflow(tmp_path: Path) -> None:
    """--mlflow-experiment logs the report folder (default: beside the rows) as artifacts of a real MLflow run."""
    from mlflow.tracking import MlflowClient

    sweep = tmp_path / "s"
    sweep.mkdir()
    _rows().to_parquet(sweep / "results.parquet")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert report.main([str(sweep / "results.parquet"), "--mlflow-experiment", "bench", "--tracking-uri", uri]) == 0
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("bench").experiment_id])
    assert {"report/report.html", "report/tables.md"} <= {a.path for a in client.list_artifacts(run.info.run_id, "report")}
    assert (sweep / "report" / "report.html").is_file()


def test_cost_includes_sweeps_that_are_no_paper_table() -> None:
    """A smoke/quick sweep has table None: its trials must still appear in the cost table."""
    rows = _rows()
    rows = rows.assign(table=None)
    cost = tables.cost_table(rows)
    assert len(cost) > 0 and (cost["table"] == "-").all()
    assert cost["trials"].sum() == rows["trial"].nunique()


def test_method_colours_are_stable() -> None:
    """Named methods take tab10 in METHOD_LABELS order (10 of them: C0-C9); any other name one of tab20's light
    shades by its crc32, the same in every process and never a named method's."""
    import zlib

    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    from analysis.figures import method_color

    assert len(paper.METHOD_LABELS) == 10, "update the hand-checked colours below"
    assert [method_color(m) for m in paper.METHOD_LABELS] == [f"C{i}" for i in range(10)]
    named = {to_hex(f"C{i}") for i in range(10)}
    for other in ("mymethod", "oracle_task"):
        assert method_color(other) == to_hex(colormaps["tab20"](2 * (zlib.crc32(other.encode()) % 10) + 1))
        assert method_color(other) not in named


def test_report_reads_nothing_outside_the_sweep_folder(tmp_path: Path) -> None:
    """A `trial` value that is an absolute path (or `..`), or a PNG that links out, pulls no file into the HTML."""
    import base64

    sweep = _write_sweep(tmp_path)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    secret = b"\x89PNG\r\n\x1a\nnot-for-the-report"
    (outside / "secret.png").write_bytes(secret)
    np.savez(outside / "predictions.npz", images=np.zeros((1, 1, 8, 8), np.float32))
    rows = _rows()
    rows["trial"] = rows["trial"].replace({"mist_mnist_hard_recon_s0": str(outside),      # absolute: outside
                                           "grid_mnist_hard_recon_s0": "../../elsewhere"})  # relative: outside too
    easy = sweep / "trials" / "mist_mnist_easy_recon_s0"   # inside, but its PNG is a link to the outside file
    easy.mkdir(parents=True)
    (easy / "linked.png").symlink_to(outside / "secret.png")
    path = report.build_report(rows, tmp_path / "out", sweep)
    page = path.read_text(encoding="utf-8")
    assert base64.b64encode(secret).decode("ascii") not in page
    assert page.count("lies outside the sweep folder") == 2 and "linked.png links outside the sweep folder" in page
    inside = report._inside(sweep / "trials" / "x", sweep)
    assert inside is not None and report._inside(sweep / "trials" / str(outside), sweep) is None


def test_method_summary_marks_references_and_flags_losers() -> None:
    """Final rows of 2 seeds per method: means by hand, the reference rows last and marked, and a competitor flagged
    when its RMSE is not below the mean image's or its detection not above the k-means floor."""
    from analysis.tables import format_summary, method_summary

    rows = []
    for m, rmse, det in [("mist", 0.18, 0.80), ("air", 0.31, 0.90), ("trivial", 0.30, 0.0), ("kmeans", 0.06, 0.87)]:
        for s in (0, 1):
            for metric, v in (("rmse", rmse + 0.02 * s), ("det_rate", det)):
                rows.append(dict(sweep="q", trial=f"{m}{s}", phase="seeds", method=m, dataset="mnist_hard",
                                 table=None, task="recon", scale="quick", seed=s, step=1000, final=True,
                                 metric=metric, value=v, core_seconds=1.0, wall_seconds=1.0))
    out = method_summary(pd.DataFrame(rows)).set_index("method")
    assert list(out.index) == ["mist", "air", "trivial", "kmeans"]
    assert out.loc["mist", "rmse"] == pytest.approx(0.19) and out.loc["mist", "rmse_std"] == pytest.approx(0.02 / 2**0.5)
    assert out.loc["mist", "note"] == "detection not above the k-means floor (0.870)"
    assert out.loc["air", "note"] == "RMSE not below the mean image's (0.310)" and out.loc["air", "flagged"] == "rmse"
    assert out.loc["kmeans", "note"] == "reference, not a competitor" and bool(out.loc["trivial", "reference"])
    shown, cls = format_summary(out.reset_index())
    assert shown.loc[3, "method"] == "k-means floor (reference)" and shown.loc[0, "RMSE"] == "0.190 ± 0.014"
    assert shown.loc[1, "RMSE"] == "0.320 ± 0.014 †" and cls.loc[1, "RMSE"] == "flag"
    assert cls.loc[2, "method"] == "ref refstart" and cls.loc[0, "RMSE"] == ""
    assert "AP@.5" not in shown.columns  # no row has it


# The report's drawings: tick labels readable, every line named, labels that do not pile up, one core-s per trial.

def _smoke_rows() -> pd.DataFrame:
    """Rows shaped like the smoke sweep's: evaluations at steps 3 and 6 only, a fraction of a core-second each (a
    log axis spanning a factor of 2; MIST's core-seconds as a smoke sweep measured them), MIST on 2 seeds beside
    the mean image, a training loss per method."""
    rows = []
    for method, core in (("mist", {3: 0.245, 6: 0.44}), ("trivial", {3: 0.0006, 6: 0.001})):
        for seed in (0, 1):
            for step in (3, 6):
                for metric, value in (("rmse", 0.34 - 0.001 * step), ("det_rate", 0.3 + 0.01 * seed),
                                      ("train_loss", 0.1 - 0.002 * step + 0.01 * seed)):
                    rows.append(dict(sweep="smoke", trial=f"{method}{seed}", phase="seeds", method=method,
                                     dataset="mnist_hard", table=None, task="recon", scale="smoke", seed=seed,
                                     step=step, final=step == 6, metric=metric, value=value,
                                     core_seconds=core[step] * (1 + 0.03 * seed), wall_seconds=1.0))
    return tables.check_rows(pd.DataFrame(rows))


def _wide_rows() -> pd.DataFrame:
    """Rows of a long run: evaluations every 100 of 1,000 steps, core-seconds from 0.1 to about 1,000."""
    rows = []
    for method, per_step in (("mist", 1.0), ("grid", 0.0001)):
        for seed in (0, 1):
            for step in range(100, 1001, 100):
                for metric, value in (("rmse", 0.3 - 0.0001 * step), ("det_rate", 0.0005 * step), ("train_task", 1 / step)):
                    rows.append(dict(sweep="q", trial=f"{method}{seed}", phase="seeds", method=method,
                                     dataset="mnist_hard", table=None, task="recon", scale="quick", seed=seed,
                                     step=step, final=step == 1000, metric=metric, value=value,
                                     core_seconds=per_step * step * (1 + 0.1 * seed), wall_seconds=1.0))
    return tables.check_rows(pd.DataFrame(rows))


def _drawn(fig):
    """The figure laid out and drawn by Agg (as the report's PNG is); its renderer."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    fig.canvas.draw()
    return fig.canvas.get_renderer()


def _overlapping(texts, renderer, gap_pt: float = 1.0) -> list[tuple[str, str]]:
    """Pairs of texts whose rendered extents overlap or come closer than `gap_pt` points (labels that touch run
    together as much as overlapping ones)."""
    pad = gap_pt * renderer.points_to_pixels(1.0) / 2
    boxes = [(t.get_text(), t.get_window_extent(renderer).padded(pad)) for t in texts
             if t.get_visible() and t.get_text()]
    return [(a, b) for i, (a, ea) in enumerate(boxes) for b, eb in boxes[i + 1:]
            if ea.x0 < eb.x1 and eb.x0 < ea.x1 and ea.y0 < eb.y1 and eb.y0 < ea.y1]


def _assert_readable(fig) -> None:
    """Every axis's tick labels in view are distinct and their rendered extents do not overlap; the texts an Axes
    carries (annotations and its legend's entries) do not overlap either."""
    renderer = _drawn(fig)
    for ax in fig.axes:
        if not ax.get_visible() or not ax.axison:
            continue
        for name, axis in (("x", ax.xaxis), ("y", ax.yaxis)):
            lo, hi = sorted(axis.get_view_interval())
            shown = [t for loc, t in zip(axis.get_majorticklocs(), axis.get_majorticklabels())
                     if lo - 1e-9 * abs(hi) <= loc <= hi + 1e-9 * abs(hi) and t.get_visible() and t.get_text()]
            labels = [t.get_text() for t in shown]
            where = f"{ax.get_title() or ax.get_label()!r} {name} axis"
            assert len(set(labels)) == len(labels), f"{where}: tick labels repeat: {labels}"
            assert not _overlapping(shown, renderer), f"{where}: tick labels overlap: {_overlapping(shown, renderer)}"
        legend = ax.get_legend()
        texts = list(ax.texts) + (list(legend.get_texts()) if legend else [])
        assert not _overlapping(texts, renderer), f"{ax.get_title()!r}: labels overlap: {_overlapping(texts, renderer)}"


def _assert_lines_named(fig) -> None:
    """Wherever an Axes draws more than one line, each line's label is an entry of its legend (or the figure's)."""
    for ax in fig.axes:
        lines = [ln for ln in ax.get_lines() if ln.get_visible()]
        if len(lines) < 2:
            continue
        legends = [ax.get_legend(), *fig.legends]
        entries = {t.get_text() for lg in legends if lg is not None for t in lg.get_texts()}
        for ln in lines:
            assert ln.get_label() in entries, f"{ax.get_title()!r}: a line ({ln.get_label()!r}) not in a legend"


@pytest.mark.parametrize("rows", [_smoke_rows, _wide_rows, lambda: tables.check_rows(_rows())],
                         ids=["smoke", "1000-steps", "fixture"])
def test_curve_figures_have_readable_ticks_and_named_lines(rows) -> None:
    """Learning curves (log x over steps and core-seconds), training losses and quality against cost: distinct,
    non-overlapping tick labels at every span (a factor of 2 as in the smoke sweep, several decades) and a legend
    entry for every line of a panel that draws more than one."""
    from analysis import figures

    df = rows()
    figs = [figures.learning_curve_figure(df, "recon", x=x) for x in figures.CURVE_X]
    figs += [figures.loss_figure(df), figures.quality_cost_figure(df)]
    for fig in figs:
        assert fig is not None
        _assert_readable(fig)
        _assert_lines_named(fig)
    curve = figs[0].axes[0]
    assert curve.get_xscale() == "log" and len([t for t in curve.get_xticklabels() if t.get_text()]) >= 2


def test_log_ticks_and_labels() -> None:
    """LogTicks: 2 to 6 ticks at any span; PlainNumbers: the fewest decimals that write each tick exactly."""
    from analysis.figures import LogTicks, PlainNumbers

    loc, fmt = LogTicks(), PlainNumbers()
    assert list(loc.tick_values(2.9, 6.2)) == [3, 4, 5, 6]
    assert list(loc.tick_values(80, 1100)) == [100, 200, 500, 1000]
    assert list(loc.tick_values(0.05, 2000)) == [0.1, 1, 10, 100, 1000]
    assert 2 <= len(loc.tick_values(0.24, 0.46)) <= 6 and 2 <= len(loc.tick_values(3.01, 3.4)) <= 6
    assert len(loc.tick_values(1e-3, 1e9)) <= 6
    assert fmt.format_ticks([3, 3.5, 4, 4.5]) == ["3", "3.5", "4", "4.5"]
    assert fmt.format_ticks([100, 1000, 10000]) == ["100", "1,000", "10,000"]
    assert fmt.format_ticks([0.25, 0.3]) == ["0.25", "0.3"]


def test_detection_scores_do_not_pile_up() -> None:
    """Nine detections on almost the same spot, as an untrained method gives: each box its own colour, the scores
    beside the panel in a legend (one entry per box), no two labels overlapping."""
    from analysis import figures

    rng = np.random.default_rng(0)
    boxes = np.array([[4, 4, 14, 14]], np.float64) + rng.random((1, 9, 4))   # (1, 9, 4)
    scores = np.linspace(0.9, 0.5, 9)[None]                                   # (1, 9)
    fig = figures.example_figure(np.zeros((1, 1, 32, 32)), boxes, scores, recon=np.zeros((1, 1, 32, 32)),
                                 gt_counts=np.array([9]), gt_boxes=boxes, n_examples=1)
    _assert_readable(fig)
    det = next(a for a in fig.axes if a.get_title() == "detections")
    assert [t.get_text() for t in det.get_legend().get_texts()] == [f"{v:.2f}" for v in scores[0]]
    assert len({p.get_edgecolor() for p in det.patches}) == 9


def test_one_core_seconds_per_trial_in_every_table(tmp_path: Path) -> None:
    """A method's core-s / trial reads the same in its paper table, the every-method table and the cost table (the
    trials its results come from: seeds, not the search trial beside them), with sensible precision, and every
    table that shows it states that definition in its caption."""
    rows = tables.check_rows(_rows())
    view = tables.table_view(rows, paper.TABLES["1"]).frame
    t1 = view[(view["dataset"] == "MNIST easy") & (view["method"] == "MIST")][("core-s / trial", "")].iloc[0]
    cost = tables.format_cost(tables.cost_table(rows))
    c = cost[(cost["dataset"] == "MNIST easy") & (cost["method"] == "MIST")].iloc[0]
    summary, _ = tables.format_summary(tables.method_summary(rows))
    s = summary[(summary["dataset"] == "MNIST easy") & (summary["method"] == "MIST")].iloc[0]
    assert t1 == c["core-s / trial"] == s["core-s / trial"] == "20.0"  # (10 + 20 + 30) / 3; the search trial's 7 not
    assert c["core-s total"] == "67.0"                                  # 10 + 20 + 30 + 7
    assert [tables.format_core_seconds(x) for x in (1.57, 0.43, 0.001014, 15.0, 1234.5, math.nan)] == [
        "1.57", "0.430", "0.00101", "15.0", "1,234", "—"]
    page = report.build_report(rows, tmp_path / "r").read_text(encoding="utf-8")
    captions = []  # per table showing core-s / trial: the caption between the previous table and it
    for m in re.finditer(r"<table.*?</table>", page, flags=re.S):
        if "core-s / trial" in m.group(0):
            before = page[:m.start()].rsplit("</table>", 1)[-1]
            captions.append(" ".join(re.findall(r"<p class='caption'>(.*?)</p>", before, flags=re.S)))
    # Tables 1 and 2, the every-method tables of recon and classify, the cost table
    assert len(captions) == 5 and all(tables.CORE_S in c.replace("&#x27;", "'") for c in captions), captions
    assert "core-s total" in captions[-1]
