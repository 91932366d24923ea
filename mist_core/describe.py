"""What a researcher can set: every field of a method's, a dataset's or the training config, read from the pydantic
config classes (type, bounds, description) with its value at each scale preset.

    fields = method_fields("mist")          # [FieldDoc(name="k", type="int", bounds=">= 1", defaults={...}, ...)]
    print(format_fields(fields))

`mist-bench methods NAME`, `mist-bench datasets NAME`, `mist-bench train --help` and sweeps.api print these.
"""
from __future__ import annotations

import sys
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

from pydantic.fields import FieldInfo

from mist_core.config import StrictConfig
from mist_core.method import SCALES, Choice, IntRange, LogUniform, Uniform

__all__ = ["FieldDoc", "config_fields", "method_fields", "dataset_fields", "train_fields", "summary",
           "method_summary", "dataset_summary", "format_fields", "catalogue", "method_help", "dataset_help",
           "train_help", "REQUIRED"]

REQUIRED = "(required)"   # a field with no default (e.g. a data folder): the user gives it


@dataclass(frozen=True)
class FieldDoc:
    name: str
    type: str                   # "int", "float or None", "'none' | 'cosine'", "tuple[float, ...]"
    bounds: str                 # ">= 1", "> 0, <= 1", "length >= 1"; "" when unbounded
    defaults: dict[str, Any]    # scale -> the value that scale's preset gives (REQUIRED where there is none)
    description: str
    search: str = ""            # the sweeper's domain of a tuned method field ("log-uniform 1e-04 .. 3e-03")


def type_name(t: Any) -> str:
    """An annotation as a researcher reads it: int, float or None, 'none' | 'cosine', tuple[float, ...]."""
    origin, args = typing.get_origin(t), typing.get_args(t)
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        inner = [type_name(a) for a in args if a is not type(None)]
        return " | ".join(inner) + (" or None" if type(None) in args else "")
    if origin is tuple:
        return "tuple[" + ", ".join("..." if a is Ellipsis else type_name(a) for a in args) + "]"
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(type_name(a) for a in args)}]"
    return getattr(t, "__name__", str(t))


_BOUNDS = (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))


def bounds(info: FieldInfo) -> str:
    """The field's constraints (pydantic's Field(ge=..., gt=..., min_length=...)) as `>= 1, <= 3`."""
    out = []
    for m in info.metadata:
        for attr, sym in _BOUNDS:
            if getattr(m, attr, None) is not None:
                out.append(f"{sym} {getattr(m, attr)}")
        for attr, sym in (("min_length", ">="), ("max_length", "<=")):
            if getattr(m, attr, None) is not None:
                out.append(f"length {sym} {getattr(m, attr)}")
        if getattr(m, "pattern", None) is not None:
            out.append(f"matches {m.pattern}")
    # Optional[Annotated[float, Field(ge=0)]]: the bounds sit on the inner annotation
    for arg in typing.get_args(info.annotation):
        if typing.get_origin(arg) is typing.Annotated:
            out += [b for x in typing.get_args(arg)[1:] if isinstance(x, FieldInfo) for b in [bounds(x)] if b]
    return ", ".join(out)


def _domain(d: Any) -> str:
    if isinstance(d, LogUniform):
        return f"log-uniform {d.low:g} .. {d.high:g}"
    if isinstance(d, Uniform):
        return f"uniform {d.low:g} .. {d.high:g}"
    if isinstance(d, IntRange):
        return f"integers {d.low} .. {d.high}"
    if isinstance(d, Choice):
        return "one of " + ", ".join(map(repr, d.values))
    return repr(d)


def config_fields(cls: type[StrictConfig], defaults: dict[str, dict[str, Any]],
                  search: dict[str, Any] | None = None) -> list[FieldDoc]:
    """Every field of `cls`, in declaration order, with its value in each of `defaults` (scale -> field values)."""
    out = []
    for name, info in cls.model_fields.items():
        out.append(FieldDoc(name, type_name(info.annotation), bounds(info),
                            {s: d.get(name, REQUIRED) for s, d in defaults.items()}, info.description or "",
                            _domain(search[name]) if search and name in search else ""))
    return out


def _class_defaults(cls: type[StrictConfig]) -> dict[str, Any]:
    return {n: i.get_default(call_default_factory=True) for n, i in cls.model_fields.items() if not i.is_required()}


def method_fields(name: str) -> list[FieldDoc]:
    """The fields of method `name` (registered or 'module:Class'): `-m KEY=VALUE` / method_params keys."""
    cls = _method(name)
    return config_fields(cls.Config, {s: cls.default_config(s).model_dump() for s in SCALES}, cls.search_space())


def _method(name: str) -> type:
    """get_method, its failures as a ConfigError (one line at the command line)."""
    from mist_core.config import ConfigError
    from mist_core.registry import get_method

    try:
        return get_method(name)
    except KeyError as e:
        raise ConfigError(e.args[0]) from None
    except (ImportError, TypeError) as e:
        raise ConfigError(str(e)) from None


