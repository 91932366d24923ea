"""Where a sweep lives: its storage location parsed once, and reached once, with a bounded wait, before any work.

Supported: a local path (an NFS mount is one), `file:///absolute/path` (the same thing) and `s3://bucket/prefix`
(AWS, or any S3-compatible endpoint named by AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, as pyarrow and Tune read it).
Anything else is refused naming it: another scheme (ftp://, a database URI pasted into the wrong field, gs://: Tune
would wait on Google's credential lookup for minutes: mount the bucket or use GCS's S3-compatible endpoint), `s3://`
without a bucket, URI options (`s3://b/x?region=...`: the sweep joins folder names after the location, which would
land inside the query), and a local path whose first part looks like a scheme with a slash missing (`s3:/bucket/x`,
`gs:bucket`), which would silently become a local folder named `s3:`.

    loc = parse_location("s3://my-bucket/sweeps")          # Location(kind="s3", bucket="my-bucket", ...); no I/O
    check_storage("s3://my-bucket/sweeps", timeout_s=10)   # + the folder checked, or the bucket reached once

`check_storage` is what `sweep --check`, the sweep itself (and --resume), the cluster's submitted job and the SLURM
command call: every problem is one ConfigError line naming the location, within `timeout_s` (REACH_TIMEOUT_ENV,
default 10 s). A local folder is looked at only (nothing is created); a bucket gets one HeadBucket (plus, on AWS
without an endpoint, the region lookup pyarrow makes too), with its own connect and request timeouts and a wall-clock
bound over the whole, so a lookup stuck in the AWS SDK cannot hold the command.
"""
from __future__ import annotations

import math
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

from mist_core.config import ConfigError

__all__ = ["Location", "parse_location", "location_problems", "check_storage", "reach_timeout", "folder_problem",
           "bounded", "SUPPORTED", "REACH_TIMEOUT_ENV", "DEFAULT_REACH_TIMEOUT_S"]

SUPPORTED = "a local path (an NFS mount included), file:///absolute/path, or s3://bucket/prefix"
REACH_TIMEOUT_ENV = "MIST_REACH_TIMEOUT_S"  # also bounds the tracking server's first answer (sweeps.tracking)
DEFAULT_REACH_TIMEOUT_S = 10.0
SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")  # RFC 3986's scheme, then ":"
# S3's bucket naming rules (lower-case letters, digits, dots, hyphens; 3..63 characters)
BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
# schemes of tracking stores and databases: a URI meant for --tracking-uri, pasted into storage
TRACKING_SCHEMES = {"http", "https", "sqlite", "postgresql", "postgres", "mysql", "mssql", "databricks", "mlflow"}
GCS_HINT = ("gs:// is not supported: Tune's Google Cloud Storage client waits minutes for credentials it cannot find; "
            "mount the bucket (gcsfuse) on every node and give the mount's path, or use GCS's S3-compatible endpoint "
            "as s3://BUCKET/prefix with AWS_ENDPOINT_URL=https://storage.googleapis.com and HMAC keys")


@dataclass(frozen=True)
class Location:
    """A parsed storage location. `root`: what the sweep joins its folders to (a local path made absolute, or
    s3://bucket/prefix without a trailing slash)."""

    text: str                        # as the user gave it
    kind: Literal["local", "s3"]
    root: str
    bucket: str = ""                 # s3 only
    key: str = ""                    # s3 only: the prefix inside the bucket ("" = the bucket's top)


