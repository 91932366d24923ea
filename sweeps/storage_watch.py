"""Storage that disappears mid-sweep (deleted, an NFS or bucket mount gone): the sweep stops, and says so in one line.

Without this, every trial would fail at its next checkpoint and again on each retry (Tune cannot restore a
checkpoint that is gone), and the sweep would end suggesting a --resume that cannot work. `StorageWatch` is a Tune
Stopper that ends the whole experiment once the sweep's marker file (its sweep.json, written before the first trial)
is gone, looking at most every CHECK_EVERY_S; `check` raises the one-line error the driver ends with.
"""
from __future__ import annotations

import time

from ray.tune import Stopper

from sweeps.command import CommandError
from sweeps.results import read_bytes

__all__ = ["StorageWatch", "check", "CHECK_EVERY_S"]

CHECK_EVERY_S = 2.0  # Tune asks a stopper after every result: storage (maybe a bucket) is read at most this often


def lost(marker: str) -> bool:
    try:
        return read_bytes(marker) is None
    except OSError:  # an unmounted or unreachable folder reads as gone
        return True


class StorageWatch(Stopper):
    def __init__(self, marker: str):
        self.marker = marker
        self._next = 0.0
        self._lost = False

    def __getstate__(self):  # Tune pickles it with the experiment: a restored one looks afresh
        return {"marker": self.marker}

    def __setstate__(self, state):
        self.__init__(state["marker"])

    def __call__(self, trial_id: str, result: dict) -> bool:
        return self.stop_all()

    def stop_all(self) -> bool:
        if not self._lost and time.monotonic() >= self._next:
            self._next = time.monotonic() + CHECK_EVERY_S
            self._lost = lost(self.marker)
        return self._lost


def check(marker: str, sweep_dir: str) -> None:
    """CommandError (the driver's one line, exit status 2) if the sweep's marker file is gone."""
    if lost(marker):
        raise CommandError(f"storage: the sweep folder {sweep_dir} lost its {marker.rsplit('/', 1)[-1]} during the "
                           "sweep (deleted, or its mount went away); the sweep stopped, as its checkpoints and results "
                           f"can no longer be trusted: remove what is left of {sweep_dir} and start the sweep again")
