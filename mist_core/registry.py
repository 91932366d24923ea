"""Methods by name. Adding a method = one new file + one line in BUILTIN.

A name may also be a 'package.module:ClassName' path, so a user's method needs no edit here. Either way the method
is shown by its class's `name` (display_name): result rows, console lines, the report and MLflow tags carry it, so a
plug-in's `name` may not be a registered method's.
"""
from __future__ import annotations

import importlib

from mist_core.method import Method

__all__ = ["BUILTIN", "get_method", "method_names", "display_name"]

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
    """The Method class of a registered name or a 'module:Class' path. KeyError: an unknown name; ImportError: a
    module or class that cannot be imported (naming PYTHONPATH when it is the user's module that is not found)."""
    target = BUILTIN.get(name, name if ":" in name else None)
    if target is None:
        raise KeyError(f"unknown method {name!r}; known: {', '.join(method_names())} (or give module:Class)")
    module, _, attr = target.partition(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name is None or not (module == e.name or module.startswith(e.name + ".")):
            raise   # the module itself imports something missing: its own message says what
        raise ModuleNotFoundError(f"no module named {e.name!r} (method {name}): is the folder that holds it on "
                                  "PYTHONPATH? e.g. PYTHONPATH=. mist-bench ... from that folder",
                                  name=e.name) from None
    cls = getattr(mod, attr, None)
    if cls is None:
        raise ImportError(f"module {module!r} has no {attr!r} (method {name})")
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise TypeError(f"{target} is not a mist_core.method.Method subclass")
    if BUILTIN.get(cls.name, target) != target:   # results would carry one name for two methods
        raise TypeError(f"{target}: its name {cls.name!r} is the registered method {BUILTIN[cls.name]}'s; give the "
                        "class another `name`")
    return cls


def display_name(method: str) -> str:
    """The name a method's results are shown under (rows, console, report, MLflow): its class's `name`, which for a
    registered method is its key and for a 'module:Class' path is whatever the class sets."""
    return get_method(method).name
