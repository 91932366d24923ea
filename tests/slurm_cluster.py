"""A real SLURM on this machine for the tests: munged, slurmctld and two slurmd (nodes n1 and n2, each with its own
port on 127.0.0.1), all in one temporary folder with their own slurm.conf and munge key, none of the system's
files or daemons touched.

    with SlurmCluster.start(nodes=2) as slurm:      # pytest.skip(...) with one line when SLURM is missing
        job = slurm.submit_env()                    # the environment `sbatch` and the jobs run with
        slurm.wait(job_id)

Every daemon runs in the foreground in its own process group; `stop()` cancels the jobs left, stops the daemons'
groups and kills any process that still carries this cluster's SLURM_CONF (a Ray process a job left): `leftovers()`
lists them first, so a test can assert that none was left.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scontrol", "scancel", "srun", "sinfo")
# outside Ray's default worker port range (10002-19999): the ports here are drawn from the ephemeral range


def missing() -> list[str]:
    """What this machine lacks to run the cluster (empty: nothing)."""
    need = [c for c in DAEMONS + CLIENTS if shutil.which(c) is None]
    if not need and os.geteuid() != 0:
        need.append("root (slurmd runs jobs as their user: it must run as root)")
    return need


def skip_line() -> str | None:
    m = missing()
    if not m:
        return None
    return (f"SLURM is not installed here (missing: {', '.join(m)}; Debian: apt-get install slurm-wlm munge)"
            if any(x in DAEMONS + CLIENTS for x in m) else f"a local SLURM needs {m[0]}")


def _free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class SlurmCluster:
    def __init__(self, folder: Path, nodes: int):
        self.dir = folder
        self.names = [f"n{i + 1}" for i in range(nodes)]
        self.conf = folder / "slurm.conf"
        self.procs: list[subprocess.Popen] = []
        self.nodes: list[str] = []         # the nodes that came up (idle)

    # --- start ---------------------------------------------------------------------------------------------
    @classmethod
    def start(cls, nodes: int = 2) -> SlurmCluster:
        line = skip_line()
        if line:
            pytest.skip(line)
        # short: Ray's socket paths under the jobs' TMPDIR must stay below 108 characters
        c = cls(Path(tempfile.mkdtemp(prefix="mslurm", dir="/tmp")), nodes)
        try:
            c._start()
        except BaseException:
            c.stop()
            raise
        return c

    def _start(self) -> None:
        d = self.dir
        for sub in ("munge", "state", "log", "tmp", *(f"spool-{n}" for n in self.names)):
            (d / sub).mkdir(mode=0o700)
        key = d / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        sock = d / "munge" / "munge.sock"
        ctld, slurmd, *node_ports = _free_ports(2 + len(self.names))
        host = socket.gethostname()
        nodes = "\n".join(f"NodeName={n} NodeHostname={host} NodeAddr=127.0.0.1 Port={p} CPUs=2 State=UNKNOWN"
                          for n, p in zip(self.names, node_ports))
        self.conf.write_text(f"""ClusterName=mistbenchtest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld}
