"""`mist-bench slurm CONFIG`: a sweep as one SLURM job, Ray started across its allocation.

    mist-bench slurm sweeps/configs/table1.yaml --nodes 4 --gpus-per-node 8 --time 2-00:00:00 --partition gpu
    mist-bench slurm sweeps/configs/table1.yaml --dry-run        # print the sbatch script, submit nothing
    mist-bench slurm sweeps/configs/table1.yaml --resume         # a new job that continues the stopped sweep

The job's settings come from the sweep config's `slurm:` section (sweeps.config.Slurm), each replaced by its flag.
The command checks the sweep (as `--check` does), writes JOB_DIR/<name>/sweep.sbatch, submits it with `sbatch`, and
prints the job id and where the log, the report and the MLflow store will be. Inside the job (the script, `render`):
  - the Ray head on the first node and a Ray worker on each other node, each a `srun` step (`ray start --block`),
    each Ray node named after its SLURM node;
  - the driver (`python -m sweeps.run ... --address HEAD`) on the first node once every node has joined
    (sweeps.slurm_join: a bounded wait; a node that did not join is named in one line and the job fails);
  - MLflow: SQLite in JOB_DIR/<name>/mlflow.db (on the shared filesystem) while the job runs few trials at a time,
    the PostgreSQL server of `mist-bench tracking-server` on the head (its database in JOB_DIR/<name>/mlflow-pg)
    when it runs more (SQLITE_MAX_TRIALS); Tune's storage, checkpoints included, on the shared filesystem;
  - SIGTERM to the job's script (SLURM sends it `signal_s` seconds before the time limit, `--signal=B:TERM@S`; and
    on `scancel --signal=TERM --batch`): the driver is told, checkpoints and closes its MLflow runs (sweeps.interrupts),
    and the job requeues itself (`requeue`), its next start resuming the sweep; without requeue the same command with
    `--resume` continues it. Either way each trial continues from its last checkpoint and logs every step once.
SLURM's submission directory must be on the shared filesystem (the job runs there, with this Python).
"""
from __future__ import annotations

import argparse
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from mist_core.config import ConfigError, parse_config
from sweeps.command import CommandError, Parser, positive_int, run_command
from sweeps.config import Slurm, SweepConfig, find_config, load_sweep

__all__ = ["Job", "prepare", "check_shared", "render", "submit", "time_limit_s", "trials_per_node", "SQLITE_MAX_TRIALS", "main"]

# SQLite takes one writer at a time: past about 8 fast trials the others queue on its lock (docs/cluster.md,
# "The tracking path under many writers"); a job running more trials at once logs to the PostgreSQL server
SQLITE_MAX_TRIALS = 8
SCRIPT = "sweep.sbatch"
NODE_IP_ENV = "MIST_SLURM_NODE_IP"  # the address Ray binds on every node (default: the one Ray finds)


@dataclass(frozen=True)
class Job:
    """Everything the sbatch script is made of, resolved (absolute paths, one tracking store)."""

    sweep: SweepConfig
    config: Path               # the sweep config the job reads (absolute)
    slurm: Slurm               # the config's section with the flags applied
    cpus_per_node: int
    storage: str               # Tune's storage: absolute path or URI
    folder: Path               # JOB_DIR/<name>: the script, the logs, the SQLite store or PostgreSQL's folder
    tracking_uri: str
    server: bool               # the job starts `mist-bench tracking-server` on the head
    resume: bool
    fresh: bool
    workdir: Path              # the job runs here (the submission directory)
    python: str

    @property
    def log(self) -> Path:
        return self.folder / "slurm-%j.log"

    @property
    def report(self) -> str:
        return f"{self.storage.rstrip('/')}/{self.sweep.name}/report/report.html"


def time_limit_s(limit: str) -> int:
    """SLURM's --time in seconds: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS."""
    days, _, rest = limit.rpartition("-")
    parts = [int(x) for x in rest.split(":")]
    if days:
        parts += [0] * (3 - len(parts))         # D-HH[:MM[:SS]]
        h, m, s = parts
    else:
        h, m, s = {1: (0, parts[0], 0), 2: (0, *parts), 3: tuple(parts)}[len(parts)]
    return ((int(days or 0) * 24 + h) * 60 + m) * 60 + s


