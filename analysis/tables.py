"""Tidy result rows -> the paper's Tables 1-4 (ours: mean ± std over seeds, n; paper; difference) and cost.

Selection of a cell (table T, task, dataset, method, metric): the rows with `final` true for that task, dataset
and method; of those, the ones whose `table` is T when there are any (else every table's); of those, the
`seeds` phase when there is one (else every final row, e.g. a search-only sweep); then the metric. One value
per trial (its last final row); the cell is the mean and sample std (ddof=1) over trials, n = trials with a
finite value. A missing method, dataset or seed never raises: the cell reads "— (n=0)".

    cells = table_cells(df, TABLES["1"])     # tidy: one row per cell, numbers in the paper's units
    wide = format_table(cells, TABLES["1"])  # strings, rows x (method, ours|paper|Δ), the paper's layout
    to_markdown(wide); to_html(wide); to_latex(wide)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.paper import (ADDED_METHODS, METHOD_LABELS, REFERENCE_METHODS, TABLES, Column, TableSpec, added_mark,
                            dataset_label, lower_is_better, method_label, metric_label)

__all__ = ["REQUIRED_COLUMNS", "MISSING", "NOT_RUN", "PAPER_NONE", "FLAG", "LEGEND", "check_rows", "final_rows",
           "select_trials", "results_phase", "core_seconds_per_trial", "format_core_seconds", "CORE_S",
           "CORE_S_TOTAL", "trial_values", "table_cells", "format_ours", "format_table", "all_tables", "per_trial",
           "method_stats", "bar_flags", "TableView", "table_view", "trial_summary", "cost_table", "format_cost",
           "method_summary", "format_summary", "to_markdown", "to_html", "to_latex"]

REQUIRED_COLUMNS = ("sweep", "trial", "phase", "method", "dataset", "table", "task", "scale", "seed", "step",
                    "final", "metric", "value", "core_seconds", "wall_seconds")
NOT_RUN = "—"     # no result in these rows: the method, dataset or table did not run
PAPER_NONE = "∅"  # the paper prints no number for this cell
FLAG = "†"        # does not beat the reference line in this column (the note says which)
MISSING = NOT_RUN
SUB = ("ours", "paper", "Δ")
LEGEND = (f"{NOT_RUN} = not run here (no result in these rows); {PAPER_NONE} = the paper reports no number; "
          f"{FLAG} = does not beat the reference line in that column (the note names it). Shaded rows below the "
          "line are reference methods, no competitors: the mean image (Trivial) and k-means of ink pixels with "
          "no learning (k-means floor).")


# The one core-seconds-per-trial of every table (paper tables, every-method summary, cost), stated in each caption.
CORE_S = ("core-s / trial = the mean, over the trials a row's results come from (its seeds-phase trials when it has "
          "any, else every finished trial), of each trial's training CPU seconds up to its final evaluation")
CORE_S_TOTAL = ("core-s total = the sum of training CPU seconds over all a row's trials, search and early-stopped "
                "ones included")


def check_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Raise ValueError naming missing columns; return the rows with `final` as bool and `table` as str."""
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"result rows lack columns {missing}; have {list(df.columns)}")
    return df.assign(final=df["final"].fillna(False).astype(bool), table=df["table"].astype(str))


def final_rows(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["final"]]


def select_trials(df: pd.DataFrame, table: str, task: str, dataset: str, method: str) -> pd.DataFrame:
    """Final rows of one (table, task, dataset, method): that table's if any, the seeds phase if any."""
    f = df[df["final"] & (df["task"] == task) & (df["dataset"] == dataset) & (df["method"] == method)]
    if (f["table"] == table).any():
        f = f[f["table"] == table]
    return results_phase(f)


def results_phase(f: pd.DataFrame) -> pd.DataFrame:
    """Of one method's final rows, those its results come from: the seeds phase when there is one, else all."""
    return f[f["phase"] == "seeds"] if (f["phase"] == "seeds").any() else f