SlurmdPort={slurmd}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={sock}
StateSaveLocation={d / 'state'}
SlurmdSpoolDir={d}/spool-%n
SlurmctldPidFile={d / 'slurmctld.pid'}
SlurmdPidFile={d}/slurmd-%n.pid
SlurmctldLogFile={d / 'log' / 'slurmctld.log'}
SlurmdLogFile={d}/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SwitchType=switch/none
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
KillWait=60
MinJobAge=600
InactiveLimit=0
PlugStackConfig={d / 'plugstack.conf'}
{nodes}
PartitionName=test Nodes={','.join(self.names)} Default=YES MaxTime=INFINITE State=UP
""")
        (d / "plugstack.conf").write_text("")
        self._daemon(["munged", "-F", "--force", f"--socket={sock}", f"--key-file={key}",
                      f"--pid-file={d / 'munge' / 'munged.pid'}", f"--log-file={d / 'log' / 'munged.log'}",
                      f"--seed-file={d / 'munge' / 'munged.seed'}"], "munged")
        self._until(sock.exists, 20, "munged did not create its socket")
        self._daemon(["slurmctld", "-D", "-f", str(self.conf)], "slurmctld")
        self._until(lambda: self.run("sinfo", "-h", check=False).returncode == 0, 30, "slurmctld did not answer")
        for n in self.names:
            self._daemon(["slurmd", "-D", "-f", str(self.conf), "-N", n], f"slurmd-{n}")
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            states = dict(line.split() for line in self.run("sinfo", "-h", "-N", "-o", "%N %t").stdout.splitlines())
            self.nodes = [n for n in self.names if states.get(n) == "idle"]
            if len(self.nodes) == len(self.names):
                return
            time.sleep(0.5)
        if not self.nodes:
            raise RuntimeError(f"no slurmd registered: {self.tail('log/slurmctld.log')}")

    def _daemon(self, argv: list[str], name: str) -> None:
        log = open(self.dir / "log" / f"{name}.out", "ab")
        with log:
            self.procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                               env=self.env()))

    def _until(self, ok, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not ok():
            dead = [p.args[0] for p in self.procs if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                raise RuntimeError(f"{what} ({', '.join(dead) + ' exited; ' if dead else ''}logs in {self.dir}/log)")
            time.sleep(0.3)

    # --- use ---------------------------------------------------------------------------------------------
    def env(self, **extra: str) -> dict[str, str]:
        """This environment with SLURM_CONF pointing here, and TMPDIR (the jobs' Ray folders) inside the cluster."""
        return {**os.environ, "SLURM_CONF": str(self.conf), "TMPDIR": str(self.dir / "tmp"), **extra}

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(list(argv), capture_output=True, text=True, env=self.env(), check=check, timeout=60)

    def job(self, job_id: str) -> dict[str, str]:
        """scontrol's fields of a job (JobState, ExitCode, Restarts, ...)."""
        out = self.run("scontrol", "show", "job", job_id).stdout
        return dict(re.findall(r"(\w+)=(\S*)", out))

    def wait(self, job_id: str, timeout_s: float = 600, states=("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT",
                                                                "NODE_FAIL", "OUT_OF_MEMORY")) -> dict[str, str]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            info = self.job(job_id)
            if info.get("JobState") in states:
                return info
            time.sleep(2)
        raise TimeoutError(f"job {job_id} still {self.job(job_id).get('JobState')} after {timeout_s:g} s")

    def tail(self, rel: str, n: int = 20) -> str:
        try:
            return "\n".join((self.dir / rel).read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return f"(no {rel})"

    def leftovers(self) -> list[str]:
        """Processes outside the daemons' process groups that carry this cluster's SLURM_CONF: what the jobs left running."""
        mine = f"SLURM_CONF={self.conf}".encode()
        daemons = {p.pid for p in self.procs}
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            if int(pid) in daemons or int(pid) == os.getpid():
                continue
            try:
                if mine in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                    pgid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[2])
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                    if pgid not in daemons:  # not a daemon's helper (slurmctld's slurmscriptd)
                        found.append(f"{pid} {cmd.strip()}")
            except OSError:
                pass
        return found

    # --- stop --------------------------------------------------------------------------------------------
    def stop(self) -> None:
        """Cancel the jobs left, stop the daemons (process groups), kill what the jobs left; remove the folder."""
        with contextlib.suppress(Exception):
            ids = self.run("squeue", "-h", "-o", "%i", check=False).stdout.split()
            if ids:
                self.run("scancel", *ids, check=False)
                deadline = time.monotonic() + 90
                while self.run("squeue", "-h", "-o", "%i", check=False).stdout.split() and \
                        time.monotonic() < deadline:
                    time.sleep(1)
        for p in reversed(self.procs):  # slurmd, slurmctld, then munged
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=5)
        for line in self.leftovers():  # slurmstepd and the jobs' processes live outside the daemons' groups
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(line.split()[0]), signal.SIGKILL)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> SlurmCluster:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
