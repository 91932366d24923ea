"""Every storage location a user can type gets one line naming it, exit status 2, in seconds, at `sweep --check`
and when the sweep (or a --resume) starts, with nothing written locally: schemes the sweep does not support, `s3://`
without a bucket, a local path that looks like a URI with a slash missing, and buckets that cannot be reached
(missing, no credentials, refused credentials, nothing listening, an endpoint that never answers), against moto's S3
server and local ports only. The same for an MLflow tracking server where nothing listens, and for resources that
no node can give. No Ray is started here: every case is refused before it.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mist_core.config import ConfigError
from sweep_fixtures import DELETE, config_with, write_config
from sweeps.storage import REACH_TIMEOUT_ENV, check_storage, parse_location
from sweeps.tracking import redact_uri

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
ONE_CELL = dict(methods=["trivial"], seeds=[0], search__num_samples=1, scheduler=DELETE)
BOUND_S = 30  # "in seconds": a hang guard, not a timing


# --- parsed, no I/O -------------------------------------------------------------------------------------------
REFUSED = [
    ("ftp://host/x", "unsupported scheme 'ftp'; storage is a local path (an NFS mount included), file:///absolute/"
                     "path, or s3://bucket/prefix"),
    ("postgresql://mlflow@db:5432/mlflow", "unsupported scheme 'postgresql' (it looks like an MLflow store or a "
                                           "database: that is tracking_uri / --tracking-uri)"),
    ("http://127.0.0.1:5000", "unsupported scheme 'http' (it looks like an MLflow store"),
    ("s3://", "no bucket; write s3://BUCKET/prefix"),
    ("s3:///x", "no bucket"),
    ("s3:/bucket/x", "a local path whose first part 's3:' looks like a URI scheme with a slash missing, refused as a "
                     "likely typo: write s3://bucket/x for the remote location; or write ./s3:/bucket/x"),
    ("s3:bucket", "a local path whose first part 's3:bucket' looks like a URI scheme with a slash missing, refused "
                  "as a likely typo: write s3://bucket for the remote location"),
    ("gs:relative", "a local path whose first part 'gs:relative' looks like a URI scheme with a slash missing"),
    ("gs://bucket/x", "gs:// is not supported"),
    ("S3://bucket/x", "write the scheme in lower case, s3://"),
    ("s3://bucket/x?region=eu-west-1", "options in the URI are not supported"),
    ("s3://Bad_Bucket/x", "'Bad_Bucket' is not a valid S3 bucket name"),
    ("file://host/x", "a file:// URI takes an absolute path on this machine"),
    ("", "empty"),
]


@pytest.mark.parametrize("text,needle", REFUSED, ids=[r[0] or "empty" for r in REFUSED])
def test_location_refused_naming_it(text, needle):
    with pytest.raises(ConfigError) as e:
        parse_location(text, "--storage")
    assert f"--storage {text!r}: " in str(e.value) and needle in str(e.value), str(e.value)


def test_supported_locations_parse(tmp_path, monkeypatch):
    from sweeps.store import SweepDir

    monkeypatch.chdir(tmp_path)
    assert parse_location("runs/sweeps").root == str(tmp_path / "runs" / "sweeps")
    assert parse_location("./s3:/x").root == str(tmp_path / "s3:" / "x")  # a folder of that name, said explicitly
    assert parse_location(f"file://{tmp_path}/runs").root == str(tmp_path / "runs")
    s3 = parse_location("s3://my-bucket/a/b/")
    assert (s3.kind, s3.bucket, s3.key, s3.root) == ("s3", "my-bucket", "a/b", "s3://my-bucket/a/b")
    assert parse_location("s3://my-bucket").root == "s3://my-bucket"
    assert SweepDir("s3://my-bucket/a/", "t").path == "s3://my-bucket/a/t"
    assert SweepDir(f"file://{tmp_path}", "t").path == str(tmp_path / "t")


def _sweep(tmp_path: Path, monkeypatch, argv: list[str], **cfg) -> tuple[int, float]:
    """`python -m sweeps.run` in this process from a working folder holding only its config: (status, seconds)."""
    from sweeps.run import main

    monkeypatch.chdir(tmp_path)
    path = write_config(tmp_path, config_with(**ONE_CELL, **cfg))
    t0 = time.monotonic()
    code = main([str(path), *argv])
    return code, time.monotonic() - t0


def _refused(tmp_path, monkeypatch, capsys, argv, needle, **cfg) -> None:
    """At --check, at the run and at a --resume: status 2, one line holding `needle`, and only the config in the
    working folder (no storage folder, no mlflow.db)."""
    for mode in (["--check"], [], ["--resume"]):
        code, seconds = _sweep(tmp_path, monkeypatch, argv + mode, **cfg)
        err = capsys.readouterr().err
        assert code == 2 and seconds < BOUND_S, (mode, err)
        lines = [line for line in err.splitlines() if "error:" in line]
        assert len(lines) == 1 and redact_uri(needle) in lines[0], (mode, err)  # a user in a URI is shown as ***
        assert "Traceback" not in err
        assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep.yaml"], mode


@pytest.mark.parametrize("text,needle", [r for r in REFUSED if r[0]], ids=[r[0] for r in REFUSED if r[0]])
def test_sweep_refuses_storage_at_check_and_run(tmp_path, monkeypatch, capsys, text, needle):
    _refused(tmp_path, monkeypatch, capsys, ["--storage", text], f"--storage {text!r}: {needle}")


def test_config_storage_refused_naming_the_field(tmp_path, monkeypatch, capsys):
    _refused(tmp_path, monkeypatch, capsys, [], "storage 's3:/bucket/x': a local path", storage="s3:/bucket/x")


# --- remote storage, reached once -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 server on 127.0.0.1 with bucket mist-bench; the clients' environment set (bench.stack.moto_s3)."""
    from bench.stack import BUCKET, moto_s3

    if shutil.which("moto_server") is None and not Path(sys.executable).with_name("moto_server").is_file():
        pytest.skip("moto_server is not installed (pip install 'moto[server]')")
    with moto_s3(tmp_path_factory.mktemp("moto")) as (endpoint, env):
        yield endpoint, env, BUCKET