def parse_location(text: str, field: str = "storage") -> Location:
    """The location `text` names, or a ConfigError naming `field`, `text` and what is supported. No I/O."""
    where = f"{field} {text!r}"
    if not text.strip():
        raise ConfigError(f"{where}: empty; storage is {SUPPORTED}")
    if "://" in text:
        scheme, rest = text.split("://", 1)
        if not SCHEME.match(scheme + ":"):
            raise ConfigError(f"{where}: {scheme!r} is not a URI scheme; storage is {SUPPORTED}")
        low = scheme.lower()
        if low in ("s3", "file") and scheme != low:
            raise ConfigError(f"{where}: write the scheme in lower case, {low}://")
        if low in ("gs", "gcs"):
            raise ConfigError(f"{where}: {GCS_HINT}")
        if low == "file":
            if not rest.startswith("/"):
                raise ConfigError(f"{where}: a file:// URI takes an absolute path on this machine, file:///path "
                                  "(three slashes)")
            return _local(text, rest)
        if low != "s3":
            hint = (" (it looks like an MLflow store or a database: that is tracking_uri / --tracking-uri)"
                    if low.split("+", 1)[0] in TRACKING_SCHEMES else "")
            raise ConfigError(f"{where}: unsupported scheme {scheme!r}{hint}; storage is {SUPPORTED}")
        if "?" in rest or "#" in rest:
            raise ConfigError(f"{where}: options in the URI are not supported (the sweep adds folders after it); "
                              "set AWS_ENDPOINT_URL / AWS_DEFAULT_REGION in the environment instead")
        bucket, _, key = rest.partition("/")
        if not bucket:
            raise ConfigError(f"{where}: no bucket; write s3://BUCKET/prefix")
        if not BUCKET.match(bucket):
            raise ConfigError(f"{where}: {bucket!r} is not a valid S3 bucket name (3 to 63 lower-case letters, digits, "
                              "dots or hyphens, starting and ending with a letter or digit)")
        key = key.strip("/")
        if "//" in key:
            raise ConfigError(f"{where}: an empty folder name ('//') inside the key")
        return Location(text, "s3", f"s3://{bucket}" + (f"/{key}" if key else ""), bucket, key)
    first = text.split("/", 1)[0]
    m = SCHEME.match(first)
    if m and len(m.group(1)) > 1:
        scheme = m.group(1)
        remote = (f"write {scheme.lower()}://{text[len(scheme) + 1:].lstrip('/')} for the remote location"
                  if scheme.lower() in ("s3", "file") else f"storage is {SUPPORTED}")
        raise ConfigError(f"{where}: a local path whose first part {first!r} looks like a URI scheme with a slash "
                          f"missing, refused as a likely typo: {remote}; or write ./{text} for a local folder of "
                          "that name")
    return _local(text, text)


def _local(text: str, path: str) -> Location:
    return Location(text, "local", str(Path(os.path.expanduser(path)).resolve()))


