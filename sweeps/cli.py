"""The `mist-bench` console command.

  mist-bench benchmark [--scale quick]     the README's main job: the quick sweep, then the report
  mist-bench sweep CONFIG [--resume]       run a sweep config (sweeps/configs/*.yaml) on local Ray or a cluster
  mist-bench report SWEEP_DIR              tables and figures from a sweep's results
  mist-bench tracking-server ...           the MLflow server a cluster logs to (PostgreSQL + S3; docs/cluster.md)
  mist-bench slurm CONFIG [--dry-run]      a sweep as one SLURM job: Ray across the allocation (docs/cluster.md)
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
    print(f"train: {resolved.method_cls.name}: {len(trainer.splits.train):,} training images; training "
          f"{trainer.budget_steps():,} steps...",
          file=sys.stderr, flush=True)
    result = trainer.run()
    print(json.dumps(_json_report(result.metrics), indent=1, sort_keys=True))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"config": cfg.model_dump(), "history": [_json_report(r) for r in result.history]},
                                  indent=1))
        print(f"train: config and history in {out}", file=sys.stderr)
    return 0


def _json_report(report: dict[str, float]) -> dict[str, float | int | None]:
    """A trainer's report as JSON: the step count an int; an undefined metric (no detection: no matched IoU) null,
    not JSON's invalid NaN."""
    return {k: int(v) if k == "step" else v if math.isfinite(v) else None for k, v in report.items()}


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
    """`methods` / `datasets`: every name with what it is in a line; with NAME, every field of its config."""
    from mist_core.describe import catalogue, dataset_help, method_help

    if a.name is None:
        print("\n".join(catalogue(a.cmd)))
    else:
        print(method_help(a.name) if a.cmd == "methods" else dataset_help(a.name))
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


def cmd_slurm(a: argparse.Namespace) -> int:
    from sweeps.slurm import main as slurm_main

    return slurm_main(a.rest + ["--debug"] * a.debug)


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
                            "the MLflow server a cluster logs to (python -m sweeps.tracking_server)"),
                           ("slurm", cmd_slurm, "run a sweep as a SLURM job (python -m sweeps.slurm)")):
        sub.add_parser(name, help=what, add_help=False).set_defaults(fn=fn, passes_on=True)

    t = sub.add_parser("train", parents=[debug], help="one training run", description=TRAIN_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _lazy_epilog(t, _train_fields)
    t.add_argument("--method", required=True, help="a registered method (`mist-bench methods`) or module:Class")
    t.add_argument("--dataset", required=True, help="a registered dataset (`mist-bench datasets`)")
    t.add_argument("--task", default="recon", choices=["recon", "classify"],
                   help="recon: reconstruct the image from its patches; classify: the digits' classes (default: recon)")
    t.add_argument("--scale", default="quick", choices=["smoke", "quick", "paper"],
                   help="the presets of data, networks and budget: smoke (seconds), quick (minutes on a CPU), paper "
                        "(the paper's sizes, for GPUs) (default: quick)")
    t.add_argument("--seed", type=int, default=0, help="seed of the weights and the batch order (default: 0)")
    t.add_argument("--method-param", "-m", action="append", default=[], metavar="KEY=VALUE",
                   help="a method field, VALUE as YAML (repeatable); `mist-bench methods METHOD` lists them")
    t.add_argument("--dataset-param", "-d", action="append", default=[], metavar="KEY=VALUE",
                   help="a dataset field (repeatable); `mist-bench datasets DATASET` lists them")
    t.add_argument("--train", "-t", action="append", default=[], metavar="KEY=VALUE",
                   help="a training field (repeatable), listed below")
    t.add_argument("--out", help="write config and history as JSON here (checked before training starts)")
    t.set_defaults(fn=cmd_train)

    v = sub.add_parser("preview", parents=[debug], help="PNG grid of samples with ground truth")
    v.add_argument("dataset")
    v.add_argument("--out", help="the PNG (default: previews/DATASET.png)")
    v.add_argument("--n", type=positive_int, default=16, help="how many samples (>= 1)")
    v.add_argument("--dataset-param", "-d", action="append", default=[], metavar="KEY=VALUE")
    v.set_defaults(fn=cmd_preview)

    for name, what in (("methods", "method"), ("datasets", "dataset")):
        x = sub.add_parser(name, parents=[debug], help=f"the registered {name}; with a name, every field of its config")
        x.add_argument("name", nargs="?", metavar=what.upper(),
                       help=f"show this {what}'s fields: type, bounds, value at each scale, what it is")
        x.set_defaults(fn=cmd_list)
    return p


TRAIN_HELP = """One training run of METHOD on DATASET at a scale, then its test metrics as JSON on stdout.

Every preset is overridable by field name: -m for the method's (`mist-bench methods METHOD` lists them), -d for the
dataset's (`mist-bench datasets DATASET`), -t for training's (below). An unknown field is refused with the valid
ones."""


def _train_fields() -> str:
    from mist_core.describe import train_help

    return "training fields (-t KEY=VALUE), with their value at each scale:\n" + train_help()


def _lazy_epilog(parser: argparse.ArgumentParser, make) -> None:
    """`parser`'s epilog made by `make()` only when its help is printed (describing fields imports torch)."""
    format_help = parser.format_help

    def lazy() -> str:
        parser.epilog = parser.epilog or make()
        return format_help()

    parser.format_help = lazy


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    p = build_parser()
    a, a.rest = p.parse_known_args(argv)
    if a.rest and not getattr(a, "passes_on", False):
        p.error(f"unrecognized arguments: {' '.join(a.rest)}")
    return run_command(lambda: a.fn(a), a.debug)


if __name__ == "__main__":
    sys.exit(main())
