"""The `mist-bench` console command.

  mist-bench benchmark [--scale quick]     the README's main job: the quick sweep, then the report
  mist-bench sweep CONFIG [--resume]       run a sweep config (sweeps/configs/*.yaml) on local Ray or a cluster
  mist-bench report SWEEP_DIR              tables and figures from a sweep's results
  mist-bench tracking-server ...           the MLflow server a cluster logs to (PostgreSQL + S3; docs/cluster.md)
  mist-bench train --method M --dataset D  one training run, metrics printed as JSON
  mist-bench preview DATASET               a PNG grid of samples with their ground-truth boxes
  mist-bench methods | datasets            what the registries hold

An expected failure (a bad config, missing data, an output path that cannot be written, a bad tracking URI) is one
line on stderr, `mist-bench: error: ...`, and exit status 2; `mist-bench --debug ...` shows its traceback.
It lives in sweeps, the layer that drives sweeps and reports: mist_core (training, data) knows nothing of it.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path

from sweeps.command import Parser, positive_int, run_command, writable_file

__all__ = ["main", "build_parser"]


def cmd_train(a: argparse.Namespace) -> int:
    out = writable_file(a.out, "--out") if a.out else None
    # the first line before torch is imported and the data generated (seconds to minutes at quick scale)
    print(f"train: {a.method} on {a.dataset} ({a.scale}): preparing data...", file=sys.stderr, flush=True)
    from mist_core._runtime import busy_note, default_threads
    from mist_core.config import parse_config, parse_overrides
    from mist_core.train import RunConfig, Trainer, resolve
    from sweeps.preflight import check_run

    cfg = parse_config(RunConfig, dict(method=a.method, dataset=a.dataset, task=a.task, scale=a.scale, seed=a.seed,
                                       method_params=parse_overrides(a.method_param),
                                       dataset_params=parse_overrides(a.dataset_param),
                                       train=parse_overrides(a.train)), where="run")
    resolved = resolve(cfg)
    check_run(resolved)  # what a sweep's plan refuses, refused here too, before the data is generated
    busy = busy_note(resolved.train_cfg.threads or default_threads(), "run with `-t threads=1` (or OMP_NUM_THREADS=1)")
    if busy:
        print(f"train: {busy}", file=sys.stderr, flush=True)
    trainer = Trainer(resolved)
    print(f"train: {len(trainer.splits.train):,} training images; training {trainer.budget_steps():,} steps...",
          file=sys.stderr, flush=True)
    result = trainer.run()
    # an undefined metric (no detection: no matched IoU) is null, not JSON's invalid NaN
    print(json.dumps({k: v if math.isfinite(v) else None for k, v in result.metrics.items()}, indent=1, sort_keys=True))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"config": cfg.model_dump(), "history": result.history}, indent=1))
        print(f"train: config and history in {out}", file=sys.stderr)
    return 0


def cmd_preview(a: argparse.Namespace) -> int:
    out = writable_file(a.out or f"previews/{a.dataset}.png", "--out")
    from mist_core.config import parse_overrides
    from mist_core.data import dataset_config, load_splits
    from mist_core.data.preview import write_preview
    from mist_core.presets import DATA_PRESETS
    from sweeps.preflight import check_dataset

    cfg = dataset_config(a.dataset, {**DATA_PRESETS["smoke"], **parse_overrides(a.dataset_param)})
    check_dataset(a.dataset, cfg)  # the dataset's part of the checks every entry point shares
    write_preview(load_splits(cfg).train, out, n=a.n)  # the PNG and its folder, once the data is there
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
    from analysis.report import report_sweep
    from sweeps.config import CONFIG_DIR, load_sweep
    from sweeps.run import run_sweep
    from sweeps.store import SweepDir

    sweep = load_sweep(CONFIG_DIR / f"{a.scale}.yaml")
    code = run_sweep(sweep, storage=a.storage, resume=a.resume, fresh=a.fresh)
    if code:
        return code
    built = Path(SweepDir(a.storage, sweep.name).path) / "report" / "report.html"   # the driver builds it at the end
    print(built if built.exists() else report_sweep(built.parent.parent))          # the report's path: the last line
    return 0


def cmd_sweep(a: argparse.Namespace) -> int:
    from sweeps.run import main as sweep_main

    return sweep_main(a.rest + ["--debug"] * a.debug)


def cmd_report(a: argparse.Namespace) -> int:
    from analysis.report import main as report_main

    return report_main(a.rest + ["--debug"] * a.debug)


def cmd_tracking_server(a: argparse.Namespace) -> int:
    from sweeps.tracking_server import main as server_main

    return server_main(a.rest + ["--debug"] * a.debug)


def build_parser() -> Parser:
    p = Parser(prog="mist-bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    # --debug after the command too; SUPPRESS: a subcommand without it keeps the global value
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of an error")
    sub = p.add_subparsers(dest="cmd", required=True)

    b = sub.add_parser("benchmark", parents=[debug], help="quick local benchmark ending in a report")
    b.add_argument("--scale", default="quick", choices=["smoke", "quick"])
    b.add_argument("--storage", default="runs")
    again = b.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue an interrupted benchmark")
    again.add_argument("--fresh", action="store_true", help="discard an earlier benchmark of this scale and rerun it")
    b.set_defaults(fn=cmd_benchmark)

    # sweep and report hand their arguments to their modules' command lines, which have their own --help
    for name, fn, what in (("sweep", cmd_sweep, "run a sweep config (python -m sweeps.run)"),
                           ("report", cmd_report, "build the report of a sweep (python -m analysis.report)"),
                           ("tracking-server", cmd_tracking_server,
                            "the MLflow server a cluster logs to (python -m sweeps.tracking_server)")):
        sub.add_parser(name, help=what, add_help=False).set_defaults(fn=fn, passes_on=True)

    t = sub.add_parser("train", parents=[debug], help="one training run")
    t.add_argument("--method", required=True)
    t.add_argument("--dataset", required=True)
    t.add_argument("--task", default="recon", choices=["recon", "classify"])
    t.add_argument("--scale", default="quick", choices=["smoke", "quick", "paper"])
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--method-param", "-m", action="append", default=[], metavar="KEY=VALUE")
    t.add_argument("--dataset-param", "-d", action="append", default=[], metavar="KEY=VALUE")
    t.add_argument("--train", "-t", action="append", default=[], metavar="KEY=VALUE")
    t.add_argument("--out", help="write config and history as JSON here (checked before training starts)")
    t.set_defaults(fn=cmd_train)

    v = sub.add_parser("preview", parents=[debug], help="PNG grid of samples with ground truth")
    v.add_argument("dataset")
    v.add_argument("--out", help="the PNG (default: previews/DATASET.png)")
    v.add_argument("--n", type=positive_int, default=16, help="how many samples (>= 1)")
    v.add_argument("--dataset-param", "-d", action="append", default=[], metavar="KEY=VALUE")
    v.set_defaults(fn=cmd_preview)

    for name in ("methods", "datasets"):
        sub.add_parser(name, parents=[debug]).set_defaults(fn=cmd_list)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    p = build_parser()
    a, a.rest = p.parse_known_args(argv)
    if a.rest and not getattr(a, "passes_on", False):
        p.error(f"unrecognized arguments: {' '.join(a.rest)}")
    return run_command(lambda: a.fn(a), a.debug)


if __name__ == "__main__":
    sys.exit(main())
