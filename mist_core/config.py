"""Strict configuration base: an unknown key or a wrong type is an error that names it."""
from __future__ import annotations

import difflib
import re
import typing
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

__all__ = ["StrictConfig", "ConfigError", "parse_config", "load_yaml", "parse_overrides", "unknown_key_hint"]

T = TypeVar("T", bound="StrictConfig")


class ConfigError(ValueError):
    """A configuration could not be validated. The message names every bad field."""


class StrictConfig(BaseModel):
    """Base for every config: unknown keys are refused, types are not coerced, instances are frozen."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, validate_default=True)

    def replace(self: T, **changes: Any) -> T:
        """A copy with `changes` applied and validated again."""
        return parse_config(type(self), {**self.model_dump(), **changes}, where=type(self).__name__)


def _format(err: ValidationError, where: str, cls: type[BaseModel] | None = None) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        if e["type"] == "extra_forbidden":
            lines.append(f"{where}.{loc}: unknown key{unknown_key_hint(_model_at(cls, e['loc'][:-1]), e['loc'][-1])}")
        else:
            lines.append(f"{where}.{loc}: {e['msg']} (got {e.get('input')!r})")
    return "invalid config:\n  " + "\n  ".join(lines)


def _model_at(cls: type[BaseModel] | None, loc: tuple) -> type[BaseModel] | None:
    """The config class holding the field at `loc` (a path of field names from `cls`), or None if it is not one."""
    for name in loc:
        if cls is None or name not in cls.model_fields:
            return None
        ann = cls.model_fields[name].annotation
        cls = next((a for a in (ann, *typing.get_args(ann)) if isinstance(a, type) and issubclass(a, BaseModel)), None)
    return cls


def unknown_key_hint(cls: type[BaseModel] | None, key: Any) -> str:
    """'; did you mean X? valid keys: a, b, c' for an unknown `key` of config class `cls` ('' without a class)."""
    if cls is None:
        return ""
    keys = list(cls.model_fields)
    close = difflib.get_close_matches(str(key), keys, n=1, cutoff=0.4)
    return (f"; did you mean {close[0]}?" if close else "") + f" valid keys: {', '.join(keys)}"


def parse_config(cls: type[T], data: Any, where: str = "config") -> T:
    """Validate `data` (a mapping or an instance) into `cls`; raise ConfigError naming the bad fields."""
    if isinstance(data, cls):
        return data
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    try:
        # YAML gives lists where tuples are declared: validate in python (lax on containers only) mode
        return cls.model_validate(_tuples(data))
    except ValidationError as err:
        raise ConfigError(_format(err, where, cls)) from None


def _tuples(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _tuples(v) for k, v in x.items()}
    if isinstance(x, list):
        return tuple(_tuples(v) for v in x)
    return x


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads `1e-5` (no dot) as a string; this loader reads every exponent-notation scalar as a float.

    It also refuses a mapping that names a key twice (plain PyYAML keeps the last one silently)."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._unique_checked: set[int] = set()

    def flatten_mapping(self, node: yaml.MappingNode) -> None:
        # checked here, before merge keys (`<<: *base`) add their pairs: overriding a merged key is allowed
        if id(node) not in self._unique_checked:
            self._unique_checked.add(id(node))
            _refuse_duplicate_keys(self, node)
        super().flatten_mapping(node)


def _refuse_duplicate_keys(loader: yaml.SafeLoader, node: yaml.MappingNode) -> None:
    first: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
            continue
        key = loader.construct_object(key_node)
        line = key_node.start_mark.line + 1
        if key in first:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} on line {line} (first on line {first[key]})", None)
        first[key] = line


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
                              list("-+0123456789."))


def load_yaml(text: str, name: str | None = None) -> Any:
    """yaml.safe_load, except that `1e-5` is the float 1e-05 (as a researcher means it), not the string '1e-5', and a
    key given twice in one mapping is a yaml.YAMLError naming the key and its lines. `name` (a file) goes into
    PyYAML's error marks instead of "<unicode string>"."""
    loader = _Loader(text)  # a SafeLoader subclass: no arbitrary Python objects
    if name is not None:
        loader.name = name
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """['a=1', 'b=[2,3]', 'c=1e-5'] -> {'a': 1, 'b': [2, 3], 'c': 1e-05}: command-line KEY=VALUE, values as YAML."""
    out = {}
    for it in items:
        key, sep, val = it.partition("=")
        if not sep:
            raise ConfigError(f"{it!r}: expected KEY=VALUE")
        try:
            out[key] = load_yaml(val)
        except yaml.YAMLError as e:
            raise ConfigError(f"{it!r}: the value of {key} is not valid YAML: {e}") from None
    return out
