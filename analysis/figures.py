"""Report figures from plain numpy arrays and tidy rows. Every function returns a matplotlib Figure (or None
when it has nothing to draw); `to_data_uri` turns one into an inline PNG. Figures are built with the
object-oriented API (matplotlib.figure.Figure, rendered by Agg) so importing this never changes pyplot's backend.

Arrays follow mist_core.types: images (N,C,H,W) in [0,1] (uint8 is divided by 255), boxes (N,K,4) pixels
(x0,y0,x1,y1), scores (N,K), recon (N,C,H,W), class_probs (N,K,10), heatmap (N,H,W), patches (N,K,C,p,p),
gt_counts (N,), gt_boxes (N,G,4) (an image's first gt_count rows are its instances). Detections shown per image =
the top gt_count by score (all K without gt_counts), as det_rate.

    example_figure(**np.load("predictions.npz"))                     # paper Figures 3 and 5 (a trial's npz)
    methods_figure({"mist": npz_a, "grid": npz_b})                    # paper Figure 2
    heatmap_figure(**np.load("heatmaps_over_time.npz"))               # paper Figure 7 (c)
    learning_curve_figure(rows, "recon", x="core_seconds")           # test metrics over training
    loss_figure(rows); quality_cost_figure(rows)                      # Figure 7 (a, b); quality vs cost
"""
from __future__ import annotations

import base64
import io
import zlib
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import Formatter, Locator, MaxNLocator, NullFormatter

from analysis.paper import (METHOD_LABELS, REFERENCE_METHODS, dataset_label, headline_metric, lower_is_better,
                            method_label, metric_label)

__all__ = ["to_data_uri", "evenly_spaced", "example_figure", "methods_figure", "heatmap_figure",
           "learning_curve_figure", "loss_figure", "quality_cost_figure", "method_color", "LogTicks", "PlainNumbers"]

_ORDER = list(METHOD_LABELS)
HEAT_CMAP = "magma"  # perceptually uniform, readable in grey print


def method_color(method: str) -> str:
    """The same colour for a method in every figure and every run: matplotlib's tab10 cycle in METHOD_LABELS
    order; any other name one of tab20's ten light shades, picked by a stable hash of the name (crc32), so a
    method of the user's never takes a named method's colour."""
    if method in _ORDER:
        return f"C{_ORDER.index(method) % 10}"
    return to_hex(colormaps["tab20"](2 * (zlib.crc32(method.encode()) % 10) + 1))


