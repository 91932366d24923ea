"""Inside a `mist-bench slurm` job: wait, at most --timeout seconds, until every SLURM node of the allocation has
joined the Ray cluster (each Ray node is named after its SLURM node: `ray start --node-name`), or until a URL answers.

    python -m sweeps.slurm_join --address 10.0.0.1:6379 --nodes gpu01 gpu02 --timeout 300
    python -m sweeps.slurm_join --url http://10.0.0.1:5000/health --timeout 300

Exit 0 when they are there; else one line naming the first node that did not join (or the URL that did not answer)
and exit 1, so the job's script stops its Ray steps and ends instead of waiting for the time limit.
"""
from __future__ import annotations

import argparse
import os
import socket
import sys
import time
import urllib.error
import urllib.request

__all__ = ["missing_nodes", "wait_nodes", "wait_url", "main"]

POLL_S = 2.0


def missing_nodes(want: list[str], alive: list[dict]) -> list[str]:
    """The SLURM nodes of `want` without an alive Ray node of that name (ray.nodes() entries), in `want`'s order."""
    there = {n.get("NodeName") for n in alive if n.get("Alive")}
    return [w for w in want if w not in there]


def _reachable(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return True
    except OSError:
        return False


def wait_nodes(address: str, want: list[str], timeout_s: float) -> str | None:
    """None once every node of `want` has joined the cluster at `address`; else the line saying which did not."""
    deadline = time.monotonic() + timeout_s
    while not _reachable(address):
        if time.monotonic() >= deadline:
            return f"the Ray head at {address} (node {want[0]}) did not start within {timeout_s:g} s"
        time.sleep(POLL_S)
    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    try:
        while True:
            missing = missing_nodes(want, ray.nodes())
            if not missing:
                return None
            if time.monotonic() >= deadline:
                more = f" (and {len(missing) - 1} more: {', '.join(missing[1:])})" if len(missing) > 1 else ""
                return (f"node {missing[0]} did not join the Ray cluster at {address} within {timeout_s:g} s{more}; "
                        f"its Ray log: the job's log and {missing[0]}:$TMPDIR/mist-ray-<job>/session_latest/logs")
            time.sleep(POLL_S)
    finally:
        ray.shutdown()


def wait_url(url: str, timeout_s: float) -> str | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return None
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(POLL_S)
    return f"{url} did not answer within {timeout_s:g} s"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sweeps.slurm_join", description=__doc__.split("\n\n")[0])
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--address", help="the Ray head, HOST:PORT (with --nodes)")
    what.add_argument("--url", help="wait for this URL to answer 200")
    ap.add_argument("--nodes", nargs="+", default=[], help="the SLURM node names that must have joined")
    ap.add_argument("--timeout", type=float, default=300.0)
    a = ap.parse_args(argv)
    if a.address and not a.nodes:
        ap.error("--address needs --nodes")
    problem = wait_url(a.url, a.timeout) if a.url else wait_nodes(a.address, a.nodes, a.timeout)
    if problem:
        print(f"mist-bench slurm: {problem}", file=sys.stderr, flush=True)
        return 1
    print(f"mist-bench slurm: {'every node joined: ' + ' '.join(a.nodes) if a.address else a.url + ' answers'}",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
