"""The quick benchmark (`mist-bench benchmark`, sweeps/configs/quick.yaml): the paper's Table 1 methods, MIST-reach
and the two reference rows, one thread per trial; its report marks MIST-reach as ours and ptopk as added."""
from __future__ import annotations

import pandas as pd

from analysis import tables
from sweeps.config import CONFIG_DIR, load_sweep, plan
from test_analysis import _rows

PAPER_TABLE1 = {"mist", "grid", "channelwise", "air", "zhang"}


def test_quick_holds_the_papers_methods_ours_and_the_references():
    quick = load_sweep(CONFIG_DIR / "quick.yaml")
    assert set(quick.methods) == PAPER_TABLE1 | {"mist_reach", "trivial", "kmeans"}
    assert quick.task == "recon" and quick.scale == "quick" and list(quick.datasets) == ["mnist_hard"]
    assert all(c.run.train["threads"] == 1 for c in plan(quick).cells)    # one torch thread per trial
    for table in ("table1.yaml", "table2.yaml"):                          # ptopk is swept with the tables
        assert "ptopk" in load_sweep(CONFIG_DIR / table).methods


def test_report_marks_mist_reach_as_ours_and_ptopk_as_added():
    df = _rows()
    mist = df[(df["method"] == "mist") & (df["dataset"] == "mnist_hard") & (df["task"] == "recon")]
    df = pd.concat([df] + [mist.assign(method=m, trial=mist["trial"].str.replace("mist", m)) for m in
                           ("mist_reach", "ptopk")], ignore_index=True)
    view = tables.table_view(df, tables.TABLES["1"]).frame
    labels = set(view[("method", "")])
    assert {"MIST-reach (ours: not in the paper)", "Perturbed top-K (added: not in the paper)", "MIST"} <= labels
    summary, _ = tables.format_summary(tables.method_summary(df))
    assert "MIST-reach (ours: not in the paper)" in set(summary["method"])
