"""Named profiler ranges around MIST's pieces, so `torch.profiler` can group a step's time (bench/breakdown.py).

    @profile_range("mist.S")
    def sample_patches(...): ...

    with profiled("mist.task_net"):
        out = self.net(x)

A range is a `torch.profiler.record_function`, opened only while a profiler runs: opening one costs ~18 us even
with no profiler (measured on a busy 2-core machine), while a wrapped call that only checks costs ~1-2 us more than
a bare call. The decorator opens a fresh range per call (`@record_function(name)` would share one instance:
neither re-entrant nor thread-safe).
"""
from __future__ import annotations

import contextlib
import functools
from typing import Callable, ContextManager, TypeVar

import torch
from torch.profiler import record_function

__all__ = ["profiled", "profile_range"]

F = TypeVar("F", bound=Callable)


def profiled(name: str) -> ContextManager:
    """A profiler range named `name` while a profiler runs, else a no-op context."""
    return record_function(name) if torch.autograd._profiler_enabled() else contextlib.nullcontext()


def profile_range(name: str) -> Callable[[F], F]:
    """Decorator: every call of the function runs inside `profiled(name)`."""
    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def ranged(*args, **kwargs):
            with profiled(name):
                return fn(*args, **kwargs)
        return ranged  # type: ignore[return-value]
    return wrap
