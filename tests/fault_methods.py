"""Methods for the fault tests (tests/test_cluster_faults.py), named by the sweeps as `fault_methods:Gate` and
`fault_methods:Hog`: trivial's mean image, trained for the whole step budget, which a test can hold at a step (to
inject its fault while trials are mid-run) and which runs out of memory where a test says.

The nodes that run them have this folder on PYTHONPATH and two variables in their environment (their trial
processes inherit it): GATE_ENV, a folder where each step writes the node's name and step (`<node>.step`) and where a
file `hold` holding a step number makes every trial wait at that step until the file is removed; NODE_ENV
(tests/ray_nodes.py), the node's name.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from baselines.trivial import Trivial
from ray_nodes import NODE_ENV

GATE_ENV = "MIST_TEST_GATE"
HOLD_LIMIT_S = 300.0  # a test that never releases its trials fails them instead of hanging


class Gate(Trivial):
    name = "gate"
    learns = True  # the whole step budget, not one pass: a trial lasts long enough to be interrupted

    def train_step(self, batch):
        losses = super().train_step(batch)
        gate = os.environ.get(GATE_ENV)
        if gate:
            step = self.n_seen // len(batch)  # restored with the checkpoint: the trainer's step
            (Path(gate) / f"{os.environ.get(NODE_ENV, 'node')}.step").write_text(str(step))
            hold = Path(gate) / "hold"
            t0 = time.monotonic()
            while _held(hold, step):
                if time.monotonic() - t0 > HOLD_LIMIT_S:
                    raise RuntimeError(f"{hold}: held for more than {HOLD_LIMIT_S:g} s")
                time.sleep(0.05)
        return losses


def _held(hold: Path, step: int) -> bool:
    try:
        return step >= int(hold.read_text() or 0)
    except (FileNotFoundError, ValueError):
        return False


class Hog(Gate):
    """At its second step it asks for far more memory than any machine has: the allocator refuses, as a trial
    whose batch or network does not fit fails (on a GPU: torch.OutOfMemoryError)."""

    name = "hog"

    def train_step(self, batch):
        if self.n_seen // len(batch) == 1:
            torch.empty(1 << 60, dtype=torch.uint8)
        return super().train_step(batch)