@pytest.fixture
def s3_env(s3, monkeypatch):
    endpoint, env, bucket = s3
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return endpoint, bucket


def test_reachable_bucket_passes(s3_env, tmp_path, monkeypatch, capsys):
    endpoint, bucket = s3_env
    assert check_storage(f"s3://{bucket}/sweeps", timeout_s=5).root == f"s3://{bucket}/sweeps"
    code, _ = _sweep(tmp_path, monkeypatch, ["--check", "--storage", f"s3://{bucket}/sweeps"])
    assert code == 0, capsys.readouterr().err


def test_missing_bucket(s3_env, tmp_path, monkeypatch, capsys):
    endpoint, _ = s3_env
    _refused(tmp_path, monkeypatch, capsys, ["--storage", "s3://no-such-bucket/x"],
             f"--storage 's3://no-such-bucket/x': bucket 'no-such-bucket' does not exist at the S3 endpoint {endpoint}")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once closed


def test_nothing_listens(s3_env, tmp_path, monkeypatch, capsys):
    port = _closed_port()
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{port}")
    _refused(tmp_path, monkeypatch, capsys, ["--storage", "s3://mist-bench/x"],
             f"--storage 's3://mist-bench/x': cannot reach the S3 endpoint http://127.0.0.1:{port} (")


def test_endpoint_that_never_answers(s3_env, tmp_path, monkeypatch, capsys):
    """A port that accepts connections and never replies: the wait ends after REACH_TIMEOUT_ENV seconds."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", url)
        monkeypatch.setenv(REACH_TIMEOUT_ENV, "2")
        code, seconds = _sweep(tmp_path, monkeypatch, ["--check", "--storage", "s3://mist-bench/x"])
    err = capsys.readouterr().err
    assert code == 2 and seconds < BOUND_S, err
    assert f"--storage 's3://mist-bench/x': " in err and url in err and err.count("error:") == 1, err


@pytest.fixture(scope="module")
def s3_auth(tmp_path_factory):
    """moto's S3 server checking credentials (INITIAL_NO_AUTH_ACTION_COUNT=0: none are known to it)."""
    from bench.stack import _wait_port, free_port
    from sweeps.tracking_server import stop_groups

    exe = Path(sys.executable).with_name("moto_server")
    if not exe.is_file() and shutil.which("moto_server") is None:
        pytest.skip("moto_server is not installed (pip install 'moto[server]')")
    folder, port = tmp_path_factory.mktemp("moto-auth"), free_port()
    with open(folder / "moto.log", "ab") as log:
        proc = subprocess.Popen([str(exe) if exe.is_file() else "moto_server", "-H", "127.0.0.1", "-p", str(port)],
                                env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"}, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_port(port, proc, folder / "moto.log")
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_groups([proc], grace_s=10)


def _no_credentials(monkeypatch, home: Path) -> None:
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
              "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE", "AWS_WEB_IDENTITY_TOKEN_FILE",
              "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HOME", str(home))  # no ~/.aws here
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-role lookup towards 169.254.169.254


