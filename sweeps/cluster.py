"""Where the sweep runs: the Ray cluster it joins or the private local instance it starts (`init_ray`), whether a
trial's resources fit in it (`check_resources`), and warnings about paths that trials on other nodes, or the sweep
after its `ray job submit` job, could not reach.

Nothing here waits forever: a cluster address that does not answer within CONNECT_TIMEOUT_ENV seconds (default 30)
is an error naming it, and a trial that no node could ever hold (Tune would leave it PENDING for good) is refused
before the first one starts.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from mist_core.config import ConfigError
from sweeps.config import SweepConfig

__all__ = ["init_ray", "reuse_timeout", "check_resources", "check_planned_resources", "would_join", "alive_nodes",
           "warn_if_unshared", "warn_if_temporary", "AUTOSCALER_HEAD_FILE", "CONNECT_TIMEOUT_ENV"]

log = logging.getLogger("sweeps")
AUTOSCALER_HEAD_FILE = "~/ray_bootstrap_config.yaml"  # written by `ray up` on a cluster's head node
PROJECT_CLUSTER = Path(__file__).resolve().parent.parent / "ray_cluster.yaml"  # the cluster the table configs target
CONNECT_TIMEOUT_ENV = "MIST_RAY_CONNECT_TIMEOUT_S"
REUSE_TIMEOUT_ENV = "TUNE_FUNCTION_THREAD_TIMEOUT_S"  # Tune's: how long a reused worker waits for the last trial
REUSE_TIMEOUT_S = 120  # a stopped trial's closing MLflow calls (set-tag, update) against a busy server
DEFAULT_CONNECT_TIMEOUT_S = 30.0

# read when Ray is imported: two seeds' progress lines alike within 5 s would be merged into one
# "[repeated 2x across cluster]" line
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# Ray 2.60 starts a new cluster with token authentication, and warns that it did unless RAY_AUTH_MODE chose it: chosen
# here (read when Ray is imported, so only before that). A job on a cluster (RAY_ADDRESS) keeps the cluster's mode;
# a cluster started with RAY_AUTH_MODE=disabled needs it in the driver's environment too (docs/cluster.md)
if "ray" not in sys.modules and not os.environ.get("RAY_ADDRESS"):
    os.environ.setdefault("RAY_AUTH_MODE", "token")


def connect_timeout() -> float:
    """Seconds to wait for a cluster to answer: CONNECT_TIMEOUT_ENV, default 30."""
    raw = os.environ.get(CONNECT_TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_CONNECT_TIMEOUT_S
    try:
        t = float(raw)
    except ValueError:
        t = math.nan
    if not (math.isfinite(t) and t > 0):
        raise ConfigError(f"{CONNECT_TIMEOUT_ENV}={raw!r}: expected a number of seconds > 0")
    return t


def init_ray(args: argparse.Namespace) -> str:
    """Join a cluster when there is one to join, else start a private local instance.

    Joined: --address; RAY_ADDRESS (set inside a `ray job submit` job, where ray.init(num_cpus=...) raises); or the
    head of an autoscaler cluster (`ray submit` runs the script there without RAY_ADDRESS). Otherwise a new local
    instance, never someone else's `ray start` cluster on the same machine. Returns "local" (started here), "joined"
    (either way Ray must be shut down here) or "" (Ray was already initialised by the caller).

    Joining waits at most connect_timeout() seconds for the address to accept a connection, then as long again for
    ray.init(), which otherwise retries an unreachable cluster forever; either way the error names the address."""
    import ray

    # a checkpoint at every report of short trials trips this warning at every report; it is expected here
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Tune's automatic loggers include TensorBoard's, whose "run tensorboard" hint names a package we do not install;
    # the driver adds the JSON and CSV loggers itself (sweeps.driver)
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    reuse_timeout()
    try:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
    except ImportError:
        pass
    if ray.is_initialized():
        return ""
    cwd = os.getcwd()
    if args.address:
        _join(f"--address {args.address}", args.address, lambda: ray.init(address=args.address))
    elif os.environ.get("RAY_ADDRESS"):
        _join(f"RAY_ADDRESS={os.environ['RAY_ADDRESS']}", os.environ["RAY_ADDRESS"], ray.init)
    elif Path(os.path.expanduser(AUTOSCALER_HEAD_FILE)).is_file():
        _join(f"this autoscaler head's cluster ({AUTOSCALER_HEAD_FILE})", "auto", lambda: ray.init(address="auto"))
    else:
        ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=args.dashboard,
                 configure_logging=True, logging_level=logging.WARNING)
        return "local"
    try:
        os.getcwd()
    except FileNotFoundError:
        # measured: in a `ray job submit --working-dir` job, ray.init() unpacks the working dir afresh, so the
        # driver's cwd is a deleted directory (MLflow's getcwd() then fails); the same path exists again
        os.chdir(cwd)
    return "joined"


def reuse_timeout() -> None:
    """Give a stopped trial time to close its MLflow run before its worker runs the next trial. Tune waits
    REUSE_TIMEOUT_ENV seconds (its default: 2) for the old trial's thread, then fails the NEW trial ("Could not re-use
    actor"): 12 of 997 trials of bench.cluster_sim on a busy machine, and the sweep failed. Tune reads it in the trial
    workers, so it is shipped to them with the trial (a cluster's workers do not inherit the driver's environment)."""
    from ray.tune.execution import class_cache

    os.environ.setdefault(REUSE_TIMEOUT_ENV, str(REUSE_TIMEOUT_S))
    class_cache.ENV_VARS_TO_PROPAGATE.add(REUSE_TIMEOUT_ENV)


def _join(named: str, address: str, init) -> None:
    """Run `init` (a joining ray.init) once `address` accepts connections; ConfigError naming it (`named`) if it does
    not within connect_timeout(), or if ray.init refuses it."""
    timeout = connect_timeout()
    target = _host_port(address)
    if target is not None:
        _wait_reachable(named, target, timeout)
    message = (f"{named}: the Ray cluster did not let this driver join within {timeout:g} s ({CONNECT_TIMEOUT_ENV} "
               "sets the wait); is it a Ray head (`ray start --head`), reachable from here, same Ray version?")
    try:
        with _exit_after(timeout, message):
            init()
    except ConnectionError as e:  # e.g. address "auto" with no cluster running
        raise ConfigError(f"{named}: cannot join a Ray cluster there ({e})") from None


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) a joining ray.init() contacts for `address` (HOST:PORT, ray://HOST:PORT, auto); None when that
    cannot be told here (ray.init then reports it)."""
    scheme, sep, rest = address.partition("://")
    if sep and scheme != "ray":  # e.g. a dashboard's http:// address: ray.init() decides what it means
        return None
    addr = rest if sep else address
    if addr == "auto":
        try:
            from ray._private.services import canonicalize_bootstrap_address

            addr = canonicalize_bootstrap_address("auto") or ""
        except Exception:  # noqa: BLE001 - no cluster found: ray.init says so at once
            return None
    host, sep, port = addr.rstrip("/").rpartition(":")
    if not sep or not host or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def _wait_reachable(named: str, target: tuple[str, int], timeout: float) -> None:
    """Wait until `target` accepts a TCP connection (a cluster may still be starting), at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        try:
            with socket.create_connection(target, timeout=max(0.1, min(5.0, left))):
                return
        except OSError as e:
            if time.monotonic() >= deadline:
                raise ConfigError(f"{named}: no Ray cluster answers at {target[0]}:{target[1]} within {timeout:g} s "
                                  f"({type(e).__name__}: {e}; {CONNECT_TIMEOUT_ENV} sets the wait)") from None
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))


@contextlib.contextmanager
def _exit_after(seconds: float, message: str) -> Iterator[None]:
    """Exit the process (status 2, `message` on stderr) if the block has not ended after `seconds`: ray.init() waits
    for an unresponsive cluster inside its C++ core, where no Python exception or signal handler reaches it."""
    def give_up() -> None:
        print(f"error: {message}", file=sys.stderr, flush=True)
        os._exit(2)

    timer = threading.Timer(seconds, give_up)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def check_resources(cfg: SweepConfig, devices: set[str], local: bool) -> None:
    """Refuse a trial no node of the cluster can hold (Tune would keep it pending for good): resources.cpu / gpu
    against each alive node and, on an autoscaler's head, each node type it may start. `devices` are the trials'
    train.device values; `local`: the cluster is the private instance started on this machine."""
    import ray

    nodes = [dict(n.get("Resources") or {}) for n in ray.nodes() if n.get("Alive")]
    _check_fit(cfg, nodes, ray.cluster_resources(), local)
    cuda = sorted(d for d in devices if d.startswith("cuda"))
    if local and cuda:
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"train.device={cuda[0]!r}: the trials run on this machine, where torch sees no CUDA "
                              "device (torch.cuda.is_available() is False)")


def _check_fit(cfg: SweepConfig, nodes: list[dict[str, Any]], total: dict[str, float], local: bool) -> None:
    """ConfigError unless one of `nodes` (or a node type the autoscaler may start) holds a trial's resources."""
    need = {"CPU": float(cfg.resources.cpu), "GPU": float(cfg.resources.gpu)}
    if any(_fits(r, need) for r in nodes) or any(r is None or _fits(r, need) for r in _autoscaled_types()):
        return
    biggest = max(nodes, key=lambda r: (r.get("GPU", 0.0), r.get("CPU", 0.0)), default={})
    hint = ("; or start the local Ray instance with more (--num-cpus)"
            if local and need["CPU"] > biggest.get("CPU", 0.0) else "")
    raise ConfigError(
        f"resources: each trial asks for {need['CPU']:g} CPU and {need['GPU']:g} GPU (resources.cpu, "
        f"resources.gpu), more than any node of the Ray cluster has: {len(nodes)} node(s) with "
        f"{total.get('CPU', 0.0):g} CPU and {total.get('GPU', 0.0):g} GPU in all, the largest "
        f"{biggest.get('CPU', 0.0):g} CPU and {biggest.get('GPU', 0.0):g} GPU. Tune would wait for it forever: "
        f"lower resources.cpu / resources.gpu{hint}")


