"""The benchmark report: tidy result rows -> one self-contained HTML file (tables, learning curves, comparisons,
cost, inline PNG figures), plus tables.md, tables.tex (the paper's layout), cells.csv, summary.csv, comparisons.csv,
cost.csv beside it.

    python -m analysis.report SWEEP_DIR_OR_PARQUET [--out DIR] [--mlflow-experiment NAME --tracking-uri URI]

SWEEP_DIR holds results.parquet and, optionally, trials/<trial>/predictions.npz, heatmaps_over_time.npz and
*.png; figures whose inputs are missing are skipped with a note. Only files inside SWEEP_DIR are read: a `trial`
value (or a symlink) that leads outside it is skipped with a note, so rows cannot pull other files into the HTML.
--out defaults to SWEEP_DIR/report. With --mlflow-experiment the output folder is also logged as artifacts of a new
run in that experiment.
"""
from __future__ import annotations

import base64
import html
import json
import logging
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from analysis import figures
from analysis.compare import CONFIDENCE, N_RESAMPLES, comparisons
from analysis.paper import METHOD_LABELS, METHOD_NOTES, TABLES, dataset_label, method_label
from analysis.tables import (CORE_S, CORE_S_TOTAL, FLAG, LEGEND, all_tables, check_rows, cost_table, format_cost, format_summary,
                             method_summary, table_view, to_html, to_latex, to_markdown, trial_summary)


__all__ = ["load_rows", "representative_trials", "load_npz", "build_report", "log_to_mlflow", "report_sweep", "main"]

log = logging.getLogger("analysis.report")
CSS = """body{font-family:system-ui,sans-serif;margin:24px;max-width:1250px;color:#222}
h1{font-size:22px}h2{font-size:18px;border-bottom:1px solid #ccc;margin-top:28px}h3{font-size:15px}
div.wide{overflow-x:auto}table.result{border-collapse:collapse;font-size:12px;margin:6px 0}
table.result th,table.result td{border:1px solid #ccc;padding:2px 5px;text-align:right}
table.result thead th{background:#f0f0f0;text-align:center}table.result tbody th{text-align:left;white-space:nowrap}
table.result tbody tr:nth-child(even){background:#fafafa}
p.caption,p.note{font-size:13px;color:#555}li{font-size:14px;margin:3px 0}
img{display:block;max-width:100%;border:1px solid #eee;margin:4px 0}.sig{color:#064}.nsig{color:#666}
table.result td.ref{background:#eef0f4;color:#555;font-style:italic}
table.result td.refstart{border-top:2px solid #777}table.result td.flag{background:#fde8e4;color:#a11}
p.flag{font-size:13px;color:#a11}p.folded{font-size:14px;background:#f6f6f6;padding:4px 8px}
table.result td{white-space:nowrap}table.result td:last-child{white-space:normal;text-align:left;min-width:180px}
div.pair{display:flex;flex-wrap:wrap;gap:8px}div.pair img{max-width:49%}"""


def load_rows(path: str | Path) -> tuple[pd.DataFrame, Path]:
    """(rows, sweep folder) from a sweep folder (its results.parquet) or a parquet file."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such folder or file (give a sweep folder, e.g. runs/sweeps/NAME, or its "
                                "results.parquet)")
    parquet = p / "results.parquet" if p.is_dir() else p
    if not parquet.is_file():
        raise FileNotFoundError(f"no result rows at {parquet}")
    return check_rows(pd.read_parquet(parquet)), parquet.parent


def representative_trials(df: pd.DataFrame) -> pd.DataFrame:
    """One finished trial per (dataset, task, method) for figures: seeds phase first, then the lowest seed."""
    t = trial_summary(df)
    order = {m: i for i, m in enumerate(METHOD_LABELS)}
    t = t[t["finished"]].assign(rank=lambda x: (x["phase"] != "seeds").astype(int),
                                m_order=lambda x: x["method"].map(order).fillna(len(order)))
    t = t.sort_values(["rank", "seed", "trial"]).groupby(["dataset", "task", "method"], sort=False).head(1)
    return t.sort_values(["dataset", "task", "m_order"]).drop(columns=["rank", "m_order"])


def load_npz(path: Path) -> dict[str, np.ndarray] | None:
    """The arrays of an .npz file, or None (with a log line) when it is missing or unreadable."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        log.warning("cannot read %s: %s", path, e)
        return None


