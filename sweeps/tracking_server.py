"""The MLflow tracking server a cluster logs to: `mlflow server` with a PostgreSQL backend store and an S3-compatible
artifact store, proxied (trials upload figures and predictions through the server and need no S3 credentials).

    mist-bench tracking-server --postgres-dir ~/mlflow-pg --artifacts-destination s3://BUCKET/mlflow \
        --host 10.0.1.23 --host 127.0.0.1 --port 5000
    mist-bench tracking-server --backend-store-uri postgresql://mlflow@db.internal:5432/mlflow \
        --artifacts-destination s3://BUCKET/mlflow --host 10.0.1.23

--postgres-dir runs a private PostgreSQL in that folder (sweeps.postgres: created on first use, reached by its Unix
socket, no password); --backend-store-uri names an existing database. One `mlflow server` per --host, all on --port
and one store; it runs until SIGTERM or Ctrl-C, then stops the servers (process groups) and the PostgreSQL it
started. SQLite stays the one-machine default (`sqlite:///mlflow.db`, no server): this is for many writers.

It listens on 127.0.0.1 or private addresses only (never 0.0.0.0: MLflow has no authentication here). Credentials
come only from the environment: PGPASSWORD for the database (libpq), AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or
an instance profile for S3 (boto3), MLFLOW_S3_ENDPOINT_URL for an S3-compatible endpoint that is not AWS. A URI
holding a password is refused: it would show in `ps`, in MLflow's log and in this command's.
"""
from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Iterator

from pydantic import Field

from mist_core.config import ConfigError, StrictConfig, parse_config
from sweeps.postgres import LocalPostgres
from sweeps.tracking import redact_uri

__all__ = ["ServerConfig", "TrackingServer", "bind_problem", "server_command", "server_env", "config_from_args",
           "config_problems", "parse_args", "main"]

HEALTH_TIMEOUT_S = 120.0  # a first start migrates the database schema: ~10-30 s on 2 cores


class ServerConfig(StrictConfig):
    """What `mist-bench tracking-server` starts. Exactly one of backend_store_uri and postgres_dir."""

    backend_store_uri: str | None = None      # postgresql://USER@HOST:PORT/DB (password: PGPASSWORD)
    postgres_dir: str | None = None           # a private PostgreSQL in this folder (sweeps.postgres)
    postgres_port: int = Field(5432, ge=1, le=65535)
    artifacts_destination: str                # s3://BUCKET/PREFIX (or any store MLflow serves artifacts from)
    hosts: tuple[str, ...] = Field(("127.0.0.1",), min_length=1)
    port: int = Field(5000, ge=1, le=65535)
    workers: int = Field(4, ge=1)             # uvicorn worker processes per server


def bind_problem(host: str, field: str = "--host") -> str | None:
    """Why a server must not listen on `host`: only loopback and private addresses (RFC 1918, IPv6 unique-local);
    0.0.0.0 / :: (every interface) and public addresses are refused, and names (resolve them yourself)."""
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return f"{field} {host!r}: give an IP address (127.0.0.1 or this machine's private address), not a name"
    if ip.is_unspecified:
        return f"{field} {host}: that is every interface, public ones included; give 127.0.0.1 or a private address"
    if ip.is_link_local or not (ip.is_loopback or ip.is_private):
        return f"{field} {host}: not a loopback or private address (a server without authentication must not face " \
               "the internet)"
    return None


def config_problems(cfg: ServerConfig) -> list[str]:
    """Every reason not to start `cfg`, as lines naming the option."""
    problems = [p for h in cfg.hosts if (p := bind_problem(h))]
    if (cfg.backend_store_uri is None) == (cfg.postgres_dir is None):
        problems.append("--backend-store-uri / --postgres-dir: give exactly one")
    for name, uri in (("--backend-store-uri", cfg.backend_store_uri),
                      ("--artifacts-destination", cfg.artifacts_destination)):
        if uri and _has_secret(uri):
            problems.append(f"{name} {redact_uri(uri)}: holds a credential; put it in the environment instead "
                            "(PGPASSWORD for PostgreSQL, AWS_* for S3)")
    if cfg.backend_store_uri and not cfg.backend_store_uri.startswith(("postgresql", "mysql", "mssql")):
        problems.append(f"--backend-store-uri {cfg.backend_store_uri}: a database server's URI (postgresql://...); "
                        "for one machine the sweep's default sqlite:///mlflow.db needs no server")
    if len(set(cfg.hosts)) != len(cfg.hosts):
        problems.append("--host: listed twice")
    return problems


def _has_secret(uri: str) -> bool:
    """A password in the authority (user:password@) or a secret-looking query value (?password=...)."""
    try:
        if urllib.parse.urlsplit(uri).password is not None:
            return True
    except ValueError:
        return True  # unparsable: do not pass it on
    return redact_uri(uri.split("@")[-1]) != uri.split("@")[-1]


def _mlflow() -> str:
    exe = Path(sys.executable).with_name("mlflow")
    return str(exe) if exe.is_file() else "mlflow"


def server_command(backend_uri: str, cfg: ServerConfig, host: str) -> list[str]:
    return [_mlflow(), "server", "--backend-store-uri", backend_uri, "--artifacts-destination",
            cfg.artifacts_destination, "--host", host, "--port", str(cfg.port), "--workers", str(cfg.workers)]