def core_seconds_per_trial(f: pd.DataFrame) -> float:
    """CORE_S of the final rows `f` of the trials a result comes from (results_phase's): the mean over trials of
    each one's largest cumulative core_seconds; NaN without rows."""
    return float(f.groupby("trial")["core_seconds"].max().mean()) if len(f) else math.nan


def format_core_seconds(x: float) -> str:
    """Three significant digits below 100 ('1.57', '0.00101', '15.0'), whole seconds with separators above
    ('1,234'); NOT_RUN when not finite."""
    if not np.isfinite(x):
        return NOT_RUN
    if x == 0 or abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.{max(0, 2 - math.floor(math.log10(abs(x))))}f}"


def trial_values(df: pd.DataFrame, table: str, task: str, dataset: str, method: str, metric: str) -> pd.DataFrame:
    """One row per trial: trial, seed, phase, value (finite values only) of the selected final rows."""
    f = select_trials(df, table, task, dataset, method)
    f = f[f["metric"] == metric].sort_values(["trial", "step"], kind="stable")
    per_trial = f.drop_duplicates("trial", keep="last")[["trial", "seed", "phase", "value"]]
    return per_trial[np.isfinite(per_trial["value"].astype(float))].reset_index(drop=True)


def table_cells(df: pd.DataFrame, spec: TableSpec) -> pd.DataFrame:
    """Tidy cells of one table: row, column, dataset, metric, method, n, mean, std, paper, diff, seeds.

    mean, std, paper and diff (= mean - paper) are in the paper's units (`spec.scale` applied)."""
    out = []
    for row in spec.rows:
        for col in spec.columns:
            v = trial_values(df, spec.id, spec.task, row.dataset, col.method, row.metric)
            vals = v["value"].astype(float) * spec.scale
            n = int(len(vals))
            mean = float(vals.mean()) if n else math.nan
            std = float(vals.std(ddof=1)) if n > 1 else math.nan
            paper = spec.paper.get((row.label, col.label))
            paper_f = math.nan if paper is None else float(paper)
            out.append({"table": spec.id, "row": row.label, "column": col.label, "dataset": row.dataset,
                        "metric": row.metric, "method": col.method, "n": n, "mean": mean, "std": std,
                        "paper": paper_f, "diff": mean - paper_f,
                        "seeds": ",".join(str(s) for s in sorted(v["seed"].astype(int).unique()))})
    return pd.DataFrame(out)


def _num(x: float, d: int, sign: bool = False) -> str:
    return MISSING if not np.isfinite(x) else (f"{x:+.{d}f}" if sign else f"{x:.{d}f}")


def format_ours(mean: float, std: float, n: int, decimals: int) -> str:
    """'0.040 ± 0.002 (n=3)'; '0.040 (n=1)'; '— (n=0)'."""
    if n == 0 or not np.isfinite(mean):
        return f"{MISSING} (n=0)"
    spread = f" ± {std:.{decimals}f}" if n > 1 and np.isfinite(std) else ""
    return f"{mean:.{decimals}f}{spread} (n={n})"


def format_table(cells: pd.DataFrame, spec: TableSpec) -> pd.DataFrame:
    """Strings in the paper's layout: index = the paper's row labels, columns = (method label, ours|paper|Δ)."""
    d = spec.decimals
    cols = pd.MultiIndex.from_tuples([(col.label, s) for col in spec.columns for s in SUB])
    wide = pd.DataFrame(MISSING, index=pd.Index([r.label for r in spec.rows]), columns=cols, dtype=object)
    for c in cells.itertuples(index=False):
        wide.loc[c.row, (c.column, SUB[0])] = format_ours(c.mean, c.std, c.n, d)
        wide.loc[c.row, (c.column, SUB[1])] = PAPER_NONE if not np.isfinite(c.paper) else f"{c.paper:.{d}f}"
        wide.loc[c.row, (c.column, SUB[2])] = _num(c.diff, d, sign=True)
    return wide