def _inside(path: Path, root: Path) -> Path | None:
    """`path` resolved (symlinks and `..` followed), or None when that lies outside `root`."""
    real = path.resolve()
    return real if real.is_relative_to(root.resolve()) else None


def _trial_files(sweep_dir: Path, trial: str, notes: list[str]) -> tuple[Path | None, list[Path]]:
    """(the trial's folder, its first 4 PNGs), both inside the sweep folder; (None, []) and a note otherwise."""
    tdir = _inside(sweep_dir / "trials" / trial, sweep_dir)  # an absolute `trial` replaces the whole path
    if tdir is None:
        notes.append(f"trial {trial!r}: its folder lies outside the sweep folder; nothing read from it")
        return None, []
    pngs = []
    for p in sorted(tdir.glob("*.png"))[:4] if tdir.is_dir() else []:
        if _inside(p, sweep_dir) is None:
            notes.append(f"trial {trial!r}: {p.name} links outside the sweep folder; not embedded")
        else:
            pngs.append(p)
    return tdir, pngs


def _npz_inside(tdir: Path | None, name: str, sweep_dir: Path, notes: list[str]) -> dict[str, np.ndarray] | None:
    """load_npz of tdir/name when that file lies inside the sweep folder (a symlink may lead out)."""
    if tdir is None:
        return None
    if _inside(tdir / name, sweep_dir) is None:
        notes.append(f"{tdir.name}/{name} links outside the sweep folder; not read")
        return None
    return load_npz(tdir / name)


def _img(uri: str, alt: str) -> str:
    return f'<img src="{uri}" alt="{html.escape(alt)}">'


def _figure_html(make: Any, alt: str, notes: list[str], *args: Any, **kw: Any) -> str:
    """Call a figure function; its PNG inline, or '' and a note when it has nothing to draw or fails."""
    try:
        fig = make(*args, **kw)
    except Exception as e:  # a malformed artifact must not sink the report
        notes.append(f"{alt}: figure failed ({type(e).__name__}: {e})")
        return ""
    return "" if fig is None else _img(figures.to_data_uri(fig), alt)


def _figures(df: pd.DataFrame, sweep_dir: Path | None, notes: list[str]) -> str:
    parts = []
    reps = representative_trials(df)
    for (dataset, task), g in reps.groupby(["dataset", "task"], sort=True):
        head = f"{dataset_label(str(dataset))} ({task})"
        preds: dict[str, dict[str, np.ndarray]] = {}
        section = []
        for r in g.itertuples(index=False):
            tdir, pngs = (None, []) if sweep_dir is None else _trial_files(sweep_dir, str(r.trial), notes)
            npz = None if sweep_dir is None else _npz_inside(tdir, "predictions.npz", sweep_dir, notes)
            if npz is None:
                notes.append(f"{head}, {method_label(r.method)}: no predictions.npz for trial {r.trial}; figure skipped")
            else:
                preds[str(r.method)] = npz
                section.append(_figure_html(figures.example_figure, f"{head}: {method_label(r.method)} examples",
                                            notes, title=f"{method_label(r.method)}, trial {r.trial}", **npz))
            hm = None if sweep_dir is None else _npz_inside(tdir, "heatmaps_over_time.npz", sweep_dir, notes)
            if hm is not None:
                section.append(f"<h4>Heatmap during training, {html.escape(method_label(r.method))} (Figure 7c)</h4>"
                               + _figure_html(figures.heatmap_figure, f"{head}: heatmap over training", notes, **hm))
            section += [_img("data:image/png;base64," + base64.b64encode(p.read_bytes()).decode("ascii"),
                             f"{r.trial}/{p.name}") for p in pngs]
        if len(preds) > 1:
            section.insert(0, _figure_html(figures.methods_figure, f"{head}: methods side by side", notes, preds,
                                           title="All methods on the same test images (Figure 2 style)"))
        if any(section):
            parts.append(f"<h3>{html.escape(head)}</h3>" + "\n".join(s for s in section if s))
    cost = _figure_html(figures.quality_cost_figure, "quality against cost", notes, df)
    if cost:
        parts.append("<h3>Quality against cost</h3><p class='note'>Final headline metric of each trial against "
                     "its training core-seconds; o = search trial, ^ = seed trial.</p>" + cost)
    return "\n".join(parts) or "<p class='note'>No figures: no predictions or final results found.</p>"