def dataset_fields(name: str) -> list[FieldDoc]:
    """The fields of dataset `name`: `-d KEY=VALUE` / dataset_params keys; each scale's preset sets the sizes."""
    from mist_core.config import ConfigError
    from mist_core.data import DATASETS
    from mist_core.presets import DATA_PRESETS

    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    cls = DATASETS[name]
    return config_fields(cls, {s: {**_class_defaults(cls), **DATA_PRESETS[s]} for s in SCALES})


def train_fields() -> list[FieldDoc]:
    """The training fields every run shares: `-t KEY=VALUE` / train_params keys."""
    from mist_core.presets import TRAIN_PRESETS, TrainConfig

    return config_fields(TrainConfig, {s: {**_class_defaults(TrainConfig), **TRAIN_PRESETS[s]} for s in SCALES})


def summary(obj: Any) -> str:
    """The first line of `obj`'s own docstring (a class's: not inherited), else of its module's: what a method or
    dataset is, in a line."""
    for doc in (vars(obj).get("__doc__") if isinstance(obj, type) else obj.__doc__,
                getattr(sys.modules.get(getattr(obj, "__module__", "")), "__doc__", None)):
        if doc and doc.strip():
            return doc.strip().splitlines()[0].strip()
    return ""


def method_summary(name: str) -> str:
    return summary(_method(name))


def _value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, tuple):
        return "(" + ", ".join(_value(x) for x in v) + ("," if len(v) == 1 else "") + ")"
    return str(v)


def format_fields(fields: list[FieldDoc], width: int = 120) -> str:
    """A plain-text table: field, type, bounds, its value at each scale, the search domain (where a field has one),
    then the description (wrapped to fit `width`)."""
    from tabulate import tabulate

    scales = list(fields[0].defaults) if fields else list(SCALES)
    rows = []
    for f in fields:
        vals = [_value(f.defaults[s]) for s in scales]
        rows.append([f.name, f.type, f.bounds, *vals, f.search, f.description])
    head = ["field", "type", "bounds", *scales, "searched", "description"]
    if not any(f.search for f in fields):   # no search space: no empty column
        head.pop(-2)
        rows = [r[:-2] + r[-1:] for r in rows]
    used = max((sum(len(str(c)) for c in r[:-1]) + 2 * (len(r) - 1) for r in rows), default=0)
    return tabulate(rows, head, tablefmt="simple", maxcolwidths=[None] * (len(head) - 1) + [max(30, width - used)])


def dataset_summary(name: str) -> str:
    """Its config class's own docstring's first line, else its generator's module's."""
    from mist_core.data.registry import ENTRIES

    e = ENTRIES[name]
    return summary(e.config) if vars(e.config).get("__doc__") else summary(sys.modules[e.generate.__module__])


def catalogue(kind: str) -> list[str]:
    """`mist-bench methods` / `datasets`: one line per registered name: the name, (a method's tasks,) what it is."""
    if kind == "methods":
        from mist_core.registry import get_method, method_names

        rows = [(n, "/".join(get_method(n).tasks), method_summary(n)) for n in method_names()]
        tail = "a method's fields: mist-bench methods NAME; a method of your own: module:Class wherever a name is taken"
    else:
        from mist_core.data import DATASETS

        rows = [(n, "", dataset_summary(n)) for n in sorted(DATASETS)]
        tail = "a dataset's fields: mist-bench datasets NAME"
    w = max(len(r[0]) for r in rows)
    t = max(len(r[1]) for r in rows)
    return [f"{n:{w}s}  {tasks + ' ' * (t - len(tasks)) + '  ' if t else ''}{what}" for n, tasks, what in rows] + \
        ["", tail]


def method_help(name: str) -> str:
    """`mist-bench methods NAME`: what the method is, its tasks, and every field of its config."""
    from mist_core.registry import BUILTIN

    cls = _method(name)
    where = BUILTIN.get(name, name)
    lines = [f"{cls.name} ({where}): {method_summary(name)}",
             f"tasks: {', '.join(cls.tasks)}" + ("" if cls.learns else "; nothing to learn: one pass over the data"),
             f"fields (train -m KEY=VALUE; api.train(method_params=...); a sweep's overrides: method_params):",
             format_fields(method_fields(name))]
    return "\n".join(lines)


def dataset_help(name: str) -> str:
    """`mist-bench datasets NAME`: what the dataset is and every field of its config."""
    fields = dataset_fields(name)   # refuses an unknown name first
    return "\n".join([f"{name}: {dataset_summary(name)}",
                      "fields (train -d KEY=VALUE; api.train(dataset_params=...); a sweep's overrides: "
                      "dataset_params):",
                      format_fields(fields)])


def train_help() -> str:
    """The training fields (train -t KEY=VALUE) as a table."""
    return format_fields(train_fields())
