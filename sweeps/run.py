"""Run a sweep config with Ray Tune; every trial is an MLflow run and tidy parquet rows.

    python -m sweeps.run sweeps/configs/smoke.yaml [--resume | --fresh] [--storage DIR] [--tracking-uri URI]

Protocol, per (dataset, method) cell of the config:
  phase 1 "search"  `search.num_samples` Optuna trials on the search seed, ASHA stopping the weak ones early
                    (skipped when num_samples == 1 or the method has nothing to search: its defaults are used);
                    the best trial's parameters go to storage/<sweep>/best/<dataset>__<method>.json.
  phase 2 "seeds"   the chosen parameters re-run on every seed, all cells in one Tune experiment (a grid over
                    cell x seed), no early stopping: these are the rows the tables use.
One Tune experiment per search cell (storage/<sweep>/search-<dataset>-<method>) and one for the seeds
(storage/<sweep>/seeds). Each trial checkpoints `Trainer.state_dict()` at every report (at most every
`checkpoint_interval_s`); a failed trial is retried from its checkpoint (max_failures); an interrupted sweep (Ctrl-C,
SIGTERM, a crash, failed trials) continues with --resume: finished trials are kept, unfinished and errored ones
resume from their last checkpoint, each in its own MLflow run. A changed config refuses to resume.

Ray: with --address, inside a submitted job (RAY_ADDRESS set), or on the head of a `ray up` cluster (`ray submit`),
ray.init() joins that cluster; otherwise a private local instance is started (num_cpus = --num-cpus or all cores),
never someone else's `ray start` cluster on the same machine.
Test hook: MIST_SWEEP_FAULT="method=mist,phase=seeds,seed=1,step=3" in the driver's environment makes the matching
trials raise after reporting that step, on their first attempt only (used by the resume and retry tests).

This module is the command line; sweeps.driver runs the two phases, sweeps.trial is the trainable (one trial).
"""
from __future__ import annotations

import argparse
import logging
import sys

from mist_core.config import ConfigError
from sweeps.config import SweepConfig, load_sweep, plan
from sweeps.driver import Sweep
from sweeps.tracking import redact_uri

__all__ = ["main", "run_sweep"]


def run_sweep(config: str | SweepConfig, **options) -> int:
    """Programmatic entry point: run_sweep("sweeps/configs/smoke.yaml", resume=True, storage="/tmp/s")."""
    argv = [str(config)] if not isinstance(config, SweepConfig) else ["<config>"]
    for k, v in options.items():
        flag = "--" + k.replace("_", "-")
        if v is True:
            argv.append(flag)
        elif v not in (None, False):
            argv += [flag, str(v)]
    return main(argv, _config=config if isinstance(config, SweepConfig) else None)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m sweeps.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("config", help="a sweep YAML (a path, or the name of one in sweeps/configs)")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue the sweep stored under storage/<name>")
    mode.add_argument("--fresh", action="store_true", help="discard an existing sweep of that name and start over")
    ap.add_argument("--storage", help="override the config's storage (local dir, NFS or s3://...)")
    ap.add_argument("--tracking-uri", help="override the config's MLflow URI ({head_ip} = the driver node's IP)")
    ap.add_argument("--address", help="join this Ray cluster (auto, HOST:PORT); default: RAY_ADDRESS, else local")
    ap.add_argument("--num-cpus", type=int, help="CPUs of the local Ray instance (default: all cores)")
    ap.add_argument("--dashboard", action="store_true", help="start the Ray dashboard with the local instance")
    ap.add_argument("--check", action="store_true", help="validate the config and print the plan, run nothing")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None, _config: SweepConfig | None = None) -> int:
    args = parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        sweep = _config or load_sweep(args.config)
        p = plan(sweep)
        if args.check:
            print(f"{sweep.name}: {len(p.cells)} cells, {p.n_trials()} trials: OK")
            for c in p.cells:
                print(f"  {c.dataset}/{c.method}: search {sorted(c.space) if p.needs_search(c) else 'none'}, "
                      f"data {c.data_hash}")
            return 0
        return Sweep(p, args).run()
    except ConfigError as e:
        print(f"error: {redact_uri(str(e))}", file=sys.stderr)  # a message may quote --tracking-uri or storage
        return 2


if __name__ == "__main__":
    sys.exit(main())