def all_tables(df: pd.DataFrame) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
    """{table id: (tidy cells, formatted wide table)} for Tables 1-4."""
    df = final_rows(check_rows(df))  # the only rows a cell reads; filtering once keeps big sweeps fast
    out = {}
    for tid, spec in TABLES.items():
        cells = table_cells(df, spec)
        out[tid] = (cells, format_table(cells, spec))
    return out


TASK_METRICS = {"recon": ("rmse", "det_rate", "ap_iou50"), "classify": ("det_rate", "cls_acc", "both", "ap_iou50")}
SHORT_LABELS = {"rmse": "RMSE", "det_rate": "detection (IoU .5)", "ap_iou50": "AP@.5", "cls_acc": "classif.",
                "both": "both"}
SUMMARY_METRICS = tuple((m, SHORT_LABELS[m]) for m in ("rmse", "det_rate", "ap_iou50", "cls_acc", "both"))
# (metric, the reference method a competitor must beat in it, the note when it does not)
BARS = (("rmse", "trivial", "RMSE not below the mean image's"),
        ("det_rate", "kmeans", "detection not above the k-means floor"))


def per_trial(f: pd.DataFrame) -> pd.DataFrame:
    """Final rows -> one row per (trial, metric): the trial's last final value with its step and core_seconds."""
    return f.sort_values(["trial", "step"], kind="stable").drop_duplicates(["trial", "metric"], keep="last")


def method_stats(g: pd.DataFrame, metrics: tuple[str, ...], scale: float = 1.0) -> dict[str, float]:
    """One method's per-trial rows -> trials, steps (the most any trial ran), core_seconds (CORE_S) and,
    per metric, mean, sample std (ddof=1) and n over the trials with a finite value, times `scale`."""
    out: dict[str, float] = {"trials": g["trial"].nunique(), "steps": int(g["step"].max()) if len(g) else 0,
                             "core_seconds": core_seconds_per_trial(g)}
    for m in metrics:
        v = g.loc[g["metric"] == m, "value"].astype(float) * scale
        v = v[np.isfinite(v)]
        out[m] = float(v.mean()) if len(v) else math.nan
        out[f"{m}_std"] = float(v.std(ddof=1)) if len(v) > 1 else math.nan
        out[f"{m}_n"] = len(v)
    return out


def bar_flags(stats: dict[str, dict[str, float]], decimals: int = 3) -> dict[str, list[tuple[str, str]]]:
    """{competitor: [(metric, note)]} for every BARS metric in which its mean does not beat the reference's mean
    (methods of one task and dataset; `stats` as method_stats gives them). Reference methods are never flagged."""
    out: dict[str, list[tuple[str, str]]] = {}
    for method, st in stats.items():
        if method in REFERENCE_METHODS:
            continue
        for metric, ref, note in BARS:
            bar, v = stats.get(ref, {}).get(metric, math.nan), st.get(metric, math.nan)
            if np.isfinite(bar) and np.isfinite(v) and not (v < bar if lower_is_better(metric) else v > bar):
                out.setdefault(method, []).append((metric, f"{note} ({bar:.{decimals}f})"))
    return out


def _mean_cell(st: dict[str, float], m: str, d: int, flagged: bool) -> str:
    """'0.850 ± 0.050', '(n=k)' when fewer trials than the method's have it, FLAG when flagged; NOT_RUN if none."""
    v, s, n = st.get(m, math.nan), st.get(f"{m}_std", math.nan), st.get(f"{m}_n", 0)
    if not np.isfinite(v):
        return NOT_RUN
    text = f"{v:.{d}f}" + (f" ± {s:.{d}f}" if np.isfinite(s) else "")
    return text + (f" (n={n})" if n < st["trials"] else "") + (f" {FLAG}" if flagged else "")


@dataclass
class TableView:
    """A paper table as the report shows it: one row per (dataset, method), competitors first, then the
    reference methods that ran (`classes` marks their cells "ref", the first of a block "ref refstart", and a
    flagged cell "flag"); `not_run` the table's datasets with no result; `flags` one sentence per flag."""
    frame: pd.DataFrame
    classes: pd.DataFrame
    not_run: list[str]
    flags: list[str]


