"""Methods by name. Adding a method = one new file + one line in BUILTIN.

A name may also be a 'package.module:ClassName' path, so a user's method needs no edit here.
"""
from __future__ import annotations

import importlib

from mist_core.method import Method

__all__ = ["BUILTIN", "get_method", "method_names"]

BUILTIN: dict[str, str] = {
    "mist": "mist_core.mist:MIST",
    "trivial": "baselines.trivial:Trivial",
    "kmeans": "baselines.kmeans:KMeansFloor",
    "grid": "baselines.grid:Grid",
    "channelwise": "baselines.channelwise:Channelwise",
    "air": "baselines.air:AIR",
    "zhang": "baselines.zhang:Zhang",
    "supervised": "baselines.supervised:Supervised",
    "ptopk": "baselines.ptopk:PerturbedTopK",
    "mist_reach": "baselines.mist_reach:MISTReach",
}


def method_names() -> list[str]:
    return sorted(BUILTIN)


def get_method(name: str) -> type[Method]:
    target = BUILTIN.get(name, name if ":" in name else None)
    if target is None:
        raise KeyError(f"unknown method {name!r}; known: {', '.join(method_names())} (or give 'module:Class')")
    module, _, attr = target.partition(":")
    cls = getattr(importlib.import_module(module), attr)
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise TypeError(f"{target} is not a mist_core.method.Method subclass")
    return cls