def _learning_curves(df: pd.DataFrame, notes: list[str]) -> str:
    """Per task: test metrics against steps, then against core-seconds; '' when no task has evaluations."""
    parts = []
    for task in sorted(df["task"].astype(str).unique()):
        figs = [_figure_html(figures.learning_curve_figure, f"learning curves ({task}) against {label}", notes,
                             df, task, x=x) for x, label in figures.CURVE_X.items()]
        if any(figs):
            parts.append(f"<h3>{html.escape(task)}</h3><div class='pair'>" + "".join(figs) + "</div>")
    return "".join(parts)


def _id_ranges(ids: list[str]) -> str:
    """['2', '3', '4'] -> 'Tables 2-4'; ['1', '3'] -> 'Tables 1, 3'; ['3'] -> 'Table 3'."""
    if len(ids) == 1:
        return f"Table {ids[0]}"
    nums = [int(i) for i in ids]
    run = nums == list(range(nums[0], nums[0] + len(nums)))
    return f"Tables {ids[0]}-{ids[-1]}" if run else "Tables " + ", ".join(ids)


def _tables_html(df: pd.DataFrame, md: list[str]) -> str:
    """Each paper table with results (a TableView); the tables and rows without any folded into one line each;
    the symbols explained once, below."""
    body, empty = [], []
    for tid, spec in TABLES.items():
        view = table_view(df, spec)
        if view.frame.empty:
            empty.append(tid)
            continue
        body.append(f"<h3>{html.escape(spec.title)}</h3><p class='caption'>Paper: {html.escape(spec.caption)}<br>"
                    f"Here: {html.escape(CORE_S)}.</p>"
                    f"<div class='wide'>{to_html(view.frame, index=False, classes=view.classes)}</div>")
        md.append(f"## {spec.title}\n\n{CORE_S}.\n\n{to_markdown(view.frame, index=False)}\n")
        if view.not_run:
            body.append(f"<p class='folded'>{html.escape(', '.join(view.not_run))}: not in this run "
                        f"({html.escape(spec.config)} runs them).</p>")
        if view.flags:
            flags = "<br>".join(f"{FLAG} {html.escape(f, quote=False)}" for f in view.flags)
            body.append(f"<p class='flag'>{flags}</p>")
    if empty:
        line = (f"{_id_ranges(empty)}: not in this run; run "
                + ", ".join(TABLES[t].config for t in empty) + " (python -m sweeps.run CONFIG).")
        body.append(f"<p class='folded'>{html.escape(line)}</p>")
        md.append(line + "\n")
    body.append(f"<p class='note'>{html.escape(LEGEND)}</p>")
    md.append(LEGEND + "\n")
    return "\n".join(body)


def _comparisons_html(comps: pd.DataFrame) -> str:
    """Sentences where at least one seed pairs; one line per table row listing the baselines with none."""
    items = []
    for r in comps[comps["n"] > 0].itertuples(index=False):
        cls = "nsig" if r.sentence.startswith("No significant") or r.ci == "n too small" else "sig"
        items.append(f"<li class='{cls}'>Table {r.table}: {html.escape(r.sentence)}</li>")
    none = comps[comps["n"] == 0]
    for (t, row), g in none.groupby(["table", "row"], sort=False):
        names = ", ".join(method_label(m) for m in g["baseline"])
        items.append(f"<li class='nsig'>Table {t}, {html.escape(str(row))}: not compared with {html.escape(names)} "
                     "(no seed with results for both).</li>")
    return "<ul>" + "".join(items) + "</ul>"


def _precisions(df: pd.DataFrame) -> list[str]:
    """Each train.precision the trials ran at (mist_core.precision), with their devices; rows from before the
    setting was recorded say so."""
    seen = set()
    for text in df.drop_duplicates("trial")["params_json"]:
        try:
            p = json.loads(text) if isinstance(text, str) and text else {}
        except ValueError:
            p = {}
        seen.add((str(p.get("train.precision", "not recorded")), str(p.get("train.device", "?"))))
    return [f"{prec} on {dev}" for prec, dev in sorted(seen)]