def table_view(df: pd.DataFrame, spec: TableSpec) -> TableView:
    """Every metric of the table's task per method (the paper's: ours | paper | Δ; the others: ours), steps,
    core-seconds per trial and notes; trials selected as `table_cells` selects them."""
    df = final_rows(check_rows(df))
    datasets = list(dict.fromkeys(r.dataset for r in spec.rows))
    paper_metrics = list(dict.fromkeys(r.metric for r in spec.rows))
    extras = tuple(m for m in TASK_METRICS.get(spec.task, ()) if m not in paper_metrics)
    one = len(datasets) == 1  # then the paper's row labels name the metric columns (Table 2: IoU 50%, Classif.)
    head = {r.metric: (r.label if one else SHORT_LABELS.get(r.metric, metric_label(r.metric))) for r in spec.rows}
    cols = ([] if one else [("dataset", "")]) + [("method", ""), ("trials", "")]
    cols += [(head[m], sub) for m in paper_metrics for sub in SUB] + [(SHORT_LABELS[m], SUB[0]) for m in extras]
    cols += [("steps", ""), ("core-s / trial", ""), ("note", "")]
    d = spec.decimals
    row_of = {(r.dataset, r.metric): r.label for r in spec.rows}
    rows, classes, not_run, flags = [], [], [], []
    for ds in datasets:
        paper_methods = {c.method for c in spec.columns}
        # the paper's columns, then the methods this benchmark adds (when they ran), then the reference lines
        methods = [c.method for c in spec.columns] + [m for m in (*ADDED_METHODS, *REFERENCE_METHODS)
                                                      if m not in paper_methods]
        g = {m: per_trial(select_trials(df, spec.id, spec.task, ds, m)) for m in methods}
        if all(x.empty for x in g.values()):
            not_run.append(dataset_label(ds))
            continue
        stats = {m: method_stats(x, (*paper_metrics, *extras), spec.scale) for m, x in g.items()}
        bars = bar_flags({m: st for m, st in stats.items() if not g[m].empty}, d)
        first_ref = True
        for col in [*spec.columns, *(Column(method_label(m), m) for m in methods[len(spec.columns):])]:
            st, ref = stats[col.method], col.method in REFERENCE_METHODS
            added = col.method not in paper_methods and not ref
            if (ref or added) and g[col.method].empty:
                continue
            flagged = dict(bars.get(col.method, []))
            mark = " (reference)" if ref else added_mark(col.method) if added else ""
            row = ([] if one else [dataset_label(ds)]) + [col.label + mark, str(st["trials"])]
            for m in paper_metrics:
                paper = spec.paper.get((row_of.get((ds, m)), col.label))
                diff = st[m] - paper if paper is not None else math.nan
                row += [_mean_cell(st, m, d, m in flagged), PAPER_NONE if paper is None else f"{paper:.{d}f}",
                        (NOT_RUN if not np.isfinite(st[m]) else PAPER_NONE) if not np.isfinite(diff)
                        else f"{diff:+.{d}f}"]
            row += [_mean_cell(st, m, d, m in flagged) for m in extras]
            row += [f"{st['steps']:,}" if st["trials"] else NOT_RUN,
                    format_core_seconds(st["core_seconds"]),
                    "; ".join(flagged.values())]
            rows.append(row)
            heads = [head[m] for m in paper_metrics if m in flagged] + [SHORT_LABELS[m] for m in extras if m in flagged]
            classes.append(["ref" + (" refstart" if first_ref else "") if ref else "" for _ in cols])
            for i, c in enumerate(cols):
                if c[1] == SUB[0] and c[0] in heads:
                    classes[-1][i] = "flag"
            first_ref = first_ref and not ref
            for metric, note in flagged.items():
                flags.append(f"{method_label(col.method)} on {dataset_label(ds)}: {note}.")
    index = pd.MultiIndex.from_tuples(cols)
    return TableView(pd.DataFrame(rows, columns=index, dtype=object),
                     pd.DataFrame(classes, columns=index, dtype=object), not_run, flags)


