"""Run a sweep config with Ray Tune; every trial is an MLflow run and tidy parquet rows.

    python -m sweeps.run sweeps/configs/smoke.yaml [--resume | --fresh] [--storage DIR] [--tracking-uri URI]
    python -m sweeps.run sweeps/configs/quick.yaml --check     # the plan, its training steps and core-hours

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

A sweep ends (finished, failed or interrupted) by printing the command of its report, `mist-bench report DIR`.
An expected failure (bad config, storage, tracking URI or option) is one line on stderr and exit status 2
(sweeps.command; --debug shows the traceback).

This module is the command line and `run_sweep`, its function; sweeps.driver runs the two phases, sweeps.trial is
the trainable (one trial).
"""
from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path
from typing import Any

from sweeps import cluster
from sweeps.command import CommandError, Parser, positive_int, run_command
from sweeps.config import Plan, SweepConfig, load_sweep, plan
from sweeps.storage import check_storage
from sweeps.tracking import check_server, redact_uri

__all__ = ["main", "run_sweep", "parse_args"]


def run_sweep(config: str | Path | SweepConfig, *, storage: str | None = None, tracking_uri: str | None = None,
              resume: bool = False, fresh: bool = False, address: str | None = None, num_cpus: int | None = None,
              dashboard: bool = False, check: bool = False) -> int:
    """Run a sweep (a config path, the name of a shipped one, or a SweepConfig); the driver's exit status (0 finished,
    1 failed trials, 130 interrupted). Expected failures raise (ConfigError, TrackingError, OSError, CommandError);
    `main` turns them into one line. check=True prints the plan and its cost instead of running it.

        run_sweep("sweeps/configs/smoke.yaml", storage="/tmp/s", resume=True)
    """
    if resume and fresh:
        raise CommandError("--resume and --fresh: pass one of them, not both")
    if num_cpus is not None and num_cpus < 1:
        raise CommandError(f"--num-cpus: must be an integer >= 1, got {num_cpus}")
    sweep = config if isinstance(config, SweepConfig) else load_sweep(config)
    p = plan(sweep, storage=storage, tracking_uri=tracking_uri)  # all that can be checked before Ray starts
    if check:  # and what the run checks once it starts: its storage and MLflow server reached, the cluster's nodes
        check_where(sweep, storage, tracking_uri)
        note = cluster.check_planned_resources(sweep, {str(c.params.get("train.device", "cpu")) for c in p.cells},
                                               argparse.Namespace(address=address, num_cpus=num_cpus,
                                                                  dashboard=dashboard))
        print_check(p)
        if note:
            print(note)
        return 0
    from sweeps.driver import Sweep

    # the command line the driver repeats in its "continue with ... --resume" hint
    shown = [str(config) if not isinstance(config, SweepConfig) else sweep.name]
    options = dict(storage=storage, tracking_uri=tracking_uri, address=address, num_cpus=num_cpus)
    shown += [x for k, v in options.items() if v is not None for x in ("--" + k.replace("_", "-"), str(v))]
    shown += ["--dashboard"] * dashboard
    args = argparse.Namespace(config=shown[0], storage=storage, tracking_uri=tracking_uri, resume=resume,
                              fresh=fresh, address=address, num_cpus=num_cpus, dashboard=dashboard, argv=shown)
    driver = Sweep(p, args)
    code = driver.run()
    print(f"report: mist-bench report {shlex.quote(redact_uri(driver.dir))}", flush=True)
    return code


def check_where(sweep: SweepConfig, storage: str | None, tracking_uri: str | None) -> None:
    """The storage and the MLflow server, each reached once with a bounded wait (sweeps.storage.check_storage,
    sweeps.tracking.check_server): one line naming the one that does not answer. The driver does the same when the
    sweep starts ({head_ip}: this machine, where the driver runs)."""
    check_storage(storage or sweep.storage, field="--storage" if storage else "storage")
    uri = tracking_uri or sweep.tracking_uri
    if "{head_ip}" in uri:
        import ray

        uri = uri.replace("{head_ip}", ray.util.get_node_ip_address())
    check_server(uri, field="--tracking-uri" if tracking_uri else "tracking_uri")


def print_check(p: Plan) -> None:
    """The plan, the training steps each cell's trials run, and the core-hours they cost at measured step costs."""
    from sweeps.estimate import MEASURED_DIR, Planned, cell_steps, core_hours, step_timings

    sweep = p.sweep
    print(p.describe()[0])
    planned: list[Planned] = []
    for c in p.cells:
        steps = cell_steps(c)
        n_search = sweep.search.num_samples if p.needs_search(c) else 0
        cell = [Planned(c.label, sweep.task, sweep.scale, steps, n) for n in (n_search, len(sweep.seeds)) if n]
        planned += cell
        n = sum(x.trials for x in cell)
        search = (sorted(c.space) if n_search else "none") if c.imported else "? (not imported at --check)"
        print(f"  {c.dataset}/{c.method}: search {search}, data {c.data_hash}; "
              f"{n} trials ({n_search} search + {len(sweep.seeds)} seeds) x {steps:,} steps = {n * steps:,} steps")
    total = sum(x.steps * x.trials for x in planned)
    asha = " (at most: ASHA stops weak search trials early)" if sweep.scheduler.type == "asha" else ""
    print(f"planned: {p.n_trials()} trials, {total:,} training steps{asha}")
    hours, missing = core_hours(planned, step_timings())
    n_keys = len({(x.method, x.task, x.scale) for x in planned})
    head = f"{hours:.2f} core-hours of training at scale {sweep.scale}" if len(missing) < n_keys else "none"
    note = "".join(f"; no timing for {m}" for m in missing)
    print(f"estimate: {head} (median core-seconds per step measured in {_relative(MEASURED_DIR)}, evaluation not "
          f"counted){note}")


def _relative(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = Parser(prog="python -m sweeps.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("config", help="a sweep YAML (a path, or the name of one in sweeps/configs)")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue the sweep stored under storage/<name>")
    mode.add_argument("--fresh", action="store_true", help="discard an existing sweep of that name and start over")
    ap.add_argument("--storage", help="override the config's storage (local dir, NFS or s3://bucket/prefix)")
    ap.add_argument("--tracking-uri", help="override the config's MLflow URI ({head_ip} = the driver node's IP)")
    ap.add_argument("--address", help="join this Ray cluster (auto, HOST:PORT); default: RAY_ADDRESS, else local")
    ap.add_argument("--num-cpus", type=positive_int, help="CPUs of the local Ray instance (default: all cores)")
    ap.add_argument("--dashboard", action="store_true", help="start the Ray dashboard with the local instance")
    ap.add_argument("--check", action="store_true",
                    help="validate the config, reach its storage and MLflow server, check the cluster can hold a "
                         "trial, print the plan, its training steps and core-hours; run nothing")
    ap.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    options: dict[str, Any] = {k: getattr(a, k) for k in ("storage", "tracking_uri", "resume", "fresh", "address",
                                                          "num_cpus", "dashboard", "check")}
    return run_command(lambda: run_sweep(a.config, **options), a.debug)


if __name__ == "__main__":
    sys.exit(main())