def _summary(df: pd.DataFrame) -> str:
    t = trial_summary(df)
    items = {"sweeps": sorted(t["sweep"].astype(str).unique()), "scales": sorted(t["scale"].astype(str).unique()),
             "tasks": sorted(t["task"].astype(str).unique()),
             "datasets": [dataset_label(d) for d in sorted(t["dataset"].astype(str).unique())],
             "methods": [method_label(m) for m in sorted(t["method"].astype(str).unique())]}
    items["precision"] = _precisions(df)
    lis = "".join(f"<li><b>{k}</b>: {html.escape(', '.join(v))}</li>" for k, v in items.items())
    warn = ("<p class='note'><b>Several scales are mixed in these rows; the tables pool them.</b></p>"
            if len(items["scales"]) > 1 else "")
    notes = [METHOD_NOTES[m] for m in sorted(t["method"].astype(str).unique()) if m in METHOD_NOTES]
    methods = f"<p class='note'>{'<br>'.join(html.escape(n) for n in notes)}</p>" if notes else ""
    return (f"<ul>{lis}<li><b>trials</b>: {len(t)} ({int((t['phase'] == 'search').sum())} search, "
            f"{int((t['phase'] == 'seeds').sum())} seeds), {len(df):,} rows</li></ul>{warn}{methods}")


def build_report(df: pd.DataFrame, out_dir: str | Path, sweep_dir: str | Path | None = None,
                 title: str = "mist-bench report") -> Path:
    """Write report.html (self-contained) and the tables as Markdown/LaTeX/CSV into out_dir; return the HTML path."""
    df = check_rows(df)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sweep = None if sweep_dir is None else Path(sweep_dir)
    tables, comps, cost = all_tables(df), comparisons(df), cost_table(df)
    notes: list[str] = []
    md, tex, body = [f"# {title}\n"], [], [f"<h1>{html.escape(title)}</h1>", _summary(df)]
    body.append("<h2>Tables 1-4</h2><p class='note'>One row per method. ours = mean ± sample std over trials (the "
                "seeds phase when there is one, else every final trial; (n=k) when fewer trials have that metric); "
                "paper = as printed; Δ = ours − paper; detection = ground-truth instances matched at IoU ≥ .5 by "
                "the image's top-count boxes; steps = the most any trial ran; core-s / trial as each caption says, the "
                "same in every table. Tables 2-4 are in percent.</p>")
    body.append(_tables_html(df, md))
    tex += [to_latex(wide, caption=TABLES[tid].title, label=f"tab:mist-bench-{tid}")
            for tid, (_, wide) in tables.items()]
    pd.concat([c for c, _ in tables.values()]).to_csv(out / "cells.csv", index=False)
    summary = method_summary(df)
    if not summary.empty:
        body.append("<h2>Every method: final test metrics</h2><p class='note'>Every (task, dataset, method) in "
                    "the rows, the paper's tables or not; columns as above. Learned methods are read against the "
                    f"reference rows; {FLAG} and the note mark one that does not beat them.</p>")
        for task, s in summary.groupby("task", sort=True):
            fs, cls = format_summary(s.reset_index(drop=True))
            body.append(f"<h3>{html.escape(str(task))}</h3><p class='caption'>{html.escape(CORE_S)}.</p>"
                        f"<div class='wide'>{to_html(fs, index=False, classes=cls)}</div>")
            md.append(f"## Every method: final test metrics ({task})\n\n{CORE_S}.\n\n"
                      f"{to_markdown(fs, index=False)}\n")
        summary.to_csv(out / "summary.csv", index=False)
    curves = _learning_curves(df, notes)
    body.append("<h2>Learning curves (test metrics)</h2><p class='note'>The test metrics at every evaluation "
                "(interim ones on a subset of the test split, the last on all of it): line = mean over seeds, band = "
                "min-max over seeds; log x. Dashed: a reference method's final mean.</p>"
                + (curves or "<p class='note'>No evaluations in these rows.</p>"))
    body.append(f"<h2>MIST against each baseline, paired by seed</h2><p class='note'>difference = MIST − baseline "
                f"per seed; {int(CONFIDENCE * 100)}% CI: percentile bootstrap ({N_RESAMPLES:,} resamples) for n ≥ 3, "
                "paired t for n = 2.</p>")
    if comps.empty:
        body.append("<p class='note'>No MIST results to compare.</p>")
    else:
        body.append(_comparisons_html(comps))
        md.append("## MIST against each baseline\n\n" + "\n".join(f"- Table {t}: {s}" for t, s in
                                                                   zip(comps["table"], comps["sentence"])) + "\n")
    comps.to_csv(out / "comparisons.csv", index=False)
    cost.to_csv(out / "cost.csv", index=False)
    fc = format_cost(cost)
    body.append(f"<h2>Cost</h2><p class='caption'>trials = search + seeds, so unequal budgets show; "
                f"{html.escape(CORE_S_TOTAL)}; {html.escape(CORE_S)}.</p>" + to_html(fc, index=False))
    md.append(f"## Cost\n\n{CORE_S_TOTAL}; {CORE_S}.\n\n{to_markdown(fc, index=False)}\n")
    body.append("<h2>Figures</h2>" + _figures(df, sweep, notes))
    loss = _figure_html(figures.loss_figure, "training losses", notes, df)
    if loss:
        body.append("<h2>Training losses (method-internal)</h2><p class='note'>Each method's own training losses "
                    "(mean since the previous report; paper Figure 7 a, b): not comparable across methods. Line = mean "
                    "over a method's trials (its seeds when it has them), band = their min-max.</p>"
                    + loss)
    if notes:
        body.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body.append(f"<p class='note'>Generated {stamp} by analysis.report.</p>")
    page = (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
    (out / "tables.md").write_text("\n".join(md), encoding="utf-8")
    (out / "tables.tex").write_text("\n".join(tex), encoding="utf-8")
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


def log_to_mlflow(out_dir: Path, experiment: str | None = None, tracking_uri: str | None = None,
                  sweep_dir: str | Path | None = None) -> str:
    """Log the report folder as artifacts under report/; return the run id. With `sweep_dir` (a sweep folder with
    its sweep.json): on that sweep's parent run, in its MLflow store unless `tracking_uri` is given. Otherwise on a
    new run named 'benchmark-report' in `experiment`."""
    if sweep_dir is not None:
        from sweeps import store, tracking  # analysis does not need sweeps unless it reports on one

        state = store.SweepDir(str(Path(sweep_dir).parent), Path(sweep_dir).name).read_json(store.SWEEP_FILE)
        if not state or "experiment_id" not in state:
            raise FileNotFoundError(f"{sweep_dir}: no {store.SWEEP_FILE} naming the sweep's MLflow experiment")
        return tracking.log_sweep_artifacts(tracking_uri or state["tracking_uri"], state["experiment_id"],
                                            state["uid"], out_dir, "report")
    import mlflow  # slow import: only when asked

    if experiment is None:
        raise ValueError("log_to_mlflow: name an experiment or a sweep folder")
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name="benchmark-report") as run:
        mlflow.log_artifacts(str(out_dir), artifact_path="report")
        return run.info.run_id


