"""A private PostgreSQL cluster in one folder, the MLflow tracking server's backend store on a cluster's head:
`initdb` once, `pg_ctl start`, the database created, `pg_ctl stop`.

    with LocalPostgres("~/mlflow-pg", port=5432) as pg:    # initdb on first use, then start; stop on exit
        pg.uri        # postgresql://mlflow@127.0.0.1:5432/mlflow  (the password: PGPASSWORD in the environment)
        pg.socket_uri # postgresql://mlflow@/mlflow?host=<folder>/socket&port=5432  (no password needed)

Layout: <folder>/data (the cluster), <folder>/socket (its Unix socket, mode 0700: only its owner gets in),
<folder>/postgres.log. It listens on `host` (127.0.0.1, or a private address the caller has checked) and on the
socket. Authentication: the socket trusts its owner; TCP asks for the password (SCRAM), which is set at initdb from
PGPASSWORD in the environment, never from a file or an argument; without one, TCP logins are refused and only the
socket serves. PostgreSQL refuses to run as root: as root, its processes run as the `postgres` user.
"""
from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from mist_core.config import ConfigError

__all__ = ["LocalPostgres", "bindir", "PASSWORD_ENV"]

PASSWORD_ENV = "PGPASSWORD"  # libpq's own variable: psycopg and the MLflow server read it too
SERVICE_USER = "postgres"    # who runs the server when we are root (the Debian/Ubuntu package's user)


