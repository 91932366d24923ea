"""The sweep's directory on storage, storage/<name>, and what --resume and --fresh do with it.

It holds sweep.json (the sweep's uid, its config, MLflow store and code version: written at the start, compared on a
resume; every URI in it redacted, see sweeps.tracking.redact_uri), best/<dataset>__<method>.json (each search's best
parameters), one Tune experiment per phase and the tidy results.parquet. Storage is a local path, an NFS mount or
s3://... (sweeps.storage; read and written as sweeps.results does).
"""
from __future__ import annotations

import json
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Callable

from mist_core.config import ConfigError
from sweeps import tracking
from sweeps.config import SweepConfig
from sweeps.results import delete_dir, read_bytes, write_atomic
from sweeps.storage import parse_location

__all__ = ["SweepDir", "SWEEP_FILE", "code_version", "storage_root", "join", "stored_state"]

SWEEP_FILE = "sweep.json"
WHERE_KEYS = ("storage", "tracking_uri", "slurm")  # keys a resume may change: where the sweep runs, not what it is


def storage_root(storage: str) -> str:
    """The folder the sweeps of `storage` live in, as sweeps.storage parses it (a ConfigError naming it if it is
    not a location the sweep supports): a local path made absolute, or s3://bucket/prefix."""
    return parse_location(storage).root


def join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts])


def code_version() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty", "--tags"],
                             capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    import mist_core

    return f"mist-bench {mist_core.__version__}"


class SweepDir:
    """storage/<name>: `root` is the storage (made absolute when local), `path` the sweep's directory."""

    def __init__(self, storage: str, name: str):
        self.root = storage_root(storage)
        self.path = join(self.root, name)
        self.discard = False  # --fresh over an existing sweep: deleted by begin(), not by open_state()

    def join(self, *parts: str) -> str:
        return join(self.path, *parts)

    def read_json(self, *parts: str) -> dict | None:
        blob = read_bytes(self.join(*parts))
        return None if blob is None else json.loads(blob)

    def write_json(self, data: dict, *parts: str) -> None:
        write_atomic(self.join(*parts), json.dumps(data, indent=2, sort_keys=True).encode())

    def write_state(self, state: dict[str, Any]) -> None:
        """sweep.json: `state` as stored_state() gives it (no credential)."""
        self.write_json(stored_state(state), SWEEP_FILE)

    def open_state(self, cfg: SweepConfig, resume: bool, fresh: bool, tracking_uri: str | None,
                   say: Callable[[str], None]) -> dict[str, Any]:
        """The sweep's state: the stored one on a resume, else a new one (not written yet). Its tracking_uri is the
        real one (credential included, from --tracking-uri or the config): keep it in memory only.

        An existing sweep without --resume is refused unless `fresh` (it is then deleted by begin(), once everything
        that could still refuse the new sweep has passed); a resume with a changed config (other than WHERE_KEYS) or
        another MLflow store is refused. Nothing is written or deleted here."""
        state = self.read_json(SWEEP_FILE)
        want = cfg.canonical()
        if state is not None and not resume:
            if not fresh:
                raise ConfigError(f"sweep {cfg.name!r} already exists at {self.path} (started "
                                  f"{state.get('created', '?')}): pass --resume to continue it, or --fresh to "
                                  "discard it and start over")
            self.discard = True
            state = None
        if state is not None:
            # sweep.json holds the config redacted: compare redacted with redacted
            old, new = (_what(tracking.redact_values(c)) for c in (state["config"], want))
            changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
            if changed:
                raise ConfigError(f"cannot resume sweep {cfg.name!r} at {self.path}: the config changed "
                                  f"({', '.join(changed)}); restore the old config, or use --fresh / another name")
            return {**state, "tracking_uri": self._resume_uri(cfg, state["tracking_uri"], tracking_uri)}
        if resume:
            say(f"nothing to resume at {self.path}: starting the sweep")
        uri = tracking.absolute_uri(tracking_uri or cfg.tracking_uri)
        return {"uid": uuid.uuid4().hex[:12], "created": time.strftime("%Y-%m-%d %H:%M:%S"), "config": want,
                "tracking_uri": uri, "code_version": code_version()}

    def begin(self) -> None:
        """The sweep starts: an existing one that --fresh replaces is deleted now."""
        if self.discard:
            delete_dir(self.path)
            self.discard = False

    def _resume_uri(self, cfg: SweepConfig, stored: str, given: str | None) -> str:
        """The real MLflow URI of a resumed sweep: the one asked for when it is the stored one (which sweep.json
        keeps redacted), else the stored one when it holds no credential; another store is refused."""
        stored_shown = tracking.redact_uri(stored)  # sweep.json files written before redaction hold the real one
        asked = tracking.absolute_uri(given or cfg.tracking_uri)
        if tracking.redact_uri(asked) == stored_shown:
            return asked
        if given:
            raise ConfigError(f"cannot resume sweep {cfg.name!r}: it logs to {stored_shown}, not "
                              f"{tracking.redact_uri(asked)} (--tracking-uri; its trials' MLflow runs live there)")
        if stored_shown != stored or tracking.REDACTED not in stored:
            return stored  # as before: a resume without --tracking-uri continues in the store it started with
        raise ConfigError(f"cannot resume sweep {cfg.name!r}: it logs to {stored}, whose credential is not stored; "
                          "pass it again with --tracking-uri")


def stored_state(state: dict[str, Any]) -> dict[str, Any]:
    """The state as sweep.json holds it: every URI (tracking_uri, the config's tracking_uri and storage) redacted."""
    return tracking.redact_values(state)


def _what(config: dict[str, Any]) -> dict[str, Any]:
    """A canonical config without WHERE_KEYS."""
    return {k: v for k, v in config.items() if k not in WHERE_KEYS}
