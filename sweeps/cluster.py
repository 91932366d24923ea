"""Where the sweep runs: the Ray cluster it joins or the private local instance it starts (`init_ray`), and warnings
about paths that trials on other nodes, or the sweep after its `ray job submit` job, could not reach.
"""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from sweeps.config import SweepConfig

__all__ = ["init_ray", "alive_nodes", "warn_if_unshared", "warn_if_temporary", "AUTOSCALER_HEAD_FILE"]

log = logging.getLogger("sweeps")
AUTOSCALER_HEAD_FILE = "~/ray_bootstrap_config.yaml"  # written by `ray up` on a cluster's head node


def init_ray(args: argparse.Namespace) -> bool:
    """Join a cluster when there is one to join, else start a private local instance.

    Joined: --address; RAY_ADDRESS (set inside a `ray job submit` job, where ray.init(num_cpus=...) raises); or the
    head of an autoscaler cluster (`ray submit` runs the script there without RAY_ADDRESS). Otherwise a new local
    instance, never someone else's `ray start` cluster on the same machine. Returns True when Ray was started or
    joined here (and so must be shut down here)."""
    import ray

    # a checkpoint at every report of short trials trips this warning at every report; it is expected here
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    try:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
    except ImportError:
        pass
    if ray.is_initialized():
        return False
    cwd = os.getcwd()
    if args.address:
        ray.init(address=args.address)
    elif os.environ.get("RAY_ADDRESS"):
        ray.init()
    elif Path(os.path.expanduser(AUTOSCALER_HEAD_FILE)).is_file():
        ray.init(address="auto")
    else:
        ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=args.dashboard,
                 configure_logging=True, logging_level=logging.WARNING)
    try:
        os.getcwd()
    except FileNotFoundError:
        # measured: in a `ray job submit --working-dir` job, ray.init() unpacks the working dir afresh, so the
        # driver's cwd is a deleted directory (MLflow's getcwd() then fails); the same path exists again
        os.chdir(cwd)
    return True


def alive_nodes() -> int:
    import ray

    return len([n for n in ray.nodes() if n.get("Alive")])


def warn_if_unshared(uri: str, storage: str) -> None:
    """With several nodes, the MLflow store and the storage must be reachable from all of them."""
    if alive_nodes() <= 1:
        return
    if uri.startswith("sqlite:") or "://" not in uri:
        log.warning("MLflow store %s is a local file: trials on other nodes can reach it only over a shared "
                    "filesystem; use --tracking-uri http://<server>:5000 (e.g. http://{head_ip}:5000)", uri)
    if "://" not in storage:
        log.warning("storage %s is a local path: with several nodes it must be shared (NFS) or s3://...", storage)


def warn_if_temporary(cfg: SweepConfig, args: argparse.Namespace) -> None:
    """In a `ray job submit --working-dir` job the cwd is a temporary copy: relative paths die with the job."""
    if "runtime_resources" not in os.getcwd():
        return
    rel = lambda p: "://" not in p and not os.path.isabs(os.path.expanduser(p))  # noqa: E731
    if not args.storage and rel(cfg.storage):
        log.warning("storage %r is inside this job's temporary working dir: pass --storage /shared/dir or "
                    "s3://... to keep the sweep", cfg.storage)
    uri = args.tracking_uri or cfg.tracking_uri
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        log.warning("MLflow store %s is inside this job's temporary working dir: pass --tracking-uri "
                    "http://{head_ip}:5000 (ray_cluster.yaml starts that server) or an absolute sqlite path", uri)
