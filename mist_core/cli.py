"""The `mist-bench` console command.

  mist-bench benchmark [--scale quick]     the README's main job: the quick sweep, then the report
  mist-bench sweep CONFIG [--resume]       run a sweep config (sweeps/configs/*.yaml) on local Ray or a cluster
  mist-bench report SWEEP_DIR              tables and figures from a sweep's results
  mist-bench train --method M --dataset D  one training run, metrics printed as JSON
  mist-bench preview DATASET               a PNG grid of samples with their ground-truth boxes
  mist-bench methods | datasets            what the registries hold
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from mist_core.config import ConfigError, parse_overrides


def cmd_train(a: argparse.Namespace) -> int:
    from mist_core.train import RunConfig, Trainer

    cfg = RunConfig(method=a.method, dataset=a.dataset, task=a.task, scale=a.scale, seed=a.seed,
                    method_params=parse_overrides(a.method_param), dataset_params=parse_overrides(a.dataset_param), train=parse_overrides(a.train))
    result = Trainer(cfg).run()
    print(json.dumps(result.metrics, indent=1, sort_keys=True))
    if a.out:
        Path(a.out).write_text(json.dumps({"config": cfg.model_dump(), "history": result.history}, indent=1))
    return 0


def cmd_preview(a: argparse.Namespace) -> int:
    from mist_core.data import dataset_config, load_splits
    from mist_core.data.preview import write_preview
    from mist_core.presets import DATA_PRESETS

    cfg = dataset_config(a.dataset, {**DATA_PRESETS["smoke"], **parse_overrides(a.dataset_param)})
    out = Path(a.out or f"previews/{a.dataset}.png")
    write_preview(load_splits(cfg).train, out, n=a.n)
    print(out)
    return 0


def cmd_list(a: argparse.Namespace) -> int:
    if a.cmd == "methods":
        from mist_core.registry import get_method, method_names

        for n in method_names():
            print(f"{n:12s} tasks={','.join(get_method(n).tasks)}")
    else:
        from mist_core.data import DATASETS

        for n in sorted(DATASETS):
            print(n)
    return 0


def cmd_benchmark(a: argparse.Namespace) -> int:
    from analysis.report import main as report_main
    from sweeps.run import main as sweep_main

    config = Path(__file__).resolve().parent.parent / "sweeps" / "configs" / f"{a.scale}.yaml"
    args = [str(config), "--storage", a.storage]
    if a.resume:
        args.append("--resume")
    elif a.fresh:
        args.append("--fresh")
    rc = sweep_main(args)
    if rc:
        return rc
    from sweeps.config import load_sweep

    name = load_sweep(config).name
    return report_main([str(Path(a.storage) / name), "--out", str(Path(a.storage) / name / "report")])


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    p = argparse.ArgumentParser(prog="mist-bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    b = sub.add_parser("benchmark", help="quick local benchmark ending in a report")
    b.add_argument("--scale", default="quick", choices=["smoke", "quick"])
    b.add_argument("--storage", default="runs")
    again = b.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue an interrupted benchmark")
    again.add_argument("--fresh", action="store_true", help="discard an earlier benchmark of this scale and rerun it")
    b.set_defaults(fn=cmd_benchmark)

    s = sub.add_parser("sweep", help="run a sweep config", add_help=False)
    s.set_defaults(fn=None)
    r = sub.add_parser("report", help="build the report of a sweep", add_help=False)
    r.set_defaults(fn=None)

    t = sub.add_parser("train", help="one training run")
    t.add_argument("--method", required=True)
    t.add_argument("--dataset", required=True)
    t.add_argument("--task", default="recon", choices=["recon", "classify"])
    t.add_argument("--scale", default="quick", choices=["smoke", "quick", "paper"])
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--method-param", "-m", action="append", default=[], metavar="KEY=VALUE")
    t.add_argument("--dataset-param", "-d", action="append", default=[], metavar="KEY=VALUE")
    t.add_argument("--train", "-t", action="append", default=[], metavar="KEY=VALUE")
    t.add_argument("--out", help="write config and history as JSON here")
    t.set_defaults(fn=cmd_train)

    v = sub.add_parser("preview", help="PNG grid of samples with ground truth")
    v.add_argument("dataset")
    v.add_argument("--out")
    v.add_argument("--n", type=int, default=16)
    v.add_argument("--dataset-param", "-d", action="append", default=[], metavar="KEY=VALUE")
    v.set_defaults(fn=cmd_preview)

    for name in ("methods", "datasets"):
        sub.add_parser(name).set_defaults(fn=cmd_list)

    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("sweep", "report"):  # delegate, keeping their own --help
        if argv[0] == "sweep":
            from sweeps.run import main as delegate
        else:
            from analysis.report import main as delegate
        return delegate(argv[1:])
    a = p.parse_args(argv)
    try:
        return a.fn(a)
    except ConfigError as e:
        print(f"mist-bench: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
