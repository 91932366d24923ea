"""Can this machine run a sweep's plan: its trials' device, its storage folder and its MLflow store.

Looking only (nothing is created): each function returns the problems as lines naming the field, which
sweeps.config.plan gathers into its one ConfigError before Ray or MLflow start.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["device_problems", "where_problems"]

DEVICE = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")


def device_problems(device: str, gpu: float) -> list[str]:
    """A device a trial cannot use: an unknown name, CUDA without a GPU from Ray, a GPU index Ray does not give it,
    MPS on a machine without it. (Whether the cluster has GPUs is checked once Ray is up: sweeps.cluster.)"""
    m = DEVICE.match(device)
    if m is None:
        return [f"train.device={device!r}: unknown device (cpu, cuda, cuda:N or mps)"]
    if device.startswith("cuda"):
        if gpu <= 0:
            return [f"train.device={device!r} but resources.gpu=0: Ray gives a trial no GPU unless it asks for one"]
        visible = max(1, int(gpu))  # Ray shows a trial only its own GPUs, numbered from 0
        index = int(m.group(2)[1:]) if m.group(2) else 0
        if index >= visible:
            return [f"train.device={device!r}: a trial with resources.gpu={gpu:g} sees GPUs 0..{visible - 1} only"]
    if device == "mps":
        import torch

        if not torch.backends.mps.is_available():
            return ["train.device='mps': this machine has no MPS device (torch.backends.mps.is_available() is False)"]
    return []


def where_problems(storage: str, tracking_uri: str, storage_field: str = "storage",
                   uri_field: str = "tracking_uri") -> list[str]:
    """Why the sweep could not write its storage folder or its MLflow store (local paths only: a URI such as
    s3://... or http://... is for its server to judge), or why MLflow would not know the store's URI scheme."""
    from sweeps import tracking

    problems = []
    if "://" not in storage:
        p = _folder_problem(Path(os.path.abspath(os.path.expanduser(storage))))
        if p:
            problems.append(f"{storage_field} {storage!r}: {p}")
    shown = tracking.redact_uri(tracking_uri)
    scheme = tracking_uri.split("://", 1)[0] if "://" in tracking_uri else ""
    known = _mlflow_schemes()
    if scheme and known is not None and scheme.split("+", 1)[0] not in known:
        problems.append(f"{uri_field} {shown!r}: unknown scheme {scheme!r}; MLflow's tracking stores: "
                        f"{', '.join(sorted(k for k in known if k))} (or a local folder)")
        return problems
    uri = tracking.absolute_uri(tracking_uri)
    db = tracking.sqlite_path(uri)
    if db is not None:
        if db.exists() and not db.is_file():
            problems.append(f"{uri_field} {shown!r}: {tracking.redact_uri(str(db))} is not a file")
        else:
            p = _folder_problem(db.parent)
            if p:
                problems.append(f"{uri_field} {shown!r}: {p}")
    elif "://" not in uri and not uri.startswith(("databricks", "uc", "file:")):  # a local folder store
        p = _folder_problem(Path(uri))
        if p:
            problems.append(f"{uri_field} {shown!r}: {p}")
    return problems


def _folder_problem(path: Path) -> str | None:
    """Why `path` cannot be (made) a writable folder, looking only: its nearest existing ancestor decides."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder" if existing == path else f"it is under {existing}, a file"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable" if existing == path else f"{existing} (its nearest folder) is not writable"
    return None


def _mlflow_schemes() -> set[str] | None:
    """The URI schemes MLflow has a tracking store for (plugins included); None if MLflow cannot tell."""
    try:
        from mlflow.tracking._tracking_service.utils import _tracking_store_registry
    except ImportError:
        return None
    return set(getattr(_tracking_store_registry, "_registry", {})) or None