def trials_per_node(sweep: SweepConfig, slurm: Slurm, cpus: int) -> int:
    """How many trials a node holds at once: its CPUs and (when trials take GPUs) its GPUs over a trial's share."""
    n = cpus // sweep.resources.cpu
    if sweep.resources.gpu > 0:
        n = min(n, math.floor(slurm.gpus_per_node / sweep.resources.gpu + 1e-9))
    return n


def _settings(sweep: SweepConfig, flags: dict) -> tuple[Slurm, int]:
    """The config's slurm section with the flags given (not None) applied, and the CPUs per node; ConfigError naming
    the field or flag that cannot work."""
    base = (sweep.slurm or Slurm()).model_dump()
    s = parse_config(Slurm, {**base, **{k: v for k, v in flags.items() if v is not None}}, where="slurm")
    need_gpu = sweep.resources.gpu
    if need_gpu > 0 and s.gpus_per_node < need_gpu:
        raise ConfigError(f"slurm.gpus_per_node / --gpus-per-node {s.gpus_per_node}: each trial asks for "
                          f"{need_gpu:g} GPU (resources.gpu); no node would hold one")
    if s.cpus_per_node is None:  # enough CPUs for the trials the node's GPUs hold, or for one trial
        per_gpu = math.floor(s.gpus_per_node / need_gpu + 1e-9) if need_gpu > 0 else 1
        cpus = per_gpu * sweep.resources.cpu
    else:
        cpus = s.cpus_per_node
    if cpus < sweep.resources.cpu:
        raise ConfigError(f"slurm.cpus_per_node / --cpus-per-node {cpus}: each trial asks for "
                          f"{sweep.resources.cpu} CPU (resources.cpu); no node would hold one")
    limit = time_limit_s(s.time)
    if s.signal_s and s.signal_s >= limit:
        raise ConfigError(f"slurm.signal_s / --signal {s.signal_s}: the SIGTERM would come before the job starts "
                          f"(time limit {s.time} = {limit} s)")
    ports = {"ray_port": s.ray_port, "tracking_port": s.tracking_port, "postgres_port": s.postgres_port}
    if len(set(ports.values())) < len(ports):
        raise ConfigError(f"slurm: {', '.join(f'{k}={v}' for k, v in ports.items())}: give each its own port")
    return s, cpus


def _absolute(path: str) -> str:
    return path if "://" in path else str(Path(os.path.expanduser(path)).resolve())


def prepare(config: str | Path, *, storage: str | None = None, tracking_uri: str | None = None,
            resume: bool = False, fresh: bool = False, **flags) -> Job:
    """The job for `config` with the command line's options (`flags`: the Slurm fields, None = the config's), after
    the checks `--check` makes (the sweep's cells, its storage and MLflow store); raises ConfigError / CommandError."""
    from sweeps.config import plan
    from sweeps.storage import check_storage

    if resume and fresh:
        raise CommandError("--resume and --fresh: pass one of them, not both")
    path = find_config(config).resolve()
    sweep = load_sweep(path)
    slurm, cpus = _settings(sweep, flags)
    folder = Path(_absolute(slurm.job_dir)) / sweep.name
    store = _absolute(storage or sweep.storage)
    check_storage(storage or sweep.storage, field="--storage" if storage else "storage")  # as typed: `s3:/b` too
    concurrent = slurm.nodes * trials_per_node(sweep, slurm, cpus)
    server = tracking_uri is None and (slurm.tracking == "server" or
                                       (slurm.tracking == "auto" and concurrent > SQLITE_MAX_TRIALS))
    if tracking_uri is not None:
        uri = tracking_uri
    elif server:
        uri = f"http://{{head_ip}}:{slurm.tracking_port}"  # the driver puts the head's address in
    else:
        uri = f"sqlite:///{folder / 'mlflow.db'}"
    # the sweep's checks, with the job's storage and (a local) MLflow store: a config error is found here, not in
    # the queue hours later
    check_shared(store, folder)
    plan(sweep, storage=store, tracking_uri=uri)
    return Job(sweep=sweep, config=path, slurm=slurm, cpus_per_node=cpus, storage=store, folder=folder,
               tracking_uri=uri, server=server, resume=resume, fresh=fresh, workdir=Path.cwd(),
               python=sys.executable)


