"""Credentials in a tracking URI never leave the process that needs them: redaction of every print, file, param
and tag the sweep writes, and the real URI handed to trials through the environment. No Ray sweep runs."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mist_core.config import ConfigError, parse_config
from sweep_fixtures import DELETE, config_with
from sweeps.config import SweepConfig, plan

SECRET = "s3cr3t-Pa55"
CRED_URI = f"http://alice:{SECRET}@mlflow.example:5000"


def test_redact_uri():
    from sweeps.tracking import redact_uri, redact_values

    assert redact_uri(CRED_URI) == "http://alice:***@mlflow.example:5000"
    assert redact_uri("https://TOKEN123@host/x") == "https://***@host/x"
    assert redact_uri("http://u:p@ss@host:5000/a") == "http://u:***@host:5000/a"  # "@" in the password
    assert redact_uri("postgresql://u:pw@db/m?sslmode=require&password=pw2") == \
        "postgresql://u:***@db/m?sslmode=require&password=***"
    for plain in ("sqlite:////abs/mlflow.db", "http://host:5000", "s3://bucket/sweeps", "runs/sweeps", "a@b.c"):
        assert redact_uri(plain) == plain
    text = f"--tracking-uri {CRED_URI} --storage s3://KEY:SECRETKEY@bucket/p"
    assert redact_uri(text) == "--tracking-uri http://alice:***@mlflow.example:5000 --storage s3://KEY:***@bucket/p"
    assert redact_values({"a": [CRED_URI, 3], "b": (CRED_URI,), "c": None}) == {
        "a": ["http://alice:***@mlflow.example:5000", 3], "b": ("http://alice:***@mlflow.example:5000",), "c": None}


def _sweep_with_credential(tmp_path, **args):
    import argparse

    from sweeps.driver import Sweep

    cfg = parse_config(SweepConfig, config_with(methods=["trivial"], search__num_samples=1, scheduler=DELETE,
                                          tracking_uri=CRED_URI, storage=str(tmp_path / "runs")))
    argv = ["sweep.yaml", "--tracking-uri", CRED_URI]
    ns = argparse.Namespace(config="sweep.yaml", storage=None, tracking_uri=None, resume=False, fresh=False,
                            argv=argv, **args)
    return cfg, Sweep(plan(cfg), ns)


def test_credentials_are_redacted_in_everything_written(tmp_path, capsys):
    """What becomes sweep.json, the parent run's params and tags, the sweep's part of each trial's spec (as Tune
    carries it) and the progress callback's state hold no credential; the state in memory keeps the real URI."""
    from sweeps import tracking
    from sweeps.progress import say
    from sweeps.store import SWEEP_FILE, stored_state

    cfg, sweep = _sweep_with_credential(tmp_path)
    state = sweep.store.open_state(cfg, resume=False, fresh=False, tracking_uri=None, say=print)
    assert state["tracking_uri"] == CRED_URI  # in memory: the real one, for the driver's clients
    shown = tracking.redact_uri(CRED_URI)
    written = {
        "sweep.json": stored_state(state),
        "parent params": sweep.parent_params(),
        "parent tags": sweep.parent_tags(state),
        "trial ctx": sweep.trial_ctx(state, shown, "1", "parent").model_dump(),
        "progress info": vars(sweep.info),
    }
    for where, data in written.items():
        assert SECRET not in json.dumps(data, default=str), where
    assert written["sweep.json"]["tracking_uri"] == shown
    assert written["parent params"]["tracking_uri"] == shown
    assert written["trial ctx"]["tracking_uri"] == shown
    sweep.store.write_state(state)
    assert SECRET not in (Path(sweep.dir) / SWEEP_FILE).read_text()
    assert SECRET not in sweep._resume_command()
    say(sweep.info, f"MLflow {CRED_URI}")
    assert SECRET not in capsys.readouterr().out
    # a resume gets the real URI back from the command line or the config, never from sweep.json
    again = sweep.store.open_state(cfg, resume=True, fresh=False, tracking_uri=CRED_URI, say=print)
    assert again["tracking_uri"] == CRED_URI and again["uid"] == state["uid"]
    assert sweep.store.open_state(cfg, True, False, None, say=print)["tracking_uri"] == CRED_URI
    with pytest.raises(ConfigError, match="it logs to http://alice:\\*\\*\\*@") as err:
        sweep.store.open_state(cfg, True, False, "http://bob:other@mlflow.example:5000", say=print)
    assert SECRET not in str(err.value) and "other" not in str(err.value)
    no_cred = cfg.replace(tracking_uri="sqlite:///elsewhere.db")
    with pytest.raises(ConfigError, match="credential is not stored; pass it again with --tracking-uri"):
        sweep.store.open_state(no_cred, True, False, None, say=print)


