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

import numpy as np
import pandas as pd

from analysis.paper import METHOD_LABELS, REFERENCE_METHODS, TABLES, TableSpec, dataset_label, method_label

__all__ = ["REQUIRED_COLUMNS", "MISSING", "check_rows", "final_rows", "select_trials", "trial_values",
           "table_cells", "format_ours", "format_table", "all_tables", "trial_summary", "cost_table", "format_cost",
           "method_summary", "format_summary", "to_markdown", "to_html", "to_latex"]

REQUIRED_COLUMNS = ("sweep", "trial", "phase", "method", "dataset", "table", "task", "scale", "seed", "step",
                    "final", "metric", "value", "core_seconds", "wall_seconds")
MISSING = "—"
SUB = ("ours", "paper", "Δ")


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
    if (f["phase"] == "seeds").any():
        f = f[f["phase"] == "seeds"]
    return f


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
        wide.loc[c.row, (c.column, SUB[1])] = "-" if not np.isfinite(c.paper) else f"{c.paper:.{d}f}"
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


SUMMARY_METRICS = (("rmse", "RMSE"), ("det_rate", "detection (IoU .5)"), ("cls_acc", "classif."), ("both", "Both"))


def method_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Every (task, dataset, method) of the rows: final test metrics (mean ± std over trials, seeds phase when there
    is one), steps; competitors first, then the reference methods, marked. A competitor whose RMSE is not below the
    mean image's, or whose detection is not above the non-learned floor's, is flagged in `note`."""
    f = final_rows(check_rows(df))
    if (f["phase"] == "seeds").any():
        f = f[f["phase"] == "seeds"]
    per_trial = (f.sort_values(["trial", "step"], kind="stable")
                  .drop_duplicates(["trial", "metric"], keep="last"))
    rows = []
    for (task, dataset, method), g in per_trial.groupby(["task", "dataset", "method"], sort=True):
        vals = {m: g.loc[g["metric"] == m, "value"].astype(float) for m, _ in SUMMARY_METRICS}
        vals = {m: v[np.isfinite(v)] for m, v in vals.items()}
        rows.append({"task": task, "dataset": dataset, "method": method,
                     "reference": method in REFERENCE_METHODS, "trials": g["trial"].nunique(),
                     "steps": int(g["step"].max()),
                     **{m: (float(v.mean()) if len(v) else math.nan) for m, v in vals.items()},
                     **{f"{m}_std": (float(v.std(ddof=1)) if len(v) > 1 else math.nan) for m, v in vals.items()}})
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    notes = []
    for r in out.itertuples(index=False):
        ref = out[(out["task"] == r.task) & (out["dataset"] == r.dataset)]
        flags = []
        if not r.reference:
            triv = ref.loc[ref["method"] == "trivial", "rmse"]
            floor = ref.loc[ref["method"] == "kmeans", "det_rate"]
            if len(triv) and np.isfinite(r.rmse) and not r.rmse < float(triv.iloc[0]):
                flags.append("RMSE not below the mean image's")
            if len(floor) and np.isfinite(r.det_rate) and not r.det_rate > float(floor.iloc[0]):
                flags.append("detection not above the k-means floor")
        notes.append("reference, not a competitor" if r.reference else "; ".join(flags))
    out["note"] = notes
    order = {m: i for i, m in enumerate(METHOD_LABELS)}
    return out.sort_values(["task", "dataset", "reference", "method"], ignore_index=True,
                           key=lambda c: c.map(order).fillna(len(order)) if c.name == "method" else c)


def format_summary(summary: pd.DataFrame) -> pd.DataFrame:
    """Readable method summary: 'mean ± std' strings, labels; — where a method has no such metric."""
    def cell(r, m):
        v, s = getattr(r, m), getattr(r, f"{m}_std")
        return MISSING if not np.isfinite(v) else f"{v:.3f}" + (f" ± {s:.3f}" if np.isfinite(s) else "")
    return pd.DataFrame([{"task": r.task, "dataset": dataset_label(r.dataset),
                          "method": method_label(r.method) + (" (reference)" if r.reference else ""),
                          "trials": r.trials, "steps": f"{r.steps:,}",
                          **{label: cell(r, m) for m, label in SUMMARY_METRICS}, "note": r.note}
                         for r in summary.itertuples(index=False)])


def trial_summary(df: pd.DataFrame) -> pd.DataFrame:
    """One row per trial: identity, final cumulative core_seconds / wall_seconds, last step, has a final row."""
    keys = ["sweep", "trial", "phase", "table", "task", "dataset", "method", "scale"]
    return (df.groupby(keys, sort=True, dropna=False)
              .agg(seed=("seed", "max"), core_seconds=("core_seconds", "max"), wall_seconds=("wall_seconds", "max"),
                   steps=("step", "max"), finished=("final", "any"))
              .reset_index())


def cost_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per (table, task, dataset, method): trials in search / seeds / total, core-seconds total and mean per trial."""
    t = trial_summary(check_rows(df))
    t = t.assign(search=(t["phase"] == "search").astype(int), seeds=(t["phase"] == "seeds").astype(int))
    # dropna=False: a sweep that is no paper table (smoke, quick) has table None and must still be costed
    g = t.assign(table=t["table"].fillna("-")).groupby(["table", "task", "dataset", "method"], sort=True, dropna=False)
    out = g.agg(trials_search=("search", "sum"), trials_seeds=("seeds", "sum"), trials=("trial", "nunique"),
                 core_seconds_total=("core_seconds", "sum"),
                 core_seconds_mean=("core_seconds", "mean")).reset_index()
    order = {m: i for i, m in enumerate(METHOD_LABELS)}  # the paper's column order, unknown methods last
    return out.sort_values(["table", "task", "dataset", "method"], key=lambda c: c.map(order).fillna(len(order))
                           if c.name == "method" else c, ignore_index=True)


