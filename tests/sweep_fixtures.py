"""A minimal valid sweep config and helpers to vary it (tests/test_sweeps.py, tests/test_tracking_secrets.py)."""
from __future__ import annotations

import json
from pathlib import Path

import yaml

BASE = {
    "name": "t",
    "task": "recon",
    "scale": "smoke",
    "datasets": ["mnist_hard"],
    "methods": ["trivial", "mist"],
    "seeds": [0, 1],
    "search": {"num_samples": 2, "metric": "rmse", "mode": "min"},
    "scheduler": {"type": "asha", "grace_period": 3, "reduction_factor": 2},
    "resources": {"cpu": 1, "gpu": 0},
}


def write_config(tmp: Path, cfg: dict, name: str = "sweep.yaml") -> Path:
    p = tmp / name
    p.write_text(yaml.safe_dump(cfg))
    return p


def config_with(**changes) -> dict:
    cfg = json.loads(json.dumps(BASE))
    for path, value in changes.items():
        *parents, last = path.split("__")
        d = cfg
        for k in parents:
            d = d.setdefault(k, {})
        if value is DELETE:
            d.pop(last, None)
        else:
            d[last] = value
    return cfg


DELETE = object()


def local_ray_instance(num_cpus: int):
    """A private local Ray instance for a class-scoped fixture (`yield from`); the sweeps under test join it."""
    import ray

    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, logging_level="WARNING")
    try:
        yield
    finally:
        ray.shutdown()