def test_trials_get_the_credential_through_the_environment(monkeypatch):
    from ray.tune.execution import class_cache

    from sweeps import tracking

    monkeypatch.delenv(tracking.URI_ENV, raising=False)
    shown = tracking.redact_uri(CRED_URI)
    with pytest.raises(tracking.TrackingError, match="not in this process's environment") as err:
        tracking.credential_uri(shown)
    assert SECRET not in str(err.value)
    shipped = set(class_cache.ENV_VARS_TO_PROPAGATE)
    assert "AWS_SECRET_ACCESS_KEY" in shipped  # Tune's default: it would copy AWS keys into each trial's runtime env
    with tracking.credential_env(CRED_URI) as uri:
        assert uri == shown
        assert os.environ[tracking.URI_ENV] == CRED_URI  # inherited by the workers of a Ray instance started now
        # ... but never shipped by Tune: Ray's runtime-env agent logs every variable it ships, in plain text
        assert not tracking.SECRET_ENV & class_cache.ENV_VARS_TO_PROPAGATE
        assert tracking.credential_uri(shown) == CRED_URI
        assert tracking.credential_uri("sqlite:////x.db") == "sqlite:////x.db"
    assert tracking.URI_ENV not in os.environ and set(class_cache.ENV_VARS_TO_PROPAGATE) == shipped
    with tracking.credential_env("sqlite:////x.db") as uri:  # nothing to hide: nothing set, AWS keys still withheld
        assert uri == "sqlite:////x.db" and tracking.URI_ENV not in os.environ
        assert not tracking.SECRET_ENV & class_cache.ENV_VARS_TO_PROPAGATE

    def fails():
        raise RuntimeError(f"API request to {CRED_URI}/api/2.0/mlflow/runs/create failed")
    with pytest.raises(tracking.TrackingError) as err:
        tracking._retry(fails)
    assert SECRET not in str(err.value) and "alice:***@" in str(err.value)
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_a_transient_refusal_is_retried_and_others_are_not(monkeypatch):
    """SQLite's "database is locked" and a server's exhausted connection pool (a 400 that wrote nothing) are tried
    again; any other error is raised at once."""
    from sweeps import tracking

    monkeypatch.setattr(tracking.time, "sleep", lambda s: None)
    calls = []

    def flaky(message):
        calls.append(message)
        if len(calls) < 3:
            raise RuntimeError(message)
        return "logged"
    for message in ("database is locked", "RestException: BAD_REQUEST: QueuePool limit of size 5 overflow 10 "
                                          "reached, connection timed out, timeout 30.00"):
        calls.clear()
        assert tracking._retry(flaky, message) == "logged" and len(calls) == 3
    calls.clear()
    with pytest.raises(RuntimeError, match="INVALID_PARAMETER_VALUE"):
        tracking._retry(flaky, "RestException: INVALID_PARAMETER_VALUE: bad metric")
    assert len(calls) == 1


def test_refused_tracking_uri_is_named_without_its_credential(tmp_path):
    """plan() refuses an MLflow URI it cannot use (here an unknown scheme, and a SQLite file under a regular file)
    naming it, redacted."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    for uri, needle in ((f"garbage://alice:{SECRET}@host/x", "unknown scheme 'garbage'"),
                        (f"sqlite:///{blocker}/m.db?password={SECRET}", "is a file, not a folder")):
        with pytest.raises(ConfigError) as err:
            plan(parse_config(SweepConfig, config_with(tracking_uri=uri)))
        assert needle in str(err.value) and SECRET not in str(err.value), str(err.value)
        assert "***" in str(err.value)