class LogTicks(Locator):
    """Major ticks of a log axis, 2 to `most` of them in view: the densest of 1..9 x 10^k, 1-2-5 x 10^k and 10^k
    (every n-th power of ten over many decades) that fits; a span too short for two of those (under a factor of
    about 1.3) gets evenly spaced plain ticks instead."""

    SUBS = ((1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0), (1.0, 2.0, 5.0), (1.0,))

    def __init__(self, most: int = 6) -> None:
        self.most = most

    def __call__(self) -> np.ndarray:
        return self.tick_values(*self.axis.get_view_interval())

    def tick_values(self, vmin: float, vmax: float) -> np.ndarray:
        vmin, vmax = sorted((float(vmin), float(vmax)))
        if not (vmin > 0 and np.isfinite(vmax)):
            return np.array([])
        decades = 10.0 ** np.arange(np.floor(np.log10(vmin)), np.ceil(np.log10(vmax)) + 1)
        for subs in self.SUBS:
            t = (decades[:, None] * np.asarray(subs)).ravel()
            t = t[(t >= vmin * (1 - 1e-9)) & (t <= vmax * (1 + 1e-9))]
            if 2 <= len(t) <= self.most:
                return t
        if len(t) > self.most:  # powers of ten over more decades than `most`: every stride-th one
            return t[:: -(-len(t) // self.most)]
        t = MaxNLocator(nbins=max(self.most - 2, 2), steps=[1, 2, 2.5, 5, 10]).tick_values(vmin, vmax)
        return t[(t >= vmin) & (t <= vmax)]


class PlainNumbers(Formatter):
    """Tick labels as plain numbers, thousands separated, with the fewest decimals (up to 8) that write every tick
    in view exactly, so no two ticks read alike ('3 4 4 5' from 3, 3.5, 4, 4.5 is what this avoids)."""

    @staticmethod
    def _text(v: float, d: int) -> str:
        text = f"{v:,.{d}f}"
        return text.rstrip("0").rstrip(".") if "." in text else text

    def format_ticks(self, values: Sequence[float]) -> list[str]:
        v = np.asarray(values, dtype=np.float64)
        for d in range(9):
            if np.allclose(np.round(v, d), v, rtol=1e-6, atol=0.0):
                return [self._text(x, d) for x in v]
        return [f"{x:.3g}" for x in v]

    def __call__(self, x: float, pos: int | None = None) -> str:
        return self.format_ticks([x])[0]


def to_data_uri(fig: Figure, dpi: int = 80) -> str:
    """'data:image/png;base64,...' of a figure."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def evenly_spaced(n: int, cap: int) -> np.ndarray:
    """Indices of at most `cap` of n items evenly spaced over them, the first and the last included (none if n = 0)."""
    return np.unique(np.linspace(0, n - 1, min(cap, n)).round().astype(int))


def _img(x: np.ndarray) -> np.ndarray:
    """(C,H,W) or (H,W) -> (H,W) or (H,W,3) float in [0,1]."""
    a = np.asarray(x)
    a = a / 255.0 if a.dtype == np.uint8 else a.astype(np.float64)
    if a.ndim == 3:
        a = a[0] if a.shape[0] == 1 else np.moveaxis(a[:3], 0, -1)
    return np.clip(a, 0.0, 1.0)


def _show(ax: Axes, img: np.ndarray, title: str | None = None, cmap: str = "gray", norm: bool = False) -> None:
    a = _img(img) if not norm else np.asarray(img, dtype=np.float64)
    ax.imshow(a, cmap=cmap, interpolation="nearest", **({} if norm else {"vmin": 0.0, "vmax": 1.0}))
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)


def _top(scores: np.ndarray, count: int | None) -> np.ndarray:
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    return order if count is None else order[: max(int(count), 0)]


def _boxes(ax: Axes, boxes: np.ndarray, color: str | Sequence[str] = "lime") -> None:
    """Outline each (x0,y0,x1,y1) box; `color` one for all or one per box."""
    colors = [color] * len(boxes) if isinstance(color, str) else list(color)
    for (x0, y0, x1, y1), c in zip(np.asarray(boxes, dtype=np.float64), colors):
        ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor=c, linewidth=1.2))


MAX_NAMED = 10  # detections told apart by colour (tab10) and named in the legend; any more are drawn grey


def _detection_colors(n: int) -> list[str]:
    return [f"C{j}" if j < MAX_NAMED else "0.6" for j in range(n)]


def _score_legend(ax: Axes, labels: list[str], colors: list[str]) -> None:
    """The detections' labels beside the panel, one row per box in its colour: labels drawn on the image pile up
    where boxes overlap, as an untrained method's do."""
    h = [Patch(facecolor="none", edgecolor=c, lw=1.2, label=t) for t, c in zip(labels[:MAX_NAMED], colors)]
    if len(labels) > MAX_NAMED:
        h.append(Patch(facecolor="none", edgecolor="0.6", lw=1.2, label=f"{len(labels) - MAX_NAMED} more"))
    ax.legend(handles=h, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=6, frameon=False,
              handlelength=1.0, borderaxespad=0.0, title="score", title_fontsize=6)


def _crop(img: np.ndarray, box: np.ndarray) -> np.ndarray:
    """The (C,h,w) pixels of img (C,H,W) under box, clipped to the image (1x1 zeros when empty)."""
    _, h, w = img.shape
    x0, y0, x1, y1 = np.round(np.asarray(box, dtype=np.float64)).astype(int)
    (x0, x1), (y0, y1) = np.clip([x0, x1], 0, w), np.clip([y0, y1], 0, h)
    return img[:, y0:y1, x0:x1] if x1 > x0 and y1 > y0 else np.zeros_like(img[:, :1, :1])


def example_figure(images: np.ndarray, boxes: np.ndarray, scores: np.ndarray, recon: np.ndarray | None = None,
                   class_probs: np.ndarray | None = None, patches: np.ndarray | None = None,
                   heatmap: np.ndarray | None = None, gt_counts: np.ndarray | None = None,
                   gt_boxes: np.ndarray | None = None, n_examples: int = 2, max_patches: int = 9, title: str = "",
                   **_: Any) -> Figure:
    """Paper Figures 3 / 5: per example, input (with its first gt_count ground-truth boxes when given) | detections
    (a colour per box, its score, and predicted class when classifying, in a legend beside the panel) |
    reconstruction | heatmap on top, and below one column per shown detection in its box's colour: the input crop
    under its box, and the task network's per-patch output."""
    n = min(n_examples, len(images))
    fig = Figure(figsize=(9, 3.6 * n), layout="constrained")
    if title:
        fig.suptitle(title, fontsize=10)
    for i, sub in enumerate(np.atleast_1d(fig.subfigures(n, 1))):
        count = None if gt_counts is None else int(gt_counts[i])
        shown = _top(scores[i], count)  # every detection counted (drawn), the first max_patches as patches
        idx = shown[:max_patches]
        # each detection labelled with its score (and its predicted class when classifying)
        labels = [(f"{int(np.argmax(class_probs[i, k]))}: " if class_probs is not None else "")
                  + f"{float(scores[i][k]):.2f}" for k in shown]
        colors = _detection_colors(len(shown))
        panels = [("input", images[i], False), ("detections", images[i], True)]
        if recon is not None:
            panels.append(("reconstruction", recon[i], patches is None))
        if heatmap is not None:
            panels.append(("heatmap", heatmap[i], False))
        strips = 1 + (patches is not None)
        top, bottom = sub.subfigures(2, 1, height_ratios=[3, strips])
        for ax, (name, img, with_boxes) in zip(np.atleast_1d(top.subplots(1, len(panels))), panels):
            _show(ax, img, name, cmap=HEAT_CMAP if name == "heatmap" else "gray", norm=name == "heatmap")
            if name == "heatmap":
                top.colorbar(ax.images[0], ax=ax, shrink=0.8).ax.tick_params(labelsize=6)
            if with_boxes:
                _boxes(ax, boxes[i][shown], colors)
                if name == "detections" and len(shown):
                    _score_legend(ax, labels, colors)
            elif name == "input" and gt_boxes is not None:
                _boxes(ax, gt_boxes[i][:count], color="deepskyblue")
        if len(idx) == 0:
            continue
        axs = np.asarray(bottom.subplots(strips, len(idx), squeeze=False))
        for c, k in enumerate(idx):
            _show(axs[0, c], _crop(np.asarray(images[i]), boxes[i, k]), labels[c])
            axs[0, c].title.set_color(colors[c])
            for spine in axs[0, c].spines.values():
                spine.set_edgecolor(colors[c])
            if patches is not None:
                _show(axs[1, c], patches[i, k])
        axs[0, 0].set_ylabel("patch", fontsize=7)
        if patches is not None:
            axs[1, 0].set_ylabel("decoded", fontsize=7)
    return fig


def methods_figure(outputs: Mapping[str, Mapping[str, np.ndarray]], n_examples: int = 3, title: str = ""
                   ) -> Figure | None:
    """Paper Figure 2: rows = test images, columns = the input then each method's reconstruction (its input
    when it has none) with its detections. Assumes every method saw the same test images (the first is shown)."""
    outputs = {m: o for m, o in outputs.items() if "images" in o}
    if not outputs:
        return None
    first = next(iter(outputs.values()))
    n = min(n_examples, *(len(o["images"]) for o in outputs.values()))
    fig = Figure(figsize=(1.6 * (len(outputs) + 1), 1.7 * n), layout="constrained")
    if title:
        fig.suptitle(title, fontsize=10)
    axs = np.asarray(fig.subplots(n, len(outputs) + 1, squeeze=False))
    for i in range(n):
        _show(axs[i, 0], first["images"][i], "input" if i == 0 else None)
        for c, (m, o) in enumerate(outputs.items(), start=1):
            img = o.get("recon") if o.get("recon") is not None else o["images"]
            _show(axs[i, c], img[i], method_label(m) if i == 0 else None)
            if "boxes" in o and "scores" in o:
                count = int(o["gt_counts"][i]) if "gt_counts" in o else None
                _boxes(axs[i, c], o["boxes"][i][_top(o["scores"][i], count)], color=method_color(m))
    return fig


def heatmap_figure(steps: np.ndarray, heatmaps: np.ndarray, image: np.ndarray | None = None,
                   max_snapshots: int = 10, title: str = "", **_: Any) -> Figure:
    """Paper Figure 7 (c): the heatmap of one image over training, up to `max_snapshots` evenly spaced, each
    min-max normalised alone (its shape is what changes; its scale is the method's), one shared colour bar."""
    t = evenly_spaced(len(steps), max_snapshots)
    h = np.asarray(heatmaps, dtype=np.float64)[t]                               # (T, H, W)
    lo, hi = h.min(axis=(1, 2), keepdims=True), h.max(axis=(1, 2), keepdims=True)
    h = (h - lo) / np.where(hi > lo, hi - lo, 1.0)
    ncol = len(t) + (image is not None)
    fig = Figure(figsize=(1.5 * ncol + 0.6, 1.9), layout="constrained")
    if title:
        fig.suptitle(title, fontsize=10)
    axs = np.atleast_1d(fig.subplots(1, ncol))
    if image is not None:
        _show(axs[0], image, "image")
    for ax, j, hj in zip(axs[ncol - len(t):], t, h):
        ax.imshow(hj, cmap=HEAT_CMAP, vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"step {int(steps[j])}", fontsize=8)
    bar = fig.colorbar(axs[-1].images[0], ax=list(axs[ncol - len(t):]), shrink=0.85, pad=0.01)
    bar.set_label("heatmap, min-max\nper snapshot", fontsize=7)
    bar.ax.tick_params(labelsize=6)
    return fig


_MARK = {"search": "o", "seeds": "^"}


def _key(method: str) -> tuple[int, str]:
    return (_ORDER.index(method) if method in _ORDER else len(_ORDER), method)


def _line_label(method: str) -> str:
    """A method's name in legends; a reference method's marked as such (its lines are dashed)."""
    return method_label(method) + (" (reference)" if method in REFERENCE_METHODS else "")


def _trials(n: int) -> str:
    return f"{n} trial" + ("" if n == 1 else "s")


def _legend(fig: Figure, methods: Sequence[str], phases: Sequence[str] = (), extra: Sequence[Any] = ()) -> None:
    """One legend for the whole figure, below it: a colour per method (dashed: a reference method), a marker per
    phase, and any `extra` handles."""
    h = [Line2D([], [], color=method_color(m), lw=2, ls="--" if m in REFERENCE_METHODS else "-",
                label=_line_label(m)) for m in methods]
    h += [Line2D([], [], color="0.4", marker=_MARK.get(p, "s"), ls="", label=f"{p} trial") for p in phases]
    h += list(extra)
    fig.legend(handles=h, loc="outside lower center", ncols=min(len(h), 8), fontsize=7, frameon=False)


def _groups(df: pd.DataFrame) -> list[tuple[tuple[str, str], pd.DataFrame]]:
    return [(k, g) for k, g in df.groupby(["dataset", "task"], sort=True)]


CURVE_METRICS = {"recon": ("rmse", "det_rate"), "classify": ("cls_acc", "det_rate")}
CURVE_X = {"step": "training steps", "core_seconds": "training core-seconds"}


def learning_curve_figure(df: pd.DataFrame, task: str, x: str = "step",
                          metrics: Sequence[str] | None = None) -> Figure | None:
    """Test metrics over training for every method of `task`: one panel per (dataset, metric) against `x` ("step"
    or "core_seconds", log axis so that cheap and costly methods both show), at each evaluation the mean over trials
    (the seeds phase where a (dataset, method) has one) as a line and their min-max as a band. Reference methods
    are dashed lines at their final mean: a learned method is read against them, and their cost is ~0."""
    metrics = tuple(metrics or CURVE_METRICS.get(task, ("rmse", "det_rate")))
    d = df[(df["task"] == task) & df["metric"].isin(metrics)]
    if d.empty:
        return None
    seeds = d.groupby(["dataset", "method"])["phase"].transform(lambda p: (p == "seeds").any())
    d = d[~seeds | (d["phase"] == "seeds")].assign(final=lambda t: t["final"].astype(bool))
    # the final evaluation (all test images) replaces an interim one (a subset) at the same step
    d = d.sort_values("final", kind="stable").drop_duplicates(["trial", "step", "metric"], keep="last")
    datasets = sorted(d["dataset"].unique())
    fig = Figure(figsize=(3.6 * len(metrics), 2.8 * len(datasets) + 0.6), layout="constrained")
    fig.suptitle(f"{task}: test metrics against {CURVE_X.get(x, x)}", fontsize=10)
    axs = np.asarray(fig.subplots(len(datasets), len(metrics), squeeze=False))
    for (ds, metric), ax in zip([(a, b) for a in datasets for b in metrics], axs.flat):
        p = d[(d["dataset"] == ds) & (d["metric"] == metric)]
        if p.empty:
            ax.set_axis_off()
            continue
        for method, g in sorted(p.groupby("method"), key=lambda kv: _key(kv[0])):
            c = method_color(method)
            if method in REFERENCE_METHODS:
                ax.axhline((g[g["final"]] if g["final"].any() else g)["value"].mean(), color=c, ls="--", lw=1.2,
                           label=_line_label(method))
                continue
            a = g.groupby("step").agg(x=(x, "mean"), y=("value", "mean"), lo=("value", "min"), hi=("value", "max"))
            a = a[a["x"] > 0]  # a log axis has no place for 0
            ax.fill_between(a["x"], a["lo"], a["hi"], color=c, alpha=0.2, lw=0)
            ax.plot(a["x"], a["y"], color=c, lw=1.5, marker="o", ms=2.5, label=_line_label(method))
        ax.set_xscale("log")
        # a run of 1,000 steps spans one decade and a smoke run a factor of 2: 10^k ticks would leave both unlabelled
        ax.xaxis.set_major_locator(LogTicks())
        ax.xaxis.set_major_formatter(PlainNumbers())
        ax.xaxis.set_minor_formatter(NullFormatter())
        arrow = "lower is better" if lower_is_better(metric) else "higher is better"
        ax.set_title(f"{dataset_label(ds)}: {metric_label(metric)}", fontsize=9)
        ax.set_xlabel(f"{CURVE_X.get(x, x)} (log)", fontsize=8)
        ax.set_ylabel(arrow, fontsize=8)
        ax.tick_params(labelsize=8, which="both")
        ax.grid(alpha=0.3, which="both")
    band = Patch(color="0.5", alpha=0.3, label="min-max over seeds")
    _legend(fig, sorted(d["method"].unique(), key=_key), extra=[band])
    return fig


def loss_figure(df: pd.DataFrame, max_cols: int = 4) -> Figure | None:
    """Paper Figure 7 (a, b) for every method: one panel per (dataset, task, train_* loss) against step, per method
    the mean over its trials (the seeds phase when a (dataset, task, method) has one) as a line and their min-max
    as a band, one colour per method (dashed: a reference method), named in the panel's own legend."""
    d = df[df["metric"].str.startswith("train_")]
    if d.empty:
        return None
    panels = []
    for (dataset, task), g in _groups(d):
        seeds = g.groupby("method")["phase"].transform(lambda p: (p == "seeds").any())
        g = g[~seeds | (g["phase"] == "seeds")]
        panels += [(dataset, task, metric, gm) for metric, gm in g.groupby("metric", sort=True)]
    ncol = min(max_cols, len(panels))
    nrow = -(-len(panels) // ncol)
    fig = Figure(figsize=(3.2 * ncol, 2.5 * nrow), layout="constrained")
    axs = np.asarray(fig.subplots(nrow, ncol, squeeze=False))
    for ax, (dataset, task, metric, gm) in zip(axs.flat, panels):
        for method, g in sorted(gm.groupby("method"), key=lambda kv: _key(kv[0])):
            a = g.groupby("step")["value"].agg(["mean", "min", "max"])
            c, ls = method_color(method), "--" if method in REFERENCE_METHODS else "-"
            ax.fill_between(a.index, a["min"], a["max"], color=c, alpha=0.2, lw=0)
            ax.plot(a.index, a["mean"], color=c, ls=ls, lw=1.2,
                    label=f"{_line_label(method)}, {_trials(g['trial'].nunique())}")
        ax.set_title(f"{dataset_label(dataset)} ({task}): {metric}", fontsize=8)
        ax.set_xlabel("step", fontsize=7)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, loc="best", frameon=False)
    for ax in axs.flat[len(panels):]:
        ax.set_axis_off()
    return fig


def quality_cost_figure(df: pd.DataFrame, max_cols: int = 3) -> Figure | None:
    """Final headline metric (paper.headline_metric) against the trial's final core-seconds, one point per
    trial (marker: search or seeds phase), one colour per method; one panel per (dataset, task)."""
    fin = df[df["final"].astype(bool)]
    panels = []
    for (dataset, task), g in _groups(fin):
        metric = headline_metric(str(dataset), str(task))
        pts = (g[g["metric"] == metric].sort_values("step").groupby("trial")
               .agg(method=("method", "last"), phase=("phase", "last"), value=("value", "last")))
        cost = df[df["trial"].isin(pts.index)].groupby("trial")["core_seconds"].max()
        pts = pts.join(cost)
        if not pts.empty:
            panels.append((dataset, task, metric, pts))
    if not panels:
        return None
    ncol = min(max_cols, len(panels))
    nrow = -(-len(panels) // ncol)
    fig = Figure(figsize=(3.6 * ncol, 2.8 * nrow), layout="constrained")
    axs = np.asarray(fig.subplots(nrow, ncol, squeeze=False))
    for ax, (dataset, task, metric, pts) in zip(axs.flat, panels):
        for (method, phase), p in pts.groupby(["method", "phase"], sort=True):
            ax.scatter(p["core_seconds"], p["value"], color=method_color(method), marker=_MARK.get(phase, "s"),
                       s=22, alpha=0.8)
        arrow = "lower is better" if lower_is_better(metric) else "higher is better"
        ax.set_title(f"{dataset_label(dataset)} ({task})", fontsize=8)
        ax.set_xlabel("core-seconds per trial", fontsize=7)
        ax.set_ylabel(f"{metric_label(metric)} ({arrow})", fontsize=7)
        ax.tick_params(labelsize=7)
    for ax in axs.flat[len(panels):]:
        ax.set_axis_off()
    methods = sorted(set().union(*(set(p["method"]) for *_, p in panels)), key=_key)
    phases = sorted(set().union(*(set(p["phase"]) for *_, p in panels)))
    _legend(fig, methods, phases)
    return fig
