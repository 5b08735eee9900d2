"""Typed records to JSON and back: the field types of a dataclass drive both directions.

Writing makes every value JSON-safe (numpy values become lists and scalars, paths strings,
non-finite floats null, named in `non_finite`). Reading checks each field against its type and
refuses unknown fields, so a reader never guesses what a key means.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

from elmbench.errors import ConfigError, ElmbenchError


def to_json(value: Any, where: str, bad: list[str]) -> Any:
    """A JSON-safe copy of `value`; the paths of non-finite floats are appended to `bad`."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: to_json(getattr(value, f.name), _at(where, f.name), bad)
            for f in dataclasses.fields(value)
        }
    if isinstance(value, Mapping):
        return {str(k): to_json(v, _at(where, str(k)), bad) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v, f"{where}[{i}]", bad) for i, v in enumerate(value)]
    if isinstance(value, float) and not math.isfinite(value):
        bad.append(where)
        return None
    if value is None or isinstance(value, (str, int, float)):
        return value
    if isinstance(value, PurePath):
        return str(value)
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return to_json(value.tolist(), where, bad)
    raise ConfigError(f"value at '{where}' of type {type(value).__name__} is not JSON-safe")


def from_json(cls: type, data: Any, where: str) -> Any:
    """An instance of the dataclass `cls` from JSON data, every field checked against its type."""
    return _build(cls, data, where)


def _at(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _build(tp: Any, data: Any, where: str) -> Any:
    if tp is Any:
        return data
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _dataclass(tp, data, where)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if data is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return _build(options[0], data, where)
        return data  # unions of plain types: checked by their users
    if origin is tuple:
        _expect(isinstance(data, list), where, "a list", data)
        item = args[0] if args else Any
        return tuple(_build(item, v, f"{where}[{i}]") for i, v in enumerate(data))
    if origin is dict:
        _expect(isinstance(data, dict), where, "an object", data)
        value_type = args[1] if len(args) == 2 else Any
        return {k: _build(value_type, v, _at(where, k)) for k, v in data.items()}
    if tp is float:
        ok = isinstance(data, (int, float)) and not isinstance(data, bool)
        _expect(ok, where, "a number", data)
        return float(data)
    if tp is int:
        _expect(isinstance(data, int) and not isinstance(data, bool), where, "an integer", data)
        return data
    if tp is bool:
        _expect(isinstance(data, bool), where, "true or false", data)
        return data
    if tp is str:
        _expect(isinstance(data, str), where, "a string", data)
        return data
    raise ConfigError(f"record field '{where}' has an unsupported type {tp!r}")


def _dataclass(cls: type, data: Any, where: str) -> Any:
    _expect(isinstance(data, dict), where or cls.__name__, "an object", data)
    hints = _hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ElmbenchError(
            f"{where or cls.__name__}: unknown field(s) {', '.join(unknown)} for "
            f"{cls.__name__}; fields: {', '.join(known)}"
        )
    values = {}
    for name, field in known.items():
        if name in data:
            values[name] = _build(hints[name], data[name], _at(where, name))
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ElmbenchError(f"{where or cls.__name__}: missing field '{name}'")
    return cls(**values)


def _expect(ok: bool, where: str, what: str, data: Any) -> None:
    if not ok:
        raise ElmbenchError(f"{where}: expected {what}, found {json_type(data)}")


def json_type(data: Any) -> str:
    """The JSON name of a value's type, for messages."""
    if data is None:
        return "null"
    if isinstance(data, bool):
        return "a boolean"
    names: dict[type, str] = {dict: "an object", list: "a list", str: "a string"}
    return names.get(type(data), "a number")