def check_shared(storage: str, folder: Path) -> None:
    """The one place a submission checks where the job will write on the shared filesystem: Tune's `storage` (its
    folder is checked by the sweep's plan) and the job folder (script, logs, SQLite or PostgreSQL), which must be a
    folder it can create and write; ConfigError naming it. (`prepare` first reaches the storage as typed, once and
    bounded: sweeps.storage.check_storage, so a typo or a missing bucket is named at submission.)"""
    from sweeps.preflight import where_problems

    problems = where_problems(str(folder), f"sqlite:///{folder / 'mlflow.db'}", storage_field="--job-dir",
                              uri_field="--job-dir")
    if problems:
        raise ConfigError(problems[0])


def render(job: Job) -> str:
    """The sbatch script of `job`."""
    s, q = job.slurm, shlex.quote
    directives = [f"--job-name=mist-{job.sweep.name}", f"--nodes={s.nodes}", "--ntasks-per-node=1",
                  f"--cpus-per-task={job.cpus_per_node}", f"--time={s.time}", f"--output={job.log}",
                  "--open-mode=append"]
    directives += [f"--gres=gpu:{s.gpus_per_node}"] * bool(s.gpus_per_node)
    directives += [f"--partition={s.partition}"] * bool(s.partition) + [f"--account={s.account}"] * bool(s.account)
    directives += [f"--signal=B:TERM@{s.signal_s}"] * bool(s.signal_s)
    directives += ["--requeue" if s.requeue else "--no-requeue"]
    ray = str(Path(job.python).with_name("ray"))
    driver = [job.python, "-m", "sweeps.run", str(job.config), "--storage", job.storage,
              "--tracking-uri", job.tracking_uri]
    server = ""
    if job.server:
        server = f"""
# the MLflow server the trials log to, on the head; its PostgreSQL database on the shared filesystem
# on the address the driver names the trials ({{head_ip}}: Ray's address of this node), the one Ray binds, and loopback
hosts=(--host "$ray_ip")
[ "$head_ip" = "$ray_ip" ] || hosts+=(--host "$head_ip")
[ "$ray_ip" = 127.0.0.1 ] || [ "$head_ip" = 127.0.0.1 ] || hosts+=(--host 127.0.0.1)
"$PY" -m sweeps.tracking_server --postgres-dir {q(str(job.folder / 'mlflow-pg'))} \\
    --postgres-port {s.postgres_port} --artifacts-destination {q(str(job.folder / 'mlflow-artifacts'))} \\
    "${{hosts[@]}}" --port {s.tracking_port} --log-dir {q(str(job.folder / 'tracking-logs'))} &
server=$!
"$PY" -m sweeps.slurm_join --url "http://$head_ip:{s.tracking_port}/health" --timeout {s.join_timeout_s:g} || finish 1
"""
    first = "--resume" if job.resume else "--fresh" if job.fresh else ""
    return f"""#!/bin/bash
{chr(10).join('#SBATCH ' + d for d in directives)}
#
# mist-bench sweep {job.sweep.name} on {s.nodes} node(s): the Ray head on the first, a Ray worker on each other one (srun),
# the driver on the first once every node has joined. Written by `mist-bench slurm` (sweeps/slurm.py).
set -uo pipefail
cd {q(str(job.workdir))}
PY={q(job.python)}
RAY={q(ray)}
RAY_PORT={s.ray_port}
export RAY_TMP="${{TMPDIR:-/tmp}}/mist-ray-$SLURM_JOB_ID"   # each node's own Ray folder
export RAY_DEDUP_LOGS=0
# Ray's token authentication with this job's own token, readable by its user only (on the shared filesystem: every
# node reads it)
export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={q(str(job.folder / 'ray-auth-token'))}
[ -s "$RAY_AUTH_TOKEN_PATH" ] || (umask 077 && "$PY" -c 'import secrets; print(secrets.token_hex(32), end="")' > "$RAY_AUTH_TOKEN_PATH")
nodes=($(scontrol show hostnames "$SLURM_JOB_NODELIST"))
head=${{nodes[0]}}
# the address Ray binds on this node (the script runs on the first one): NODE_IP_ENV, or the one Ray finds
ray_ip=$("$PY" -c 'import ray.util; print(ray.util.get_node_ip_address())')
head_ip=${{{NODE_IP_ENV}:-$ray_ip}}
# a requeued job (its restart count > 0) continues the sweep it started
if [ "${{SLURM_RESTART_COUNT:-0}}" -gt 0 ]; then again=--resume; else again={q(first) if first else '""'}; fi
echo "mist-bench slurm: job $SLURM_JOB_ID (start $((${{SLURM_RESTART_COUNT:-0}} + 1))) on ${{nodes[*]}}; Ray head $head at $head_ip:$RAY_PORT"

# one Ray node per SLURM node, named after it; SLURM_PROCID keeps the agents' ports apart on a shared host
ray_node() {{
    local ip=()
    [ -z "${{{NODE_IP_ENV}:-}}" ] || ip=(--node-ip-address="${NODE_IP_ENV}")
    exec "$RAY" start --block "${{ip[@]}}" --node-name="$SLURMD_NODENAME" --temp-dir="$RAY_TMP" \\
        --num-cpus={job.cpus_per_node} --num-gpus={s.gpus_per_node} --disable-usage-stats \\
        --dashboard-agent-listen-port=$((RAY_PORT + 100 + ${{1:-0}})) "${{@:2}}"
}}
export -f ray_node
export RAY RAY_PORT

steps=()
driver=""
server=""
stop_steps() {{
    [ -n "$server" ] && kill -TERM "$server" 2>/dev/null && wait "$server"
    for p in "${{steps[@]}}"; do kill -TERM "$p" 2>/dev/null; done
    for p in "${{steps[@]}}"; do wait "$p" 2>/dev/null; done
}}
finish() {{ stop_steps; exit "$1"; }}
term=""
# SIGTERM (before the time limit: --signal; scancel --signal=TERM; preemption): the driver checkpoints and closes
# its MLflow runs; the job then requeues or ends
on_term() {{
    term=1
    echo "mist-bench slurm: SIGTERM: stopping the sweep (it checkpoints and closes its MLflow runs)"
    [ -n "$driver" ] && kill -TERM "$driver" 2>/dev/null
}}
trap on_term TERM

srun --nodes=1 --ntasks=1 --nodelist="$head" --overlap bash -c 'ray_node 0 --head --port=$RAY_PORT --include-dashboard=false --ray-client-server-port=$((RAY_PORT + 1))' &
steps+=($!)
if [ ${{#nodes[@]}} -gt 1 ]; then
    "$PY" -m sweeps.slurm_join --address "$head_ip:$RAY_PORT" --nodes "$head" --timeout {s.join_timeout_s:g} || finish 1
    srun --nodes=$((${{#nodes[@]}} - 1)) --ntasks=$((${{#nodes[@]}} - 1)) --ntasks-per-node=1 --exclude="$head" --overlap \\
        bash -c 'ray_node $((SLURM_PROCID + 1)) --address='"$head_ip:$RAY_PORT" &
    steps+=($!)
fi
"$PY" -m sweeps.slurm_join --address "$head_ip:$RAY_PORT" --nodes "${{nodes[@]}}" --timeout {s.join_timeout_s:g} || finish 1
{server}
[ -z "$term" ] || finish 130
"$PY" {' '.join(q(a) for a in driver[1:])} --address "$head_ip:$RAY_PORT" $again &
driver=$!
while kill -0 "$driver" 2>/dev/null; do wait "$driver"; done
wait "$driver"; code=$?
stop_steps
if [ "$code" -eq 130 ] && [ -n "$term" ]; then
    if {'true' if s.requeue else 'false'} && scontrol requeue "$SLURM_JOB_ID"; then
        echo "mist-bench slurm: requeued: the next start resumes the sweep"
    else
        echo "mist-bench slurm: stopped; continue with: mist-bench slurm {q(str(job.config))} --resume"
    fi
fi
exit "$code"
"""


