"""A two-node Ray cluster on this machine (`ray start --block` twice: a head and a worker, 1 CPU each) for the tests
that need real nodes: each node has its own temp dir and worker ports, both share one private auth token, and
`stop` ends the processes these nodes started, and only those, even after a failed test. Each node's processes
(its trials' included) see its name in NODE_ENV.

    with TwoNodes(tmp_path, env={"PYTHONPATH": ...}) as nodes:   # `env`: what the nodes' processes inherit
        subprocess.run([..., "--address", nodes.address], env=nodes.client_env())
        nodes.stop_worker()                                       # the worker node leaves, as a stopped machine
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

__all__ = ["TwoNodes", "free_ports", "stop_process_trees", "process_tree", "NODE_ENV"]

NODE_ENV = "MIST_TEST_NODE"  # each node's name ("head", "worker") in its processes' environment

WORKER_PORTS = (range(47000, 47500), range(47500, 48000))  # head's, worker's --min/--max-worker-port
RAY = str(Path(sys.executable).parent / "ray")
START_TIMEOUT_S = 90.0


def free_ports(n: int) -> list[int]:
    """n free ports outside WORKER_PORTS (a dashboard port drawn inside them once made `ray start` refuse)."""
    socks = []
    while len(socks) < n:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        if any(s.getsockname()[1] in r for r in WORKER_PORTS):
            s.close()
            continue
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def process_tree(root: int) -> set[int]:
    """`root` and its descendants, from /proc."""
    parent = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
                parent[int(d)] = int(stat[stat.rindex(")") + 2:].split()[1])
            except (OSError, ValueError):
                pass
    out, grew = {root}, True
    while grew:
        new = {p for p, q in parent.items() if q in out} - out
        grew = bool(new)
        out |= new
    return out


def stop_process_trees(procs: list[subprocess.Popen], grace_s: float = 20.0) -> None:
    """SIGTERM to each process (a blocking `ray start` then stops its node's processes), SIGKILL to whatever of
    their trees is left after `grace_s`. (`ray stop` would stop every Ray process on the machine, others' too.)"""
    pids = set().union(*(process_tree(p.pid) for p in procs)) if procs else set()
    for p in reversed(procs):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in pids):
        for p in procs:
            p.poll()  # reap
        time.sleep(0.2)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    for p in procs:
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


class TwoNodes:
    def __init__(self, logs: Path, env: dict[str, str] | None = None):
        self.logs = Path(logs)
        self.gcs, self.dash, self.client, self.agent1, self.agent2 = free_ports(5)
        self.temp = tempfile.mkdtemp(prefix="rn", dir="/tmp")  # short: Ray's socket paths must stay under 108 chars
        base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        # Ray 2.60 enables token auth: the nodes and their clients must agree (one private token, not ~/.ray's)
        self.auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": uuid.uuid4().hex}
        self.env = {**base, **(env or {}), **self.auth}
        self.address = f"127.0.0.1:{self.gcs}"
        self.head: subprocess.Popen | None = None
        self.worker: subprocess.Popen | None = None

    def client_env(self, **extra: str) -> dict[str, str]:
        """The environment of a process that joins the cluster (`ray job submit`, a driver with --address)."""
        return {**self.env, **extra}

    def _start(self, name: str, cmd: list[str]) -> subprocess.Popen:
        path = self.logs / f"{name}.log"
        seen = path.stat().st_size if path.exists() else 0  # a restarted node appends to its log
        with open(path, "a") as log:
            proc = subprocess.Popen(cmd, env={**self.env, NODE_ENV: name}, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        _wait_for(path, seen, "Ray runtime started", proc, START_TIMEOUT_S)
        return proc

    def start(self) -> "TwoNodes":
        common = ["--block", "--num-cpus", "1", "--disable-usage-stats"]
        self.head = self._start("head", [
            RAY, "start", "--head", "--port", str(self.gcs), "--dashboard-port", str(self.dash),
            "--include-dashboard", "true", "--ray-client-server-port", str(self.client),
            "--dashboard-agent-listen-port", str(self.agent1), "--min-worker-port", str(WORKER_PORTS[0].start),
            "--max-worker-port", str(WORKER_PORTS[0].stop - 1), "--temp-dir", f"{self.temp}/h", *common])
        self.start_worker()
        return self

    def start_worker(self) -> None:
        """The worker node (again, after stop_worker); its own temp dir (with a shared one, its runtime-env agent
        re-unpacked a job's working dir under the running driver)."""
        self.worker = self._start("worker", [
            RAY, "start", "--address", self.address, "--dashboard-agent-listen-port", str(self.agent2),
            "--min-worker-port", str(WORKER_PORTS[1].start), "--max-worker-port", str(WORKER_PORTS[1].stop - 1),
            "--temp-dir", f"{self.temp}/w", "--block", "--num-cpus", "1", "--disable-usage-stats"])

    def stop_worker(self) -> None:
        """The worker node leaves the cluster, as a machine that is shut down: its raylet and workers stop."""
        if self.worker is not None:
            stop_process_trees([self.worker])
            self.worker = None

    def stop(self) -> None:
        stop_process_trees([p for p in (self.head, self.worker) if p is not None])
        self.head = self.worker = None
        shutil.rmtree(self.temp, ignore_errors=True)

    def __enter__(self) -> "TwoNodes":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


def _wait_for(log: Path, offset: int, text: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in log.read_text()[offset:]:
            return
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args[:3]} exited:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {text!r}:\n{log.read_text()[-3000:]}")
