"""Paired comparisons of MIST against each baseline of a table, across seeds, stated in words.

For every table row (task, dataset, metric) and every other method of that table, the per-seed values of MIST
and the baseline (same selection as the tables: final rows, seeds phase when present; trials of one seed are
averaged) are paired by seed; the difference is MIST - baseline, in the table's units (percentage points for
Tables 2-4). Its 95% CI is
  n >= 3: scipy.stats.bootstrap of the mean difference (percentile method, 9,999 resamples, fixed rng: with
          a few seeds BCa is unstable, and the percentile interval is easy to state);
  n == 2: the paired t interval (scipy.stats.ttest_1samp(...).confidence_interval);
  n < 2:  none ("n too small").
A CI that contains 0 is reported as "no significant difference", never as a win.

    comparisons(df)  # DataFrame: table, row, dataset, metric, baseline, n, mean_diff, ci_low, ci_high, ci, sentence
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

from analysis.paper import TABLES, TableSpec, dataset_label, lower_is_better, method_label, metric_label
from analysis.tables import check_rows, final_rows, trial_values

__all__ = ["paired_seeds", "paired_ci", "describe", "comparisons", "N_RESAMPLES", "CONFIDENCE"]

N_RESAMPLES = 9_999
CONFIDENCE = 0.95


def paired_seeds(df: pd.DataFrame, spec: TableSpec, dataset: str, metric: str, method: str,
                 reference: str = "mist") -> pd.DataFrame:
    """Per shared seed: `reference`'s value, `method`'s value, diff = reference - method (the table's units)."""
    per_seed = {}
    for m in (reference, method):
        v = trial_values(df, spec.id, spec.task, dataset, m, metric)
        per_seed[m] = v.groupby("seed")["value"].mean().astype(float) * spec.scale
    both = pd.concat({"reference": per_seed[reference], "other": per_seed[method]}, axis=1, join="inner")
    return both.assign(diff=both["reference"] - both["other"]).sort_index()


def paired_ci(diffs: np.ndarray, confidence: float = CONFIDENCE, seed: int = 0) -> tuple[float, float, str]:
    """(low, high, how) of the mean of paired differences; NaNs and how='n too small' when n < 2."""
    d = np.asarray(diffs, dtype=float)
    n = d.size
    if n < 2:
        return math.nan, math.nan, "n too small"
    if np.ptp(d) == 0:  # every resample has the same mean; t has zero spread
        return float(d[0]), float(d[0]), "all differences equal"
    if n == 2:
        ci = stats.ttest_1samp(d, 0.0).confidence_interval(confidence_level=confidence)
        return float(ci.low), float(ci.high), "paired t"
    res = stats.bootstrap((d,), np.mean, confidence_level=confidence, n_resamples=N_RESAMPLES,
                          method="percentile", rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high), "bootstrap"


def describe(metric: str, dataset: str, baseline: str, n: int, mean_diff: float, low: float, high: float,
             how: str, decimals: int = 3, unit: str = "", reference: str = "mist") -> str:
    """One sentence, e.g. 'MIST has lower RMSE than Grid on MNIST hard (better): mean difference -0.0090,
    95% CI [-0.0120, -0.0060], 5 seeds (bootstrap).' Differences get one digit more than the table."""
    ref, base, met, ds = method_label(reference), method_label(baseline), metric_label(metric), dataset_label(dataset)
    u = " pp" if unit == "%" else ""
    seeds = f"{n} seed{'s' if n != 1 else ''}"
    if n == 0:
        return f"{ref} vs {base}, {met} on {ds}: no seed has results for both (n=0), no comparison."
    if how == "n too small":
        return f"{ref} vs {base}, {met} on {ds}: n too small ({seeds} paired), no interval."
    d = decimals + 1  # one more digit than the table, so a CI bound near 0 does not print as -0.000
    num = f"mean difference {mean_diff:.{d}f}{u}, 95% CI [{low:.{d}f}, {high:.{d}f}]{u}"
    if low <= 0.0 <= high:
        return f"No significant difference between {ref} and {base} in {met} on {ds}: {num} includes 0, {seeds} ({how})."
    lower = high < 0.0
    better = lower == lower_is_better(metric)
    return (f"{ref} has {'lower' if lower else 'higher'} {met} than {base} on {ds} ({'better' if better else 'worse'}): "
            f"{num}, {seeds} ({how}).")


def comparisons(df: pd.DataFrame, reference: str = "mist", specs: dict[str, TableSpec] | None = None) -> pd.DataFrame:
    """Every (table row, baseline) pairing of `reference` with the other methods of the table that have data."""
    df = final_rows(check_rows(df))
    out = []
    for spec in (specs or TABLES).values():
        if reference not in [c.method for c in spec.columns]:
            continue
        for row in spec.rows:
            for col in spec.columns:
                if col.method == reference:
                    continue
                p = paired_seeds(df, spec, row.dataset, row.metric, col.method, reference)
                if p.empty and trial_values(df, spec.id, spec.task, row.dataset, reference, row.metric).empty:
                    continue  # neither side ran: nothing to say
                d = p["diff"].to_numpy()
                low, high, how = paired_ci(d)
                mean = float(d.mean()) if d.size else math.nan
                out.append({"table": spec.id, "row": row.label, "dataset": row.dataset, "metric": row.metric,
                            "baseline": col.method, "n": int(d.size), "mean_diff": mean, "ci_low": low,
                            "ci_high": high, "ci": how, "seeds": ",".join(str(int(s)) for s in p.index),
                            "sentence": describe(row.metric, row.dataset, col.method, int(d.size), mean, low, high,
                                                 how, spec.decimals, spec.unit, reference)})
    cols = ["table", "row", "dataset", "metric", "baseline", "n", "mean_diff", "ci_low", "ci_high", "ci", "seeds",
            "sentence"]
    return pd.DataFrame(out, columns=cols)