def submit(job: Job, dry_run: bool = False) -> str | None:
    """Write the script to JOB_DIR/<name>/sweep.sbatch and submit it; the job id (None with `dry_run`, which prints
    the script and writes nothing)."""
    script = render(job)
    if dry_run:
        print(script, end="")
        return None
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise CommandError("sbatch not found on PATH: run `mist-bench slurm` on a SLURM login node (or --dry-run to "
                           "see the script)")
    job.folder.mkdir(parents=True, exist_ok=True)
    path = job.folder / SCRIPT
    tmp = path.with_suffix(".tmp")
    tmp.write_text(script)
    tmp.replace(path)
    r = subprocess.run([sbatch, "--parsable", str(path)], capture_output=True, text=True, cwd=job.workdir)
    if r.returncode != 0:
        raise CommandError(f"sbatch {path}: {(r.stderr or r.stdout).strip() or f'exit status {r.returncode}'}")
    m = re.match(r"^\s*(\d+)", r.stdout)
    if m is None:
        raise CommandError(f"sbatch {path}: no job id in its answer {r.stdout.strip()!r}")
    return m.group(1)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = Parser(prog="mist-bench slurm", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", help="a sweep YAML (a path, or the name of one in sweeps/configs)")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue the sweep stored under storage/<name>")
    mode.add_argument("--fresh", action="store_true", help="discard an existing sweep of that name and start over")
    ap.add_argument("--nodes", type=positive_int)
    ap.add_argument("--gpus-per-node", type=int)
    ap.add_argument("--cpus-per-node", type=positive_int)
    ap.add_argument("--time", help="time limit, SLURM's format (e.g. 04:00:00, 2-00:00:00)")
    ap.add_argument("--partition")
    ap.add_argument("--account")
    ap.add_argument("--signal", type=int, dest="signal_s", metavar="SECONDS",
                    help="SIGTERM the job this long before its time limit (0: none; default 300)")
    ap.add_argument("--requeue", action=argparse.BooleanOptionalAction, default=None,
                    help="after a SIGTERM, requeue the job to resume the sweep (default: yes)")
    ap.add_argument("--tracking", choices=["auto", "sqlite", "server"],
                    help=f"MLflow store: SQLite on the shared filesystem, or the PostgreSQL server on the head "
                         f"(auto: the server above {SQLITE_MAX_TRIALS} trials at a time)")
    ap.add_argument("--tracking-uri", help="log to this MLflow store instead (no server is started)")
    ap.add_argument("--storage", help="Tune's storage, on the shared filesystem (default: the config's)")
    ap.add_argument("--job-dir", help="the script, the log and the MLflow store go to JOB_DIR/<name> (default slurm)")
    ap.add_argument("--ray-port", type=int)
    ap.add_argument("--tracking-port", type=int)
    ap.add_argument("--postgres-port", type=int)
    ap.add_argument("--join-timeout", type=float, dest="join_timeout_s", metavar="SECONDS",
                    help="how long the nodes have to join Ray (default 300)")
    ap.add_argument("--dry-run", action="store_true", help="print the sbatch script; submit nothing")
    ap.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return ap.parse_args(argv)


FLAGS = ("nodes", "gpus_per_node", "cpus_per_node", "time", "partition", "account", "signal_s", "requeue",
         "tracking", "job_dir", "ray_port", "tracking_port", "postgres_port", "join_timeout_s")


def _run(a: argparse.Namespace) -> int:
    job = prepare(a.config, storage=a.storage, tracking_uri=a.tracking_uri, resume=a.resume, fresh=a.fresh,
                  **{k: getattr(a, k) for k in FLAGS})
    job_id = submit(job, dry_run=a.dry_run)
    from sweeps.tracking import redact_uri

    where = str(job.log)
    if job_id is not None:
        where = where.replace("%j", job_id)
        print(f"submitted job {job_id}: {job.folder / SCRIPT}", flush=True)
    out = sys.stdout if job_id is not None else sys.stderr  # --dry-run: stdout is the script
    store = (f"{job.tracking_uri} (the job's MLflow server; PostgreSQL in {job.folder / 'mlflow-pg'})"
             if job.server else redact_uri(job.tracking_uri))
    print(f"log: {where}\nreport: {job.report}\nMLflow: {store}", file=out, flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    return run_command(lambda: _run(a), a.debug)


if __name__ == "__main__":
    sys.exit(main())
