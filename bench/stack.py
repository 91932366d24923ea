"""A cluster's tracking stack, on this machine, in a temporary folder: PostgreSQL (sweeps.postgres), an S3 endpoint
(moto's server mode) and the MLflow tracking server over them (sweeps.tracking_server), each on a free port of
127.0.0.1, stopped on exit even after a failure. The tests, the tracking load test and the cluster simulation use it.

    with local_stack() as st:        # st.url: the MLflow server; st.env: what clients need (S3 endpoint, keys)
        ...

The credentials are real ones for these servers, made up here and held only in the environment (PGPASSWORD,
AWS_SECRET_ACCESS_KEY), so tests can check that none of them is written anywhere. `missing()` says in one line what
this machine lacks to start the stack (PostgreSQL, moto, boto3, a PostgreSQL driver).
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

__all__ = ["Stack", "local_stack", "moto_s3", "missing", "free_port", "BUCKET"]

BUCKET = "mist-bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def missing() -> str | None:
    """What this machine lacks to run the stack, in one line; None when nothing."""
    from sweeps.postgres import bindir

    lacks = [f"Python package {m}" for m in ("moto", "boto3", "psycopg") if importlib.util.find_spec(m) is None]
    if not shutil.which("moto_server") and not Path(sys.executable).with_name("moto_server").is_file():
        lacks.append("moto_server (pip install 'moto[server]')")
    try:
        bindir()
    except Exception:  # noqa: BLE001 - ConfigError: not installed
        lacks.append("PostgreSQL's initdb/pg_ctl (apt-get install postgresql)")
    return ("cannot start the tracking stack: missing " + ", ".join(lacks)) if lacks else None


@dataclass
class Stack:
    url: str                         # the MLflow server
    s3_endpoint: str                 # http://127.0.0.1:PORT (moto)
    bucket: str
    folder: Path                     # logs, the PostgreSQL cluster
    env: dict[str, str]              # the clients' environment: S3 endpoint and keys, PGPASSWORD
    pg: object = None                # sweeps.postgres.LocalPostgres
    server: object = None            # sweeps.tracking_server.TrackingServer
    secrets: tuple[str, ...] = field(default=())  # the made-up credentials, for "written nowhere" checks

    def s3(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.s3_endpoint)

    def s3_objects(self, prefix: str = "") -> dict[str, int]:
        """key -> size of every object under `prefix` in the bucket."""
        out, token = {}, None
        while True:
            kw = {"Bucket": self.bucket, "Prefix": prefix, **({"ContinuationToken": token} if token else {})}
            page = self.s3().list_objects_v2(**kw)
            out.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
            token = page.get("NextContinuationToken")
            if not token:
                return out


@contextlib.contextmanager
def _env(values: dict[str, str]) -> Iterator[None]:
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def moto_s3(folder: Path, bucket: str = BUCKET) -> Iterator[tuple[str, dict[str, str]]]:
    """moto's S3 server on a free port of 127.0.0.1 with `bucket` created: (endpoint, the clients' environment)."""
    from sweeps.tracking_server import stop_groups

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    exe = Path(sys.executable).with_name("moto_server")
    env = {"AWS_ACCESS_KEY_ID": "mist" + secrets.token_hex(6), "AWS_SECRET_ACCESS_KEY": secrets.token_hex(16),
           "AWS_DEFAULT_REGION": "us-east-1",
           # boto3 and pyarrow (Tune's storage, sweeps.results) read AWS_ENDPOINT_URL; MLflow its own variable
           "AWS_ENDPOINT_URL": endpoint, "AWS_ENDPOINT_URL_S3": endpoint, "MLFLOW_S3_ENDPOINT_URL": endpoint}
    with open(folder / "moto.log", "ab") as log:
        proc = subprocess.Popen([str(exe) if exe.is_file() else "moto_server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        with _env(env):
            _wait_port(port, proc, folder / "moto.log")
            import boto3

            boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
            yield endpoint, env
    finally:
        stop_groups([proc], grace_s=10)


def _wait_port(port: int, proc: subprocess.Popen, log: Path, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited ({proc.returncode}): {log.read_text()[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.2)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout_s} s: {log.read_text()[-2000:]}")


@contextlib.contextmanager
def local_stack(workers: int = 4, prefix: str = "mlflow", max_connections: int = 200) -> Iterator[Stack]:
    """PostgreSQL + moto S3 + the MLflow server on them; os.environ holds the clients' variables while inside."""
    from sweeps.postgres import LocalPostgres
    from sweeps.tracking_server import ServerConfig, TrackingServer

    # under /tmp, not pytest's 0700 folders: as root, PostgreSQL runs as the postgres user, who must reach it
    folder = Path(tempfile.mkdtemp(prefix="mist-stack-", dir="/tmp"))
    folder.chmod(0o755)
    password = secrets.token_hex(12)
    try:
        with contextlib.ExitStack() as stack:
            endpoint, s3_env = stack.enter_context(moto_s3(folder))
            env = {**s3_env, "PGPASSWORD": password}
            stack.enter_context(_env(env))
            pg = LocalPostgres(folder / "pg", port=free_port(), max_connections=max_connections, fsync=False)
            stack.callback(pg.stop)
            pg.start()
            cfg = ServerConfig(backend_store_uri=pg.uri, artifacts_destination=f"s3://{BUCKET}/{prefix}",
                               port=free_port(), workers=workers)
            server = stack.enter_context(TrackingServer(cfg, folder / "logs"))
            yield Stack(server.url, endpoint, BUCKET, folder, env, pg, server,
                        (password, s3_env["AWS_SECRET_ACCESS_KEY"]))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