def method_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Every (task, dataset, method) of the rows: final test metrics (mean ± std over trials, seeds phase when there
    is one), steps, core-seconds per trial; competitors first, then the reference methods, marked. A competitor
    that does not beat a reference line (BARS) is flagged in `note` and its metric listed in `flagged`."""
    f = final_rows(check_rows(df))
    metrics = tuple(m for m, _ in SUMMARY_METRICS)
    rows = []
    for (task, dataset), gd in per_trial(f).groupby(["task", "dataset"], sort=True):
        stats = {m: method_stats(results_phase(g), metrics) for m, g in gd.groupby("method", sort=True)}
        bars = bar_flags(stats)
        for method, st in stats.items():
            ref = method in REFERENCE_METHODS
            flagged = bars.get(method, [])
            rows.append({"task": task, "dataset": dataset, "method": method, "reference": ref,
                         "added": method in ADDED_METHODS, **st,
                         "flagged": ",".join(m for m, _ in flagged),
                         "note": "reference, not a competitor" if ref else "; ".join(n for _, n in flagged)})
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    order = {m: i for i, m in enumerate(METHOD_LABELS)}
    return out.sort_values(["task", "dataset", "reference", "method"], ignore_index=True,
                           key=lambda c: c.map(order).fillna(len(order)) if c.name == "method" else c)


def format_summary(summary: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(readable summary, its cells' CSS classes as in TableView): 'mean ± std' strings with FLAG where flagged,
    labels; the metric columns no row has are left out."""
    metrics = [(m, label) for m, label in SUMMARY_METRICS if summary[m].notna().any()]
    rows, classes = [], []
    for i, r in enumerate(summary.itertuples(index=False)):
        st, flagged = r._asdict(), set(filter(None, str(r.flagged).split(",")))
        mark = " (reference)" if r.reference else added_mark(r.method) if r.added else ""
        rows.append({"task": r.task, "dataset": dataset_label(r.dataset), "method": method_label(r.method) + mark,
                     "trials": r.trials, "steps": f"{r.steps:,}",
                     "core-s / trial": format_core_seconds(r.core_seconds),
                     **{label: _mean_cell(st, m, 3, m in flagged) for m, label in metrics}, "note": r.note})
        start = r.reference and (i == 0 or not summary["reference"].iloc[i - 1]
                                 or summary["dataset"].iloc[i - 1] != r.dataset)
        cls = "ref refstart" if start else "ref" if r.reference else ""
        classes.append({k: ("flag" if any(k == lab and m in flagged for m, lab in metrics) else cls)
                        for k in rows[-1]})
    return pd.DataFrame(rows), pd.DataFrame(classes)


def trial_summary(df: pd.DataFrame) -> pd.DataFrame:
    """One row per trial: identity, final cumulative core_seconds / wall_seconds, last step, has a final row."""
    keys = ["sweep", "trial", "phase", "table", "task", "dataset", "method", "scale"]
    return (df.groupby(keys, sort=True, dropna=False)
              .agg(seed=("seed", "max"), core_seconds=("core_seconds", "max"), wall_seconds=("wall_seconds", "max"),
                   steps=("step", "max"), finished=("final", "any"))
              .reset_index())