def bindir() -> Path:
    """Where initdb and pg_ctl are: on PATH, else `pg_config --bindir`, else the newest /usr/lib/postgresql/*/bin
    (Debian and Ubuntu install them there, off PATH). ConfigError when PostgreSQL is not installed."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        if out.returncode == 0 and (Path(out.stdout.strip()) / "initdb").is_file():
            return Path(out.stdout.strip())
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]) if
                      p.parts[-3].isdigit() else 0)
    if versions:
        return versions[-1].parent
    raise ConfigError("PostgreSQL: initdb not found (on PATH, pg_config --bindir, /usr/lib/postgresql/*/bin); "
                      "install it, e.g. apt-get install postgresql")


class LocalPostgres:
    def __init__(self, folder: str | os.PathLike, port: int = 5432, host: str = "127.0.0.1", user: str = "mlflow",
                 database: str = "mlflow", max_connections: int = 200, fsync: bool = True):
        self.folder = Path(os.path.expanduser(folder)).resolve()
        self.data, self.socket, self.log = self.folder / "data", self.folder / "socket", self.folder / "postgres.log"
        self.port, self.host, self.user, self.database = port, host, user, database
        self.max_connections, self.fsync = max_connections, fsync
        self.bin = bindir()
        self.owner = _service_user() if os.geteuid() == 0 else None  # (uid, gid) to run as, when we are root
        self.started = False

    # --- where clients connect ---------------------------------------------------------------------------
    @property
    def uri(self) -> str:
        """TCP, no password in it: the client takes PGPASSWORD from its environment."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.database}"

    @property
    def socket_uri(self) -> str:
        """The Unix socket: for a client on this machine running as the folder's owner; needs no password."""
        return f"postgresql://{self.user}@/{self.database}?host={self.socket}&port={self.port}"

    # --- lifecycle ---------------------------------------------------------------------------------------
    def init(self) -> bool:
        """initdb, unless the folder already holds a cluster; True if it was created now."""
        if (self.data / "PG_VERSION").is_file():
            return False
        self.folder.mkdir(parents=True, exist_ok=True)
        self._own(self.folder)
        self._reachable()
        password = os.environ.get(PASSWORD_ENV)
        cmd = [str(self.bin / "initdb"), "-D", str(self.data), "-U", self.user, "-E", "UTF8", "--no-locale",
               "--auth-local=trust", "--auth-host=scram-sha-256"] + ([] if self.fsync else ["--no-sync"])
        with _secret_file(password, self.owner) as pwfile:
            if pwfile:
                cmd.append(f"--pwfile={pwfile}")
            self._run(cmd, "initdb")
        return True

    def start(self, timeout_s: float = 60.0) -> None:
        """Start the server (initdb first when needed) and create the database if it is missing."""
        self.init()
        self.socket.mkdir(mode=0o700, exist_ok=True)
        self.socket.chmod(0o700)
        self._own(self.socket)
        if not self.log.exists():
            self.log.touch()
        self._own(self.log)
        options = [f"-p {self.port}", f"-c listen_addresses={self.host}", f"-c unix_socket_directories={self.socket}",
                   f"-c max_connections={self.max_connections}"] + ([] if self.fsync else ["-c fsync=off"])
        self._run([str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t",
                   str(int(timeout_s)), "-o", " ".join(options), "start"], "pg_ctl start")
        self.started = True
        out = self._run([str(self.bin / "createdb"), "-h", str(self.socket), "-p", str(self.port), "-U", self.user,
                         self.database], "createdb", check=False)
        if out.returncode != 0 and "already exists" not in out.stderr:
            raise ConfigError(f"PostgreSQL at {self.folder}: createdb {self.database} failed: "
                              f"{out.stderr.strip().splitlines()[-1:]}")

    def stop(self, timeout_s: float = 30.0) -> None:
        """pg_ctl stop (fast: open sessions are ended); if that fails, an immediate shutdown of the postmaster."""
        if not (self.data / "postmaster.pid").is_file():
            self.started = False
            return
        out = self._run([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t",
                         str(int(timeout_s)), "stop"], "pg_ctl stop", check=False)
        if out.returncode != 0:
            pid = _postmaster_pid(self.data)
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGQUIT)  # PostgreSQL's "immediate shutdown"; its children follow
                deadline = time.monotonic() + timeout_s
                while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                    time.sleep(0.1)
        self.started = False

    def size_bytes(self) -> int:
        """Bytes on disk of the whole cluster folder (tables, indexes, WAL)."""
        return sum(p.stat().st_size for p in self.data.rglob("*") if p.is_file())

    def __enter__(self) -> LocalPostgres:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- helpers -----------------------------------------------------------------------------------------
    def _own(self, path: Path) -> None:
        if self.owner is not None:
            os.chown(path, *self.owner)

    def _reachable(self) -> None:
        """As root, the service user must be able to walk down to the folder (pytest's and mkdtemp's folders are
        0700 root): a one-line error naming the blocking folder instead of initdb's "permission denied"."""
        if self.owner is None:
            return
        for parent in self.folder.parents:
            st = parent.stat()
            if not st.st_mode & 0o001 and st.st_uid != self.owner[0]:
                raise ConfigError(f"PostgreSQL runs as {SERVICE_USER!r} here (we are root), which cannot reach "
                                  f"{self.folder}: {parent} is not traversable by others; choose a folder under "
                                  "/tmp or /var/lib")

    def _run(self, cmd: list[str], what: str, check: bool = True) -> subprocess.CompletedProcess:
        kw = {} if self.owner is None else {"user": self.owner[0], "group": self.owner[1], "extra_groups": []}
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=self.folder, **kw)
        if check and out.returncode != 0:
            tail = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["no output"]
            raise ConfigError(f"PostgreSQL at {self.folder}: {what} failed ({tail[0]}); see {self.log}")
        return out


def _service_user() -> tuple[int, int]:
    try:
        pw = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        raise ConfigError(f"PostgreSQL refuses to run as root and there is no {SERVICE_USER!r} user to run it as: "
                          "run this as another user") from None
    return pw.pw_uid, pw.pw_gid


@contextlib.contextmanager
def _secret_file(secret: str | None, owner: tuple[int, int] | None):
    """A 0600 temporary file holding `secret` (initdb reads the password only from a file), deleted on exit."""
    if not secret:
        yield None
        return
    fd, path = tempfile.mkstemp(prefix="pw-")
    try:
        os.write(fd, secret.encode())
        os.close(fd)
        if owner is not None:
            os.chown(path, *owner)
        yield path
    finally:
        os.unlink(path)


def _postmaster_pid(data: Path) -> int | None:
    try:
        return int((data / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