def would_join(args: argparse.Namespace) -> bool:
    """Whether init_ray(args) joins a cluster (rather than starting a private local instance)."""
    return bool(getattr(args, "address", None) or os.environ.get("RAY_ADDRESS")
                or Path(os.path.expanduser(AUTOSCALER_HEAD_FILE)).is_file())


def check_planned_resources(cfg: SweepConfig, devices: set[str], args: argparse.Namespace) -> str | None:
    """At --check, the check_resources the run makes once Ray is up, on the cluster it would use; ConfigError if no
    node can hold a trial. A cluster the run would join is joined (as bounded as the run's join) and left again; a
    Ray already initialised in this process is asked as it is. A private local instance is not started: its one
    node is this machine as Ray would count it (--num-cpus, else every core; the CUDA devices torch sees). A trial
    this machine cannot hold but a node type of the project's cluster (PROJECT_CLUSTER) can is a cluster config
    checked on a laptop (`table1.yaml --check` prices the paper's sweep): returned as a note, not refused."""
    ray = sys.modules.get("ray")  # not imported for a local instance: nothing of Ray is needed then
    if (ray is not None and ray.is_initialized()) or would_join(args):
        import ray

        mode = init_ray(args)
        try:
            check_resources(cfg, devices, local=False)
        finally:
            if mode:
                ray.shutdown()
        return None
    import torch

    node = {"CPU": float(args.num_cpus or os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}
    try:
        _check_fit(cfg, [node], node, local=True)
    except ConfigError as e:
        need = {"CPU": float(cfg.resources.cpu), "GPU": float(cfg.resources.gpu)}
        if not any(t is not None and _fits(t, need) for t in _autoscaled_types(PROJECT_CLUSTER)):
            raise ConfigError(f"{e} (nor could a node of {PROJECT_CLUSTER.name})") from None
        return (f"resources: this machine ({node['CPU']:g} CPU, {node['GPU']:g} GPU) cannot hold a trial "
                f"({need['CPU']:g} CPU, {need['GPU']:g} GPU), so the sweep must run on a cluster (a node type of "
                f"{PROJECT_CLUSTER.name} can hold it): --address, or `ray job submit` (docs/sweeps.md)")
    return None


def _fits(node: dict[str, Any], need: dict[str, float]) -> bool:
    return all(node.get(k, 0.0) >= v for k, v in need.items() if v > 0)


def _autoscaled_types(file: str | Path = AUTOSCALER_HEAD_FILE) -> list[dict[str, Any] | None]:
    """Resources of the node types an autoscaler config may start (None: not stated in it, so not known here)."""
    path = Path(os.path.expanduser(file))
    if not path.is_file():
        return []
    import yaml

    try:
        types = (yaml.safe_load(path.read_text()) or {}).get("available_node_types") or {}
    except (OSError, yaml.YAMLError, AttributeError) as e:
        log.warning("cannot read the autoscaler's node types from %s (%s): only alive nodes are counted", path, e)
        return []
    return [t.get("resources") if isinstance(t, dict) else None for t in types.values()
            if not isinstance(t, dict) or t.get("max_workers", 1) > 0]


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