def report_sweep(source: str | Path, out_dir: str | Path | None = None, title: str = "mist-bench report") -> Path:
    """The report of a sweep folder (or a results parquet) into out_dir (default SWEEP_DIR/report); report.html's path.
    Rows that cannot be read raise FileNotFoundError or CommandError naming the file."""
    from sweeps.command import CommandError

    try:
        df, sweep_dir = load_rows(source)
    except ValueError as e:  # a corrupt parquet file, rows without the tidy columns
        raise CommandError(f"{source}: cannot read its result rows ({e})") from None
    return build_report(df, out_dir or sweep_dir / "report", sweep_dir, title)


def main(argv: Sequence[str] | None = None) -> int:
    from sweeps.command import Parser, run_command

    ap = Parser(prog="python -m analysis.report", description=__doc__.split("\n\n")[0])
    ap.add_argument("source", help="a sweep folder (with results.parquet) or a results parquet file")
    ap.add_argument("--out", help="output folder (default: SWEEP_DIR/report)")
    ap.add_argument("--title", default="mist-bench report")
    ap.add_argument("--mlflow-experiment", help="also log the report as artifacts of a run in this experiment")
    ap.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLflow's own default)")
    ap.add_argument("--debug", action="store_true", help="show the traceback of an error")
    a = ap.parse_args(argv)

    def report() -> int:
        path = report_sweep(a.source, a.out, a.title)
        if a.mlflow_experiment:
            run_id = log_to_mlflow(path.parent, a.mlflow_experiment, a.tracking_uri)
            print(f"logged to MLflow experiment {a.mlflow_experiment!r}, run {run_id}", file=sys.stderr)
        elif (Path(a.source) / "sweep.json").is_file():   # a sweep folder: the report goes on its parent run too
            try:
                run_id = log_to_mlflow(path.parent, tracking_uri=a.tracking_uri, sweep_dir=a.source)
                print(f"logged on the sweep's MLflow run {run_id}, under report/", file=sys.stderr)
            except Exception as e:  # noqa: BLE001 - the report is written; MLflow may be elsewhere or down
                from sweeps.tracking import redact_uri

                print(redact_uri(f"report: not logged to MLflow ({type(e).__name__}: {e})"), file=sys.stderr)
        print(path)
        return 0

    return run_command(report, a.debug)


if __name__ == "__main__":
    raise SystemExit(main())
