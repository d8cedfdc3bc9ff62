"""The one collecting reader: the stack config, host_config and agent.json are all read through ``Reader``.

A reader walks one JSON/YAML object, records every problem instead of stopping at the first, and names each problem by
its key path, the rule it breaks and an example of a right value. Each layer has its own error type (a subclass of
``ContractError``) and its own key paths (``hybrid-vpn:tunnels.mtu``, ``host_config.tunnel_mtu``, ``mtu``); the checks
come from ``hostconfig.contract.rules``, so the three layers give the same verdict for the same value.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any

from hostconfig.contract import rules
from hostconfig.contract.codec import REQUIRED, Unknown, type_name, unknown_keys  # noqa: F401  (re-exported)
from hostconfig.contract.rules import IntLimit, NamePattern

log = logging.getLogger(__name__)


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


@dataclass(frozen=True)
class Problem:
    key: str
    rule: str
    example: str = ""

    def __str__(self) -> str:
        return f"{self.key}: {self.rule}" + (f"; example: {self.example}" if self.example else "")


class RuleBroken(ValueError):
    """Raised by a conversion for a value breaking ``rule``, optionally with a better example than the list's."""

    def __init__(self, rule: str, example: str | None = None):
        super().__init__(rule)
        self.rule = rule
        self.example = example


class ContractError(ValueError):
    """Every problem found in one input, one per line; each layer names its input in ``subject``."""

    subject = "the input"

    def __init__(self, problems: Sequence[Problem | str], subject: str | None = None):
        self.problems = [str(p) for p in problems]
        if subject is not None:
            self.subject = subject
        count = len(self.problems)
        super().__init__(f"{count} problem{'s' if count != 1 else ''} in {self.subject}:\n"
                         + "\n".join(f"  - {p}" for p in self.problems))


