"""MLflow for sweeps: one parent run per sweep, one nested run per trial, found again (by tag) after a resume.

The driver prepares the store once (`prepare`: a fresh SQLite file is created here, before any trial, because two
trials creating it at once raced with "duplicate column name"), opens the sweep's parent run and, at the end,
terminates whatever a killed trial left RUNNING. Each trial logs from inside its own process with an MlflowClient
(`TrialRun`): params = the resolved config (Resolved.as_params()), metrics at every report with their step (a
non-finite value, e.g. the mean IoU of a method that matched nothing, is left out), artifacts = sweeps.artifacts
(example figures at several evaluations, the final predictions as npz). The parent run holds the sweep's config,
its summary over seeds and, once built, its report (`log_sweep_artifacts`).

Ray's MLflowLoggerCallback is not used: after Tuner.restore it opened a second run for a resumed trial and left
the first RUNNING. Here a trial's run is keyed by the tag mist.trial_key = <sweep uid>/<trial id>, which Tune keeps
across restores, so a resumed trial continues its run (tag mist.attempts counts its starts). A resumed trial runs
again the steps between its checkpoint and the interruption; a (metric, step) its run already holds is not logged
again (one value per metric and step, the first).

Credentials: a tracking URI such as http://user:secret@host:5000 is only ever printed, stored or logged as
`redact_uri(uri)` (http://user:***@host:5000). The driver puts the real URI in its environment (URI_ENV) before Ray
starts, and `_client` swaps it in for the redacted one, so Tune's params, result files and MLflow's params and tags
see only the redacted form. No secret travels through Ray: Tune would copy URI_ENV and AWS keys into each trial's
runtime env, whose every variable Ray's runtime-env agent writes to its log on each node (runtime_env_agent.log,
"Creating runtime env: {"env_vars": ...}"). So trials find secrets in the environment their node's processes
inherited: a local instance's workers the driver's; a cluster's nodes that of `ray start` (an instance profile for
S3; URI_ENV, or MLflow's MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD, exported where Ray is started).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

__all__ = ["redact_uri", "redact_values", "credential_uri", "credential_env", "URI_ENV", "SECRET_ENV", "REDACTED",
           "TrackingError",
           "absolute_uri", "sqlite_path", "check_server", "prepare",
           "open_sweep_run", "close_sweep_run", "log_metrics", "TrialRun",
           "trial_key", "find_trial_run", "terminate_if_running", "log_sweep_artifacts", "TAG_SWEEP", "TAG_TRIAL",
           "TAG_ROLE", "TAG_ATTEMPTS"]

TAG_SWEEP = "mist.sweep_uid"
TAG_TRIAL = "mist.trial_key"
TAG_ROLE = "mist.role"          # "sweep" (parent) or "trial"
TAG_ATTEMPTS = "mist.attempts"  # how many times the trial started (1 unless it was resumed or retried)
PARENT_TAG = "mlflow.parentRunId"
NOTE = "mlflow.note.content"                  # the description shown in the UI
EXPERIMENT_KIND = "mlflow.experimentKind"     # MLflow 3's UI: "custom_model_development" = the classic runs view


URI_ENV = "MLFLOW_TRACKING_URI"  # the real (credential-bearing) URI, in the driver's and the trials' environment
REDACTED = "***"


class TrackingError(RuntimeError):
    """An MLflow call failed; the message is redacted (MLflow's own messages may quote the URI with its secret)."""


# --- credentials ----------------------------------------------------------------------------------------
# scheme://user:password@ (the password may hold "@": greedy up to the authority's last "@") or scheme://token@
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:/?#@\s]*)(?::(?P<password>[^/?#\s]*))?@")
_SECRET_PARAM = re.compile(r"(?P<key>[?&;][^=&#\s]*(?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key)"
                           r"[^=&#\s]*=)[^&#\s]*", re.IGNORECASE)


def _userinfo(m: re.Match) -> str:
    if m["password"] is None:  # a lone userinfo (https://TOKEN@host) is usually a token
        return f"{m['scheme']}{REDACTED}@" if m["user"] else m[0]
    return f"{m['scheme']}{m['user']}:{REDACTED}@"


def redact_uri(text: str) -> str:
    """`http://user:secret@host:5000` -> `http://user:***@host:5000`; also `https://TOKEN@host` -> `https://***@host`
    and secret-looking query values (`?password=...`, `token=`, `api_key=`). Works on any text holding URIs
    (messages, command lines); text without credentials comes back unchanged."""
    return _SECRET_PARAM.sub(lambda m: m["key"] + REDACTED, _USERINFO.sub(_userinfo, text))


def redact_values(data: Any) -> Any:
    """`data` (dicts, lists, tuples, strings) with every string passed through redact_uri: what is written or logged."""
    if isinstance(data, str):
        return redact_uri(data)
    if isinstance(data, dict):
        return {k: redact_values(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return type(data)(redact_values(v) for v in data)
    return data


def credential_uri(uri: str) -> str:
    """The real URI behind `uri` (redacted or not): URI_ENV when it redacts to `uri`, else `uri` itself.

    Raises TrackingError when `uri` is redacted and this process's environment does not hold its credential."""
    real = os.environ.get(URI_ENV)
    if real and redact_uri(real) == uri:
        return real
    if redact_uri(uri) != uri or REDACTED not in uri:
        return uri  # no credential in it (or a real one passed in directly)
    raise TrackingError(f"MLflow URI {uri}: its credential is not in this process's environment ({URI_ENV}); on a "
                        f"cluster, export {URI_ENV} with it where `ray start` runs on each node")


# what Tune would copy into each trial's runtime env (and so into Ray's logs): never a secret
SECRET_ENV = frozenset({URI_ENV, "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                        "AWS_SECURITY_TOKEN", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"})


@contextlib.contextmanager
def credential_env(uri: str) -> Iterator[str]:
    """While inside: URI_ENV = `uri` in this process's environment (when `uri` holds a credential), which the
    workers of a Ray instance started inside inherit; Tune ships none of SECRET_ENV to trials (see the module's
    docstring). Yields the redacted URI, the only form to pass on (Tune config, files, prints)."""
    from ray.tune.execution import class_cache

    shown = redact_uri(uri)
    # MLflow prints "View run ... at: <tracking URI>" for HTTP stores: with the credential in it, so not at all
    env = {} if shown == uri else {URI_ENV: uri, "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
    propagate = class_cache.ENV_VARS_TO_PROPAGATE
    withheld = propagate & SECRET_ENV
    before = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    propagate.difference_update(withheld)
    try:
        yield shown
    finally:
        propagate.update(withheld)
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _redacted_errors() -> Iterator[None]:
    """Re-raise an MLflow error whose message quotes a credential as a TrackingError with the message redacted."""
    try:
        yield
    except Exception as e:  # noqa: BLE001 - only re-raised, redacted
        msg = str(e)
        if redact_uri(msg) != msg:
            raise TrackingError(f"{type(e).__name__}: {redact_uri(msg)}") from None  # no cause: it holds the secret
        raise


# --- the store ------------------------------------------------------------------------------------------
def absolute_uri(uri: str, cwd: str | os.PathLike | None = None) -> str:
    """`sqlite:///rel.db` -> `sqlite:////abs/rel.db` against `cwd` (a trial's working dir differs)."""
    base = Path(cwd or os.getcwd())
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str((base / os.path.expanduser(uri[len("sqlite:///"):])).resolve())
    if "://" not in uri and not uri.startswith(("databricks", "file:")):
        return str((base / os.path.expanduser(uri)).resolve())  # a local directory store
    return uri


def sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def check_server(uri: str, timeout_s: float | None = None, field: str = "tracking_uri") -> None:
    """An http(s) store's server asked once, at its /health, before a sweep starts (and at --check): a TrackingError
    line naming it when nothing answers within `timeout_s` (None: sweeps.storage.reach_timeout()). Any HTTP answer
    counts (a proxy's 401 included: MLflow's own calls judge the rest). Other stores are files, checked by
    sweeps.preflight. MLflow's own long retries (minutes) stay for a server that goes away during the sweep."""
    if not uri.startswith(("http://", "https://")):
        return
    import requests

    from sweeps.storage import bounded, reach_timeout

    timeout_s = reach_timeout() if timeout_s is None else timeout_s
    shown = redact_uri(uri)
    try:  # requests' timeout bounds each connect and read, not the name lookup: bounded() bounds the whole
        bounded(lambda: requests.get(f"{uri.rstrip('/')}/health", timeout=timeout_s, allow_redirects=False),
                timeout_s)
    except TimeoutError:
        raise TrackingError(f"{field} {shown}: no MLflow server answered within {timeout_s:g} s (no route to it, or "
                            "it does not respond)") from None
    except requests.RequestException as e:
        why = re.search(r"\[Errno -?\d+\] [^'\")]*|Name or service not known|timed out", str(e))
        raise TrackingError(f"{field} {shown}: no MLflow server answers there ({type(e).__name__}: "
                            f"{why.group(0) if why else redact_uri(str(e))[:200]})") from None


def _client(uri: str):
    """A client of the store `uri` names; a redacted `uri` is swapped for the real one from the environment."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=credential_uri(uri))


# Refusals that wrote nothing and pass: SQLite's one writer busy; a tracking server out of database connections (its
# SQLAlchemy pool, 5 + 10 per worker, waited 30 s: 64 writers on a 2-core server lost 560 of 64,000 points to it).
# MLflow answers the latter with 400 BAD_REQUEST, which its client does not retry.
TRANSIENT = ("database is locked", "queuepool limit")


def _retry(fn: Callable, *args, tries: int = 6, **kwargs):
    """fn(*args, **kwargs), again after 0.2, 0.4, ... 6.4 s on a TRANSIENT refusal. Errors come out redacted."""
    for i in range(tries):
        try:
            with _redacted_errors():
                return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001
            if i == tries - 1 or not any(t in str(e).lower() for t in TRANSIENT):
                raise
            time.sleep(0.2 * 2**i)


def prepare(uri: str, experiment: str) -> str:
    """Create the store (once, here in the driver) and the experiment; return the experiment id."""
    from mlflow.exceptions import MlflowException

    db = sqlite_path(uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    client = _client(uri)
    exp = _retry(client.get_experiment_by_name, experiment)
    if exp is None:
        # artifacts beside a local SQLite file, not in whatever directory the first process happened to run in
        location = (db.parent / "mlruns" / experiment).as_uri() if db is not None else None
        try:
            with _redacted_errors():
                return client.create_experiment(experiment, artifact_location=location)
        except MlflowException:  # created meanwhile by another driver
            exp = _retry(client.get_experiment_by_name, experiment)
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        _retry(client.restore_experiment, exp.experiment_id)
    return exp.experiment_id


def describe_experiment(uri: str, experiment_id: str, note: str) -> None:
    """The experiment's description, and the UI's "Model training" view (MLflow 3 otherwise guesses GenAI)."""
    client = _client(uri)
    _retry(client.set_experiment_tag, experiment_id, EXPERIMENT_KIND, "custom_model_development")
    _retry(client.set_experiment_tag, experiment_id, NOTE, note)


def _find(client, experiment_id: str, tags: dict[str, str]) -> list:
    """Every run of the experiment with these tags (all pages: a sweep may have hundreds of trials)."""
    flt = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    runs, token = [], None
    while True:
        page = _retry(client.search_runs, [experiment_id], filter_string=flt, max_results=1000, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


def _chunks(items: list, n: int) -> Iterable[list]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def _param_str(v: Any) -> str:
    s = v if isinstance(v, str) else json.dumps(v, default=str)
    return s[:6000]


def _log_params(client, run_id: str, params: dict[str, Any], existing: dict[str, str] | None = None) -> None:
    from mlflow.entities import Param

    items = [Param(k, _param_str(v)) for k, v in sorted(params.items()) if not existing or k not in existing]
    for chunk in _chunks(items, 100):
        _retry(client.log_batch, run_id, params=chunk)


def _log_metrics(client, run_id: str, metrics: dict[str, float], step: int) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    # MLflow stores NaN, and its UI charts and compares it as a number: an undefined metric is not logged
    items = [Metric(k, float(v), now, step) for k, v in metrics.items() if math.isfinite(v)]
    for chunk in _chunks(items, 1000):
        _retry(client.log_batch, run_id, metrics=chunk)


def _tag_strs(tags: dict[str, Any]) -> dict[str, str]:
    """Tags as strings; None and "" are left out."""
    return {k: str(v) for k, v in tags.items() if v not in (None, "")}


def open_sweep_run(uri: str, experiment_id: str, sweep_uid: str, name: str, tags: dict[str, str],
                   params: dict[str, Any]) -> str:
    """The sweep's parent run: created on the first start, reopened (RUNNING again) on a resume."""
    client = _client(uri)
    found = _find(client, experiment_id, {TAG_SWEEP: sweep_uid, TAG_ROLE: "sweep"})
    if found:
        run_id = found[0].info.run_id
        _retry(client.update_run, run_id, status="RUNNING")
        return run_id
    run = _retry(client.create_run, experiment_id, run_name=name,
                 tags={**_tag_strs(tags), TAG_SWEEP: sweep_uid, TAG_ROLE: "sweep"})
    _log_params(client, run.info.run_id, params)
    return run.info.run_id


def close_sweep_run(uri: str, experiment_id: str, parent_run_id: str, status: str) -> int:
    """Terminate the parent run; any trial run still RUNNING (its process was killed) becomes KILLED.

    Returns the number of trial runs closed that way."""
    client = _client(uri)
    n = 0
    # by parent: every trial run has it from its creation
    for run in _find(client, experiment_id, {PARENT_TAG: parent_run_id, TAG_ROLE: "trial"}):
        if run.info.status == "RUNNING":
            _retry(client.set_terminated, run.info.run_id, "KILLED")
            n += 1
    _retry(client.set_terminated, parent_run_id, status)
    return n


def log_metrics(uri: str, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    """Log {name: value} on a run (e.g. the sweep's summary on its parent run); non-finite values are left out."""
    _log_metrics(_client(uri), run_id, metrics, step)


def log_sweep_artifacts(uri: str, experiment_id: str, sweep_uid: str, local_dir: str | os.PathLike,
                        artifact_path: str) -> str:
    """Log the files of `local_dir` under `artifact_path` on the sweep's parent run (finished or not); its run id.
    Raises TrackingError when the store holds no parent run of that sweep."""
    client = _client(uri)
    found = _find(client, experiment_id, {TAG_SWEEP: sweep_uid, TAG_ROLE: "sweep"})
    if not found:
        raise TrackingError(f"MLflow {redact_uri(uri)}, experiment {experiment_id}: no run of sweep {sweep_uid}")
    run_id = found[0].info.run_id
    _retry(client.log_artifacts, run_id, str(local_dir), artifact_path)
    return run_id


def trial_key(sweep_uid: str, trial_id: str) -> str:
    """The key of a trial's run (tag TAG_TRIAL): Tune keeps the trial id across restores, the uid tells sweeps apart."""
    return f"{sweep_uid}/{trial_id}"


def find_trial_run(uri: str, experiment_id: str, trial_key: str):
    runs = _find(_client(uri), experiment_id, {TAG_TRIAL: trial_key})
    return runs[0] if runs else None


def terminate_if_running(uri: str, experiment_id: str, trial_key: str, status: str,
                         tags: dict[str, str] | None = None) -> bool:
    """Driver-side backstop when a trial completes/errs: its run must not stay RUNNING. `tags` are set first."""
    run = find_trial_run(uri, experiment_id, trial_key)
    if run is not None and run.info.status == "RUNNING":
        client = _client(uri)
        for k, v in (tags or {}).items():
            _retry(client.set_tag, run.info.run_id, k, v)
        _retry(client.set_terminated, run.info.run_id, status)
        return True
    return False


# --- one trial ------------------------------------------------------------------------------------------
class TrialRun:
    """The MLflow run of one Tune trial, created on its first start and continued after a resume/retry."""

    def __init__(self, uri: str, experiment_id: str, parent_run_id: str, trial_key: str, run_name: str,
                 tags: dict[str, Any], params: dict[str, Any]):
        self.client = _client(uri)
        existing = _find(self.client, experiment_id, {TAG_TRIAL: trial_key})
        if existing:
            run = existing[0]
            self.run_id = run.info.run_id
            self.tags: dict[str, str] = dict(run.data.tags)     # as the earlier attempts left them
            self.attempts = int(run.data.tags.get(TAG_ATTEMPTS, "1")) + 1
            _retry(self.client.update_run, self.run_id, status="RUNNING")
            _retry(self.client.set_tag, self.run_id, TAG_ATTEMPTS, str(self.attempts))
            _log_params(self.client, self.run_id, params, existing=run.data.params)
            # a resumed trial runs again the steps between its checkpoint and the interruption: the values logged
            # then stay the only ones (MLflow would keep both, one (metric, step) with two values)
            self.logged = {k: {m.step for m in _retry(self.client.get_metric_history, self.run_id, k)}
                           for k in run.data.metrics}
        else:
            self.attempts = 1
            all_tags = {**_tag_strs(tags), PARENT_TAG: parent_run_id, TAG_TRIAL: trial_key, TAG_ROLE: "trial",
                        TAG_ATTEMPTS: "1"}
            self.run_id = _retry(self.client.create_run, experiment_id, run_name=run_name, tags=all_tags).info.run_id
            self.tags = dict(all_tags)
            _log_params(self.client, self.run_id, params)
            self.logged: dict[str, set[int]] = {}
        self.status = "RUNNING"

    def log_report(self, report: dict[str, float], step: int) -> None:
        """Log a report's metrics at `step`, except those this run already holds at that step (see __init__)."""
        new = {k: v for k, v in report.items() if k not in ("step", "final") and step not in self.logged.get(k, ())}
        if new:
            _log_metrics(self.client, self.run_id, new, step)
        for k in new:
            self.logged.setdefault(k, set()).add(step)

    def log_figure(self, fig, artifact_file: str) -> None:
        _retry(self.client.log_figure, self.run_id, fig, artifact_file)

    def log_file(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        _retry(self.client.log_artifact, self.run_id, str(path), artifact_path)

    def set_tags(self, tags: dict[str, Any]) -> None:
        for k, v in tags.items():
            _retry(self.client.set_tag, self.run_id, k, str(v))
            self.tags[k] = str(v)

    def finish(self, status: str) -> None:
        if self.status == "RUNNING":
            _retry(self.client.set_terminated, self.run_id, status)
            self.status = status