def test_missing_credentials(s3_auth, tmp_path, monkeypatch, capsys):
    home = tmp_path.parent / f"{tmp_path.name}-home"
    home.mkdir()
    _no_credentials(monkeypatch, home)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_auth)  # over the other moto's, if its fixture set one
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    _refused(tmp_path, monkeypatch, capsys, ["--storage", "s3://mist-bench/x"],
             f"--storage 's3://mist-bench/x': the S3 endpoint {s3_auth} refused the request and this environment "
             "names no AWS credentials")


def test_refused_credentials(s3_auth, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_auth)  # over the other moto's, if its fixture set one
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAUNKNOWN")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-a-real-secret")
    _refused(tmp_path, monkeypatch, capsys, ["--storage", "s3://mist-bench/x"],
             "--storage 's3://mist-bench/x': access denied to bucket 'mist-bench' with this environment's AWS "
             "credentials")
    assert "not-a-real-secret" not in capsys.readouterr().err


# --- the MLflow server and the cluster, at --check as at the run ----------------------------------------------
def test_tracking_server_where_nothing_listens(tmp_path, monkeypatch, capsys):
    """Named within seconds at --check and at the start of the sweep, not after MLflow's minutes of retries."""
    port = _closed_port()
    uri = f"http://mlflow:hunter2@127.0.0.1:{port}"
    for mode in (["--check"], []):
        code, seconds = _sweep(tmp_path, monkeypatch, ["--tracking-uri", uri, "--storage", "runs"] + mode)
        err = capsys.readouterr().err
        assert code == 2 and seconds < BOUND_S, err
        assert f"--tracking-uri http://mlflow:***@127.0.0.1:{port}: no MLflow server answers there " \
               "(ConnectionError: [Errno 111] Connection refused)" in err, err
        assert err.count("error:") == 1 and "hunter2" not in err
        assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep.yaml"]


@pytest.mark.parametrize("resources,needle", [
    ({"cpu": 1, "gpu": 2**70}, f"each trial asks for 1 CPU and {float(2**70):g} GPU"),
    ({"cpu": 4096, "gpu": 0}, "each trial asks for 4096 CPU and 0 GPU"),
], ids=["gpus", "cpus"])
def test_check_refuses_resources_no_node_has(tmp_path, monkeypatch, capsys, resources, needle):
    """As the run does once Ray is up, but without starting Ray: the local instance would be this machine."""
    code, _ = _sweep(tmp_path, monkeypatch, ["--check", "--num-cpus", "2"], resources=resources)
    err = capsys.readouterr().err
    assert code == 2 and needle in err and "1 node(s) with 2 CPU" in err and err.count("error:") == 1, err
    assert "(nor could a node of ray_cluster.yaml)" in err
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()


def test_check_notes_a_cluster_config_this_machine_cannot_hold(tmp_path, monkeypatch, capsys):
    """A paper-table config checked on a laptop: priced, with a note that it must run on a cluster."""
    code, _ = _sweep(tmp_path, monkeypatch, ["--check", "--num-cpus", "2"], resources={"cpu": 4, "gpu": 0.5})
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "resources: this machine (2 CPU, " in out and "cannot hold a trial (4 CPU, 0.5 GPU), so the sweep must " \
        "run on a cluster (a node type of ray_cluster.yaml can hold it)" in out


def test_reach_timeout_must_be_a_number(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(REACH_TIMEOUT_ENV, "soon")
    code, _ = _sweep(tmp_path, monkeypatch, ["--check", "--storage", "s3://mist-bench/x"])
    assert code == 2 and f"{REACH_TIMEOUT_ENV}='soon'" in capsys.readouterr().err