def shown(value: Any) -> str:
    """A value for a message, short (never used for secrets)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def closest(word: str, candidates: Collection[str]) -> str | None:
    match = difflib.get_close_matches(word, sorted(candidates), n=1, cutoff=0.6)
    return match[0] if match else None


class Reader:
    """Reads one object. ``fields``: every known key with its default (``REQUIRED`` when it has none).

    ``null_is_default``: a YAML ``null`` stands for "not set" (the stack config); in JSON contracts it is a wrong value.
    """

    def __init__(self, problems: list[Problem], path: str, raw: Any, fields: Mapping[str, Any], *,
                 unknown: Unknown = Unknown.REFUSE, null_is_default: bool = False, example: str = "{...}",
                 absent: bool = False):
        self.problems = problems
        self.path = path
        self.fields = fields
        self.null_is_default = null_is_default
        self.ok = not absent
        # absent: the object itself is missing or no object, which is reported once; its keys are not reported again.
        self.absent = absent
        if raw is None and null_is_default:
            raw = {}
        if not isinstance(raw, Mapping):
            if not absent:
                self.fail("", f"must be an object (a mapping of keys), got {type_name(raw)} {shown(raw)}", example)
            raw, self.absent = {}, True
        self.raw = raw
        extra = unknown_keys(raw, fields)
        if extra and unknown is Unknown.IGNORE:
            pass
        elif extra and unknown is Unknown.WARN:
            log.warning("%s: ignoring unknown keys %s (known: %s)", self.key(""), ", ".join(sorted(extra)),
                        ", ".join(fields))
        elif extra:
            for key in extra:
                hint = closest(key, fields)
                if hint and self.path.endswith(":"):  # a top-level key is shown with its namespace
                    hint = self.key(hint)
                self.problems.append(Problem(self.key(key), f"unknown key (typo?); known keys: {', '.join(fields)}"
                                             + (f"; did you mean '{hint}'?" if hint else "")))

    # -- paths and problems ------------------------------------------------------------------------------------------
    def key(self, name: str) -> str:
        if not name:
            return self.path.rstrip(":") or "(top level)"
        if not self.path or self.path.endswith(":"):
            return f"{self.path}{name}"
        return f"{self.path}{name}" if name.startswith("[") else f"{self.path}.{name}"

    def fail(self, name: str, rule: str, example: str = "") -> None:
        self.ok = False
        self.problems.append(Problem(self.key(name), rule, example))

    def sub(self, name: str, fields: Mapping[str, Any], *, unknown: Unknown | None = None,
            example: str = "{...}") -> Reader:
        raw = self.get(name, example)
        return Reader(self.problems, self.key(name), {} if raw is MISSING else raw, fields,
                      unknown=Unknown.REFUSE if unknown is None else unknown, null_is_default=self.null_is_default,
                      example=example, absent=raw is MISSING)

    def element(self, name: str, index: int, raw: Any, fields: Mapping[str, Any], *, unknown: Unknown | None = None,
                example: str = "{...}") -> Reader:
        """A reader of the object at ``name[index]`` (a list of objects, e.g. the tunnels)."""
        return Reader(self.problems, self.key(f"{name}[{index}]"), raw, fields,
                      unknown=Unknown.REFUSE if unknown is None else unknown, null_is_default=self.null_is_default,
                      example=example)

    # -- values ------------------------------------------------------------------------------------------------------
    def has(self, name: str) -> bool:
        return name in self.raw and not (self.null_is_default and self.raw[name] is None)

    def get(self, name: str, example: str = "") -> Any:
        """The value, its default, or MISSING after reporting a required key as absent."""
        if self.absent:
            return MISSING
        if self.has(name):
            return self.raw[name]
        default = self.fields.get(name, REQUIRED)
        if default is REQUIRED:
            self.fail(name, "is required", example)
            return MISSING
        return default

    def check(self, name: str, convert: Callable[[Any], Any], rule: str, example: str) -> Any:
        """``convert`` the value (ValueError/TypeError: it breaks ``rule``); None after reporting."""
        value = self.get(name, example)
        if value is MISSING or value is None and self.null_is_default:
            return None
        return self.convert(name, value, convert, rule, example)

    def convert(self, name: str, value: Any, convert: Callable[[Any], Any], rule: str, example: str) -> Any:
        try:
            return convert(value)
        except RuleBroken as broken:
            self.fail(name, broken.rule, broken.example or example)
        except (ValueError, TypeError):
            self.fail(name, f"{shown(value)} is not {rule}", example)
        return None

    def integer(self, name: str, limit: IntLimit) -> int | None:
        value = self.get(name, str(limit.example))
        if value is MISSING or value is None and self.null_is_default:
            return None
        problem = limit.problem(value)
        if problem:
            self.fail(name, problem, str(limit.example))
            return None
        return value

    def limited(self, limit: IntLimit) -> Callable[[Any], int]:
        """A conversion for list items under ``limit`` (``list_of(..., reader.limited(MARK), ...)``)."""

        def convert(value: Any) -> int:
            problem = limit.problem(value)
            if problem:
                raise RuleBroken(problem)
            return value

        return convert

    def string(self, name: str, pattern: NamePattern, example: str | None = None) -> str | None:
        example = pattern.example if example is None else example
        value = self.get(name, example)
        if value is MISSING or value is None and self.null_is_default:
            return None
        problem = pattern.problem(value)
        if problem:
            self.fail(name, problem, example)
            return None
        return value

    def choice(self, name: str, choices: Sequence[Any], rule: str, example: str) -> Any:
        def member(v: Any) -> Any:
            if isinstance(v, bool) or v not in choices:
                raise RuleBroken(f"{shown(v)} is not one of {', '.join(str(c) for c in choices)}: {rule}")
            return v

        return self.check(name, member, rule, example)

    def boolean(self, name: str, example: str) -> bool | None:
        def strict(v: Any) -> bool:
            if not isinstance(v, bool):
                raise TypeError
            return v

        return self.check(name, strict, "true or false", example)

    def ipv4(self, name: str, example: str) -> IPv4Address | None:
        return self.check(name, to_ipv4, "an IPv4 address", example)

    def network(self, name: str, example: str) -> IPv4Network | None:
        return self.check(name, to_network, NETWORK_RULE, example)

    def items(self, name: str, low: int, high: int | None, example: str, why: str = "") -> list | None:
        """A list of ``low``..``high`` items (not yet checked); None after reporting."""
        value = self.get(name, example)
        if value is MISSING or value is None and self.null_is_default:
            return None
        if not isinstance(value, list):
            self.fail(name, f"must be a list, got {type_name(value)} {shown(value)}", example)
            return None
        if len(value) < low or (high is not None and len(value) > high):
            count = f"exactly {low}" if low == high else (f"at least {low}" if high is None else f"{low} to {high}")
            self.fail(name, f"must hold {count} item(s){f' ({why})' if why else ''}, got {len(value)}", example)
            return None
        return value

    def each(self, name: str, values: list, convert: Callable[[Any], Any], rule: str, example: str, *,
             distinct: bool = True) -> tuple | None:
        """Every item converted (ValueError/TypeError: it breaks ``rule``), each once when ``distinct``."""
        out, ok = [], True
        for i, item in enumerate(values):
            converted = self.convert(f"{name}[{i}]", item, convert, rule, example)
            if converted is None:
                ok = False
            else:
                out.append(converted)
        if ok and distinct:
            for i, item in enumerate(out):
                if item in out[:i]:
                    self.fail(f"{name}[{i}]", f"{item} is listed twice (item {out.index(item)} too); list each once",
                              example)
                    ok = False
        return tuple(out) if ok else None

    def list_of(self, name: str, convert: Callable[[Any], Any], rule: str, example: str, low: int = 0,
                high: int | None = None, *, distinct: bool = True, why: str = "") -> tuple | None:
        values = self.items(name, low, high, example, why)
        return None if values is None else self.each(name, values, convert, rule, example, distinct=distinct)


# ---------------------------------------------------------------------------------------------------- conversions
NETWORK_RULE = "an IPv4 network in CIDR form with no host bits set"


def to_ipv4(v: Any) -> IPv4Address:
    if not isinstance(v, str):
        raise TypeError
    return IPv4Address(v)


def to_network(v: Any) -> IPv4Network:
    if not isinstance(v, str):
        raise RuleBroken(f"must be {NETWORK_RULE}, got {type_name(v)} {shown(v)}")
    if "/" not in v:
        raise RuleBroken(f"{shown(v)} is not an IPv4 network in CIDR form: it needs a prefix length")
    try:
        return IPv4Network(v, strict=True)
    except ValueError as exc:
        raise RuleBroken(f"{shown(v)} is not {NETWORK_RULE} ({exc})") from None


def to_interface(v: Any) -> IPv4Interface:
    """An address with its prefix length (``172.16.1.1/24``)."""
    if not isinstance(v, str):
        raise RuleBroken(f"must be an IPv4 address with prefix length, got {type_name(v)} {shown(v)}")
    try:
        address = IPv4Interface(v)
    except ValueError:
        raise RuleBroken(f"{shown(v)} is not an IPv4 address with prefix length") from None
    if "/" not in v:
        raise RuleBroken(f"{shown(v)} needs its prefix length (CIDR form)")
    return address


def ruled(problem: Callable[[Any], str | None], convert: Callable[[Any], Any] = lambda v: v,
          example: str | None = None) -> Callable[[Any], Any]:
    """A conversion: ``convert`` the value, then refuse it with the rule ``problem`` finds (one of rules.py's)."""

    def conversion(v: Any) -> Any:
        value = convert(v)
        if found := problem(value):
            raise RuleBroken(found, example)
        return value

    return conversion


# The values every reader takes with the same rule, converted once here (the readers keep their own key paths).
to_aws_cidr = ruled(rules.aws_cidr_problem, to_network)
to_private_network = ruled(rules.private_network_problem, to_network)  # the VLAN CIDRs and the gateway's subnet
to_vlan_address = ruled(rules.vlan_address_problem, to_interface)
to_inside_cidr = ruled(rules.inside_cidr_problem, to_network, "169.254.10.0/30")
to_ssh_public_key = ruled(lambda v: (problem := rules.ssh_public_key_problem(v))
                          and f"is not an OpenSSH public key line: {problem}",
                          lambda v: v.strip() if isinstance(v, str) else v)
