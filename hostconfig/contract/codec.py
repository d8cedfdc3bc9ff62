"""One codec between the contracts' dataclasses and their JSON: a field's JSON key, which keys an object has, the
version rule, the unknown-key policy, and the typed decoding and encoding.

Two kinds of readers use it: the collecting reader of inputs (hostconfig/contract/reader.py: the stack config,
host_config, agent.json, whose values also pass rules and whose problems are all listed at once) takes its key
tables, its version rule and its unknown-key policy from here; the agent's output documents
(hostconfig/agent/status_contract.py: the daemon state, the status JSON) are decoded and encoded by
``decode``/``encode`` from their type hints. Before, each had its own hand-written key lists, version check and
unknown-key handling. Stdlib only: the zipapp ships it.
"""

from __future__ import annotations

import dataclasses
import logging
import types
import typing
from collections.abc import Mapping
from enum import Enum
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any, TypeVar, Union

log = logging.getLogger(__name__)

T = TypeVar("T")


class Unknown(Enum):
    """What a reader does with a key it does not know."""

    REFUSE = "refuse"  # a problem (a typo must not be silently ignored: the stack config, agent.json)
    WARN = "warn"  # logged and ignored (host_config: a newer program may add fields)
    IGNORE = "ignore"  # ignored (the agent's output documents: adding a field is not a version change)


REQUIRED: Any = object()  # the default of a key that must be present
# A field with this metadata is written only when it differs from its dataclass default and read as that default when
# absent: a section only some writers have (default None; bgp: routing.mode bgp), or a value added later (agent.json's
# probe.repair_hold_seconds), so every other document stays exactly what it was.
OPTIONAL = "optional"


def _absent_default(f: dataclasses.Field[Any]) -> Any:
    return None if f.default is dataclasses.MISSING else f.default


def json_key(f: dataclasses.Field[Any]) -> str:
    """A field's JSON key: its name unless its metadata says ``{"key": ...}`` (``from`` is a Python keyword)."""
    return str(f.metadata.get("key", f.name))


def field_table(cls: type, defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """JSON key -> default (``REQUIRED`` when the key must be present) for every field of the dataclass ``cls``: the
    key list of an object is its dataclass, written once."""
    defaults = defaults or {}
    return {json_key(f): defaults.get(json_key(f), _absent_default(f) if f.metadata.get(OPTIONAL) else REQUIRED)
            for f in dataclasses.fields(cls)}


def unknown_keys(data: Mapping[str, Any], known: Mapping[str, Any]) -> list[str]:
    return [str(k) for k in data if k not in known]


def version_problem(value: Any, known: int, reader: str = "this reader") -> str | None:
    """The one version rule of every contract: exactly the version the reader knows (a newer or older writer is
    refused, never half-read)."""
    if isinstance(value, bool) or not isinstance(value, int) or value != known:
        return (f"version {value!r} is not the version {reader} knows ({known}); install the same hybrid-vpn release "
                "on both sides")
    return None


def type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "an object"}.get(type(value), type(value).__name__)


# ------------------------------------------------------------------------------------------------------ encoding
_AS_TEXT = (IPv4Address, IPv4Interface, IPv4Network, Path)


def encode(value: Any) -> Any:
    """A dataclass (by its fields' JSON keys), list, tuple, dict or scalar as JSON values; addresses, networks and
    paths as their text."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {json_key(f): encode(getattr(value, f.name)) for f in dataclasses.fields(value)
                if not (f.metadata.get(OPTIONAL) and getattr(value, f.name) == _absent_default(f))}
    if isinstance(value, dict):
        return {str(k): encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode(v) for v in value]
    if isinstance(value, _AS_TEXT):
        return str(value)
    return value


# ------------------------------------------------------------------------------------------------------ decoding
def decode(cls: type[T], data: Any, where: str, error: type[Exception], unknown: Unknown = Unknown.IGNORE) -> T:
    """The dataclass ``cls`` from ``data`` by its type hints; the first wrong value raises ``error`` naming its path
    (``where`` + field keys). Unknown keys: as ``unknown`` says."""
    if not isinstance(data, dict):
        raise error(f"{where}: expected an object, found {type_name(data)}")
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    extra = unknown_keys(data, {json_key(f): f for f in fields})
    if extra and unknown is Unknown.REFUSE:
        raise error(f"{where}.{extra[0]}: unknown key; known keys: {', '.join(json_key(f) for f in fields)}")
    if extra and unknown is Unknown.WARN:
        log.warning("%s: ignoring unknown keys %s", where, ", ".join(sorted(extra)))
    values = {}
    for f in fields:
        key = json_key(f)
        path = f"{where}.{key}"
        if key not in data:
            if f.metadata.get(OPTIONAL):
                values[f.name] = _absent_default(f)
                continue
            raise error(f"{path}: missing field")
        values[f.name] = _value(hints[f.name], data[key], path, error, unknown)
    return cls(**values)


def _value(hint: Any, value: Any, path: str, error: type[Exception], unknown: Unknown) -> Any:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        real = [o for o in options if o is not type(None)]
        if len(real) == 1:
            return _value(real[0], value, path, error, unknown)
        raise TypeError(f"{path}: unions of several types are not part of the contract")  # a definition bug
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return decode(hint, value, path, error, unknown)
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise error(f"{path}: expected a list, found {type_name(value)}")
        item = typing.get_args(hint)[0]
        items = [_value(item, v, f"{path}[{i}]", error, unknown) for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise error(f"{path}: expected an object, found {type_name(value)}")
        _, item = typing.get_args(hint)
        return {k: _value(item, v, f"{path}.{k}", error, unknown) for k, v in value.items()}
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise error(f"{path}: expected a number, found {type_name(value)}")
        return float(value)
    if hint in (int, str, bool):
        if type(value) is not hint:
            raise error(f"{path}: expected {type_name(hint())}, found {type_name(value)} {value!r}"[:300])
        return value
    if hint in _AS_TEXT:
        if not isinstance(value, str):
            raise error(f"{path}: expected a string, found {type_name(value)}")
        try:
            return hint(value)
        except ValueError as exc:
            raise error(f"{path}: {exc}") from None
    raise TypeError(f"{path}: type {hint!r} is not part of the contract")  # a definition bug, not bad input