def cost_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per (table, task, dataset, method): trials in search / seeds / total, core-seconds total over all of them
    (CORE_S_TOTAL) and per trial (CORE_S: the trials the results come from, as in every other table)."""
    rows = check_rows(df)
    rows = rows.assign(table=rows["table"].fillna("-"))  # a sweep that is no paper table (smoke, quick): still costed
    keys = ["table", "task", "dataset", "method"]
    t = trial_summary(rows)
    t = t.assign(search=(t["phase"] == "search").astype(int), seeds=(t["phase"] == "seeds").astype(int))
    out = t.groupby(keys, sort=True, dropna=False).agg(
        trials_search=("search", "sum"), trials_seeds=("seeds", "sum"), trials=("trial", "nunique"),
        core_seconds_total=("core_seconds", "sum")).reset_index()
    per_trial_cost = {k: core_seconds_per_trial(results_phase(g))
                      for k, g in final_rows(rows).groupby(keys, sort=True, dropna=False)}
    out["core_seconds_mean"] = [per_trial_cost.get(k, math.nan) for k in out[keys].itertuples(index=False, name=None)]
    order = {m: i for i, m in enumerate(METHOD_LABELS)}  # the paper's column order, unknown methods last
    return out.sort_values(["table", "task", "dataset", "method"], key=lambda c: c.map(order).fillna(len(order))
                           if c.name == "method" else c, ignore_index=True)


def format_cost(cost: pd.DataFrame) -> pd.DataFrame:
    """Readable cost table (labels; seconds as format_core_seconds writes them)."""
    return pd.DataFrame({
        "table": cost["table"], "task": cost["task"], "dataset": cost["dataset"].map(dataset_label),
        "method": cost["method"].map(method_label), "trials (search)": cost["trials_search"],
        "trials (seeds)": cost["trials_seeds"], "trials": cost["trials"],
        "core-s total": cost["core_seconds_total"].map(format_core_seconds),
        "core-s / trial": cost["core_seconds_mean"].map(format_core_seconds)})


def _flat(wide: pd.DataFrame) -> pd.DataFrame:
    if isinstance(wide.columns, pd.MultiIndex):
        wide = wide.set_axis([" ".join(str(p) for p in c if p) for c in wide.columns], axis=1)
    return wide


def to_markdown(wide: pd.DataFrame, index: bool = True) -> str:
    """GitHub Markdown. Uses DataFrame.to_markdown (needs `tabulate`); without it, a minimal pipe table."""
    flat = _flat(wide).fillna(MISSING).astype(str)
    try:
        return flat.to_markdown(index=index, disable_numparse=True)  # keeps '+0.8' and '1,000' as formatted
    except ImportError:  # tabulate is not installed: same content, no column alignment
        cols = ([""] if index else []) + list(flat.columns)
        rows = [([str(i)] if index else []) + list(r) for i, r in zip(flat.index, flat.itertuples(index=False))]
        esc = [[x.replace("|", "\\|") for x in r] for r in [cols, *rows]]
        return "\n".join(["| " + " | ".join(esc[0]) + " |", "|" + "---|" * len(cols)]
                         + ["| " + " | ".join(r) + " |" for r in esc[1:]])


def to_html(wide: pd.DataFrame, index: bool = True, classes: pd.DataFrame | None = None) -> str:
    """HTML via DataFrame.to_html, or pandas' Styler when `classes` (CSS classes per cell, as TableView.classes)
    are given; 'mean ± std' is kept on one line, so a narrow page wraps only before '(n='."""
    if classes is None:
        out = wide.to_html(index=index, na_rep=MISSING, border=0, classes="result", escape=True)
    else:
        sty = wide.style.set_td_classes(classes).format(escape="html", na_rep=MISSING)
        sty = sty.format_index(escape="html", axis=1)
        out = (sty if index else sty.hide(axis="index")).to_html(table_attributes='class="result"')
    return out.replace(" ± ", "&nbsp;±&nbsp;")


def to_latex(wide: pd.DataFrame, caption: str | None = None, label: str | None = None, index: bool = True) -> str:
    """LaTeX via DataFrame.to_latex (booktabs rules; needs jinja2), with ±, Δ, — as math/ASCII."""
    esc = {"%": r"\%", "&": r"\&", "#": r"\#", "_": r"\_"}
    cap = None if caption is None else "".join(esc.get(ch, ch) for ch in caption)  # to_latex leaves it raw
    tex = wide.fillna(MISSING).to_latex(index=index, caption=cap, label=label, escape=True, multicolumn=True,
                                        multicolumn_format="c", column_format="l" * index + "r" * wide.shape[1])
    return (tex.replace("±", r"$\pm$").replace("Δ", r"$\Delta$").replace(NOT_RUN, "--")
            .replace(PAPER_NONE, r"$\emptyset$").replace(FLAG, r"$\dagger$"))