def server_env() -> dict[str, str]:
    """This environment, and MLflow's server jobs off unless asked for: sweeps use none of them (GenAI scorers, trace
    archival), and their 7 polling consumer processes kept an idle server at 0.83 CPU-s/s (0.02 without) on 2 cores."""
    return {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}


def url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class TrackingServer:
    """The servers of `cfg` (and their PostgreSQL) while inside; logs in `log_dir` (mlflow-<host>.log).

    The first server starts alone: on a fresh database it creates the schema, which two servers doing at once
    would race over."""

    def __init__(self, cfg: ServerConfig, log_dir: str | os.PathLike):
        problems = config_problems(cfg)
        if problems:
            raise ConfigError("tracking server: " + "; ".join(problems))
        self.cfg, self.log_dir = cfg, Path(log_dir)
        self.pg = (LocalPostgres(cfg.postgres_dir, port=cfg.postgres_port) if cfg.postgres_dir else None)
        self.procs: list[subprocess.Popen] = []
        self.urls = [url(h, cfg.port) for h in cfg.hosts]

    @property
    def url(self) -> str:
        return self.urls[0]

    @property
    def backend_uri(self) -> str:
        return self.pg.socket_uri if self.pg is not None else self.cfg.backend_store_uri

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            if self.pg is not None:
                self.pg.start()
            for host, where in zip(self.cfg.hosts, self.urls):
                log = open(self.log_dir / f"mlflow-{host.replace(':', '_')}.log", "ab")
                with log:  # the child keeps its own descriptor
                    self.procs.append(subprocess.Popen(server_command(self.backend_uri, self.cfg, host), stdout=log,
                                                       stderr=subprocess.STDOUT, start_new_session=True,
                                                       env=server_env()))
                wait_healthy(where, self.procs[-1], log.name)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """SIGTERM to each server's process group (uvicorn's workers with it), SIGKILL after 20 s; then PostgreSQL."""
        stop_groups(self.procs)
        self.procs = []
        if self.pg is not None:
            self.pg.stop()

    def __enter__(self) -> TrackingServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def wait_healthy(where: str, proc: subprocess.Popen, log: str, timeout_s: float = HEALTH_TIMEOUT_S) -> None:
    """Until GET /health answers 200; ConfigError with the log's last line if the server exits or times out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ConfigError(f"tracking server {where} exited with status {proc.returncode}: {_last_line(log)} "
                              f"(log: {log})")
        try:
            with urllib.request.urlopen(f"{where}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise ConfigError(f"tracking server {where}: no answer on /health within {timeout_s:g} s (log: {log})")


def _last_line(path: str) -> str:
    try:
        lines = [ln for ln in Path(path).read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    return redact_uri(lines[-1]) if lines else "no output"


def stop_groups(procs: list[subprocess.Popen], grace_s: float = 20.0) -> None:
    """Stop processes started with start_new_session=True, each with its whole process group."""
    for p in procs:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGKILL)  # workers that outlived their parent
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=5)


# --- the command line --------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from sweeps.command import Parser

    ap = Parser(prog="mist-bench tracking-server", description=__doc__,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    store = ap.add_mutually_exclusive_group(required=True)
    store.add_argument("--backend-store-uri", help="postgresql://USER@HOST:PORT/DB (the password: PGPASSWORD)")
    store.add_argument("--postgres-dir", help="run a private PostgreSQL in this folder (created on first use)")
    ap.add_argument("--postgres-port", type=int, default=5432, help="its port, on 127.0.0.1 (default 5432)")
    ap.add_argument("--artifacts-destination", required=True, help="s3://BUCKET/PREFIX")
    ap.add_argument("--host", action="append", dest="hosts", metavar="IP",
                    help="listen here: 127.0.0.1 (default) or a private address; repeat for several")
    ap.add_argument("--port", type=int, default=5000)
    ap.add_argument("--workers", type=int, default=4, help="uvicorn workers per server (default 4)")
    ap.add_argument("--log-dir", default="~/mlflow-server-logs", help="server logs (default ~/mlflow-server-logs)")
    ap.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from sweeps.command import run_command

    a = parse_args(argv)
    return run_command(lambda: _serve(a), a.debug)


def config_from_args(a: argparse.Namespace) -> ServerConfig:
    raw = {k: getattr(a, k) for k in ("backend_store_uri", "postgres_dir", "postgres_port", "artifacts_destination",
                                      "port", "workers") if getattr(a, k) is not None}
    return parse_config(ServerConfig, {**raw, "hosts": a.hosts or ["127.0.0.1"]}, where="tracking-server")


def _serve(a: argparse.Namespace) -> int:
    cfg = config_from_args(a)
    server = TrackingServer(cfg, os.path.expanduser(a.log_dir))
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    with server:
        print(f"tracking server: {', '.join(server.urls)} (store {redact_uri(server.backend_uri)}, artifacts "
              f"{cfg.artifacts_destination}); logs in {a.log_dir}. Stop with Ctrl-C or SIGTERM.", flush=True)
        try:
            while not stop:
                dead = [p for p in server.procs if p.poll() is not None]
                if dead:
                    print(f"tracking server: a server exited (status {dead[0].returncode}); stopping the others",
                          file=sys.stderr, flush=True)
                    return 1
                time.sleep(1.0)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
