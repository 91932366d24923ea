"""Before/after timing of one method's training step with explicit config overrides, for A/B runs of two
checkouts (the `steps` item always uses the presets, which change between versions).

    python -m bench.ab --threads 1 -m kp_steps=2 -m kp_max_move=3.0 -m kp_lr=1e4      # this checkout
    git worktree add /tmp/before <commit> && (cd /tmp/before && /path/to/.venv/bin/python -m bench.ab ...)

Prints one JSON line: median and min ms of `repeats` train_steps on one preset-size batch after `warmup` steps.
Overrides the older checkout does not know are an error there (strict configs), so pass only common keys.
"""
from __future__ import annotations

import argparse
import json
import sys

from bench.timing import summary, time_calls
from bench.workload import build, load_case

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    from mist_core._runtime import configure_torch
    from mist_core.config import parse_overrides
    from mist_core.train import resolve

    ap = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.split("\n\n")[0])
    ap.add_argument("--method", default="mist")
    ap.add_argument("--task", default="recon")
    ap.add_argument("--scale", default="quick")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--method-param", "-m", action="append", default=[], metavar="KEY=VALUE")
    a = ap.parse_args(argv)
    threads = configure_torch(a.threads)
    overrides = parse_overrides(a.method_param)
    r, splits = load_case(a.method, a.task, a.scale)
    r = resolve(r.run.model_copy(update={"method_params": overrides}))
    w = build(r, splits)
    s = summary(time_calls(w.step, a.warmup, a.repeats, w.method.device)[0])
    print(json.dumps({"method": a.method, "task": a.task, "scale": a.scale, "threads": threads,
                      "overrides": overrides, "median_ms": round(s["median_ms"], 1),
                      "min_ms": round(s["min_ms"], 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