def folder_problem(path: Path) -> str | None:
    """Why `path` cannot be (made) a writable folder, looking only: its nearest existing ancestor decides."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder" if existing == path else f"it is under {existing}, a file"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable" if existing == path else f"{existing} (its nearest folder) is not writable"
    return None


def location_problems(text: str, field: str = "storage") -> list[str]:
    """What can be told without the network: the location's syntax and, for a local one, whether its folder can be
    written (looking only). Lines naming `field` and `text`; [] when none."""
    try:
        loc = parse_location(text, field)
    except ConfigError as e:
        return [str(e)]
    if loc.kind == "local":
        p = folder_problem(Path(loc.root))
        if p:
            return [f"{field} {text!r}: {p}"]
    return []


def reach_timeout() -> float:
    """Seconds to wait for a remote storage or tracking server's first answer: REACH_TIMEOUT_ENV, default 10."""
    raw = os.environ.get(REACH_TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_REACH_TIMEOUT_S
    try:
        t = float(raw)
    except ValueError:
        t = math.nan
    if not (math.isfinite(t) and t > 0):
        raise ConfigError(f"{REACH_TIMEOUT_ENV}={raw!r}: expected a number of seconds > 0")
    return t


def check_storage(location: str, timeout_s: float | None = None, field: str = "storage") -> Location:
    """The parsed location once it is known the sweep can use it; else one ConfigError line naming it, within about
    `timeout_s` seconds (None: reach_timeout()). Writes nothing."""
    problems = location_problems(location, field)
    if problems:
        raise ConfigError(problems[0])
    loc = parse_location(location, field)
    if loc.kind == "s3":
        _reach_s3(loc, field, reach_timeout() if timeout_s is None else timeout_s)
    return loc


# --- S3 -----------------------------------------------------------------------------------------------------
def _endpoint() -> str | None:
    """The S3-compatible endpoint pyarrow's FileSystem.from_uri (Tune's storage, sweeps.results) would use."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def _credentials_here() -> bool:
    """Whether this environment names AWS credentials without asking the network (an instance role is not seen)."""
    if any(os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE",
                                       "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI")):
        return True
    files = [os.environ.get("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials"),
             os.environ.get("AWS_CONFIG_FILE", "~/.aws/config")]
    return any(Path(os.path.expanduser(f)).is_file() for f in files)


def _reach_s3(loc: Location, field: str, timeout_s: float) -> None:
    import pyarrow.fs as pafs

    endpoint = _endpoint()
    where = f"{field} {loc.text!r}"
    server = f"the S3 endpoint {endpoint}" if endpoint else "AWS S3"

    def head() -> pafs.FileInfo:
        region = None
        if endpoint is None and not (os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")):
            region = pafs.resolve_s3_region(loc.bucket)  # as FileSystem.from_uri does: one HeadBucket
        # each request bounded; one retry of a dropped connection
        request_s = max(0.5, timeout_s / 4)
        fs = pafs.S3FileSystem(endpoint_override=endpoint, region=region, connect_timeout=request_s,
                               request_timeout=request_s,
                               retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=2))
        return fs.get_file_info(loc.bucket)

    try:
        info = bounded(head, timeout_s)
    except TimeoutError:
        raise ConfigError(f"{where}: no answer from {server} within {timeout_s:g} s (no route to it, or it does not "
                          f"respond; {REACH_TIMEOUT_ENV} sets the wait)") from None
    except OSError as e:
        raise ConfigError(f"{where}: {_s3_reason(str(e), loc, server)}") from None
    if info.type == pafs.FileType.NotFound:
        raise ConfigError(f"{where}: bucket {loc.bucket!r} does not exist at {server} (create it, or check the "
                          "name and AWS_ENDPOINT_URL)")


def _s3_reason(message: str, loc: Location, server: str) -> str:
    """pyarrow's (the AWS SDK's) error as what the user must fix."""
    detail = message.splitlines()[0] if message else "no message"
    # the SDK's own text after "operation:" names the cause (curl's "Could not connect", "Access Denied"); a HEAD
    # request's answer has no body, so then its error code ("AWS Error ACCESS_DENIED", "UNKNOWN (HTTP status 500)")
    cause = detail.split("operation:", 1)[-1].strip()
    code = re.search(r"AWS Error (\w+(?: \(HTTP status \d+\))?)", detail)
    if cause in ("", "No response body.") and code:
        cause = code.group(1)
    cause = cause or detail
    if "NETWORK_CONNECTION" in message or "curlCode" in message:
        return f"cannot reach {server} ({cause})"
    if "not found" in message.lower() or "NoSuchBucket" in message or "RESOURCE_NOT_FOUND" in message:
        return f"bucket {loc.bucket!r} does not exist at {server}"
    if not _credentials_here():
        return (f"{server} refused the request and this environment names no AWS credentials (AWS_ACCESS_KEY_ID, "
                f"AWS_PROFILE, ~/.aws/credentials; or an instance role) ({cause})")
    if "ACCESS_DENIED" in message or "403" in message:
        return f"access denied to bucket {loc.bucket!r} with this environment's AWS credentials ({cause})"
    return f"{server} refused the request ({cause})"


def bounded(fn: Callable[[], object], timeout_s: float):
    """fn() run in a daemon thread; TimeoutError if it has not returned after `timeout_s` (it is left to finish on
    its own: a call inside the AWS SDK cannot be interrupted). fn's exception is re-raised here."""
    out: dict[str, object] = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            out["error"] = e

    t = threading.Thread(target=run, name="storage-check", daemon=True)
    t.start()
    t.join(timeout_s)
    if t.is_alive():
        raise TimeoutError
    if "error" in out:
        raise out["error"]  # type: ignore[misc]
    return out.get("value")