def format_cost(cost: pd.DataFrame) -> pd.DataFrame:
    """Readable cost table (labels, rounded seconds)."""
    return pd.DataFrame({
        "table": cost["table"], "task": cost["task"], "dataset": cost["dataset"].map(dataset_label),
        "method": cost["method"].map(method_label), "trials (search)": cost["trials_search"],
        "trials (seeds)": cost["trials_seeds"], "trials": cost["trials"],
        "core-s total": cost["core_seconds_total"].map(lambda x: f"{x:,.0f}"),
        "core-s / trial": cost["core_seconds_mean"].map(lambda x: f"{x:,.1f}")})


def _flat(wide: pd.DataFrame) -> pd.DataFrame:
    if isinstance(wide.columns, pd.MultiIndex):
        wide = wide.set_axis([" ".join(str(p) for p in c if p) for c in wide.columns], axis=1)
    return wide


def to_markdown(wide: pd.DataFrame, index: bool = True) -> str:
    """GitHub Markdown. Uses DataFrame.to_markdown (needs `tabulate`); without it, a minimal pipe table."""
    flat = _flat(wide).fillna(MISSING).astype(str)
    try:
        return flat.to_markdown(index=index)
    except ImportError:  # tabulate is not installed: same content, no column alignment
        cols = ([""] if index else []) + list(flat.columns)
        rows = [([str(i)] if index else []) + list(r) for i, r in zip(flat.index, flat.itertuples(index=False))]
        esc = [[x.replace("|", "\\|") for x in r] for r in [cols, *rows]]
        return "\n".join(["| " + " | ".join(esc[0]) + " |", "|" + "---|" * len(cols)]
                         + ["| " + " | ".join(r) + " |" for r in esc[1:]])


def to_html(wide: pd.DataFrame, index: bool = True) -> str:
    """HTML via DataFrame.to_html; 'mean ± std' is kept on one line, so a narrow page wraps only before '(n='."""
    return (wide.to_html(index=index, na_rep=MISSING, border=0, classes="result", escape=True)
            .replace(" ± ", "&nbsp;±&nbsp;"))


def to_latex(wide: pd.DataFrame, caption: str | None = None, label: str | None = None, index: bool = True) -> str:
    """LaTeX via DataFrame.to_latex (booktabs rules; needs jinja2), with ±, Δ, — as math/ASCII."""
    esc = {"%": r"\%", "&": r"\&", "#": r"\#", "_": r"\_"}
    cap = None if caption is None else "".join(esc.get(ch, ch) for ch in caption)  # to_latex leaves it raw
    tex = wide.fillna(MISSING).to_latex(index=index, caption=cap, label=label, escape=True, multicolumn=True,
                                        multicolumn_format="c", column_format="l" * index + "r" * wide.shape[1])
    return tex.replace("±", r"$\pm$").replace("Δ", r"$\Delta$").replace("—", "--")
