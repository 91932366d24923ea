"""Torch's threads for one run: `threads` when given, else OMP_NUM_THREADS, else torch's default (capped at the
usable cores); and the one line `train` prints at its start when the cores it may use are already busy."""
from __future__ import annotations

import logging
import os

import pytest
import torch

from mist_core import _runtime
from mist_core._runtime import busy_cores, default_threads, set_threads, usable_cores

TRAIN = ["train", "--method", "mist", "--dataset", "mnist_hard", "--scale", "smoke"]


@pytest.fixture
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_omp_num_threads_is_the_default(monkeypatch, restore_threads):
    n = usable_cores() + 1                     # not what counting the cores gives
    monkeypatch.setenv("OMP_NUM_THREADS", str(n))
    assert default_threads() == n
    assert set_threads(None) == n and torch.get_num_threads() == n
    monkeypatch.setenv("OMP_NUM_THREADS", f"{n},2")   # OpenMP's nested form: its first level
    assert default_threads() == n


def test_given_threads_win_over_the_environment(monkeypatch, restore_threads):
    monkeypatch.setenv("OMP_NUM_THREADS", str(usable_cores() + 1))
    assert set_threads(1) == 1 and torch.get_num_threads() == 1


def test_without_omp_torchs_default_capped_at_the_usable_cores(monkeypatch, restore_threads):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(_runtime, "_torch_default", usable_cores() + 3)
    assert default_threads() == usable_cores()
    monkeypatch.setattr(_runtime, "_torch_default", 1)
    assert default_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "zero")             # not a count: ignored
    assert default_threads() == 1


def test_train_command_uses_omp_num_threads(monkeypatch, restore_threads, tmp_path):
    from sweeps.cli import main

    n = usable_cores() + 1
    monkeypatch.setenv("OMP_NUM_THREADS", str(n))
    torch.set_num_threads(1)
    assert main(TRAIN + ["-t", "max_steps=1", "-t", "eval_every=1", "--out", str(tmp_path / "r.json")]) == 0
    assert torch.get_num_threads() == n


@pytest.mark.parametrize("threads, load, usable, total, busy", [
    (2, 0.1, 2, 2, None),     # idle machine
    (2, 1.0, 2, 2, 1.0),      # another training on one of the two cores: two threads would contend
    (1, 1.0, 2, 2, None),     # ... one thread still has a core
    (1, 2.0, 2, 2, 2.0),      # both cores taken
    (2, 8.0, 2, 16, 1.0),     # affinity of 2 of 16 cores: its share of the machine's load
    (1, 8.0, 2, 16, None),
])
def test_busy_cores(threads, load, usable, total, busy):
    assert busy_cores(threads, load, usable, total) == busy


def _loadavg(monkeypatch, load):
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    monkeypatch.setattr(os, "cpu_count", lambda: usable_cores())


@pytest.fixture
def no_training(monkeypatch):
    """A Trainer that stops the run where it would make the data: the start alone, in no time."""
    from mist_core.data import DataError

    def stop(*a, **k):
        raise DataError("stopped before the data")
    monkeypatch.setattr("mist_core.train.Trainer", stop)
    return DataError


def test_train_says_once_when_its_cores_are_busy(monkeypatch, no_training, capsys):
    from sweeps.cli import main

    _loadavg(monkeypatch, float(usable_cores()))
    assert main(TRAIN + ["-t", "threads=2"]) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "busy" in ln]
    assert len(lines) == 1 and lines[0].startswith(f"train: the {usable_cores()} cores this process may use are busy")
    assert "asks for 2 threads" in lines[0] and lines[0].endswith("run with `-t threads=1` (or OMP_NUM_THREADS=1)")

    _loadavg(monkeypatch, 0.0)
    assert main(TRAIN + ["-t", "threads=1"]) == 2
    assert "busy" not in capsys.readouterr().err


def test_api_train_says_once_when_its_cores_are_busy(monkeypatch, no_training, caplog):
    from sweeps import api

    _loadavg(monkeypatch, float(usable_cores()))
    with caplog.at_level(logging.WARNING, logger="sweeps.api"), pytest.raises(no_training):
        api.train("mist", "mnist_hard", scale="smoke", train_params={"threads": 2})
    busy = [r.getMessage() for r in caplog.records if "busy" in r.getMessage()]
    assert len(busy) == 1 and "train_params={'threads': 1}" in busy[0]
