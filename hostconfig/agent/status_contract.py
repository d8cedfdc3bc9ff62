"""The agent's two output documents, each defined once and read and written through this definition
(docs/contracts.md §3a):

- ``DaemonState``: ``<state_dir>/daemon-state.json``, written by the failover daemon every second, read by
  `vpnctl status`, `vpnctl metrics`, `vpnctl doctor`, `vpnctl reconcile`/`updown` (a running daemon's view) and the
  delivery's readiness check (``pid``, ``updated_at``).
- ``StatusReport``: `vpnctl status --json`, read by the operator's `python -m hostconfig status` (over SSH).

``to_json()`` gives the JSON object; ``from_json()`` refuses another version, a missing field or a wrong type with a
``ContractError`` naming the document and the field path. Keys a reader does not know are ignored: adding a field is
not a version change, removing, renaming or retyping one is. Stdlib only: it ships in the zipapp and is imported by
the operator's tools without pyroute2.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from hostconfig.contract import codec

from .errors import AgentError

DAEMON_STATE_VERSION = 1
STATUS_VERSION = 1


class ContractError(AgentError, ValueError):
    """A document that is not what this version of the contract says: which document, which field, what was wrong."""


C = TypeVar("C", bound="Record")
D = TypeVar("D", bound="Document")


class Record:
    """JSON (de)serialisation of a dataclass from its type hints, by the contracts' one codec
    (hostconfig/contract/codec.py). A field's JSON key is its name unless the field's metadata says ``{"key": ...}``
    (``from`` is a keyword). Keys a reader does not know are ignored (``Unknown.IGNORE``)."""

    def to_json(self) -> dict[str, Any]:
        return codec.encode(self)

    @classmethod
    def from_json(cls: type[C], data: Any, where: str = "") -> C:
        return codec.decode(cls, data, where or cls.__name__, ContractError, codec.Unknown.IGNORE)


class Document(Record):
    """A top-level document: carries ``version`` and refuses any other before reading a field."""

    VERSION: ClassVar[int]
    TITLE: ClassVar[str]

    @classmethod
    def from_json(cls: type[D], data: Any, where: str = "") -> D:
        if not isinstance(data, dict):
            raise ContractError(f"{cls.TITLE}: expected a JSON object, found {codec.type_name(data)}")
        if "version" not in data:
            raise ContractError(f"{cls.TITLE}: missing field 'version' (this reader knows version {cls.VERSION})")
        if problem := codec.version_problem(data["version"], cls.VERSION):
            raise ContractError(f"{cls.TITLE}: {problem}")
        return codec.decode(cls, data, where or cls.TITLE, ContractError, codec.Unknown.IGNORE)

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def loads(cls: type[D], text: str) -> D:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ContractError(f"{cls.TITLE}: not JSON ({exc})") from None
        return cls.from_json(data)


# ------------------------------------------------------------------------------------------------ daemon state


@dataclass(frozen=True)
class LastRepair(Record):
    at: float  # epoch seconds
    kind: str  # reestablish | dedupe
    reason: str
    deleted_ike_sas: list[int]  # charon unique ids
    deleted_child_sas: list[int]
    initiated: bool
    errors: list[str]  # one per VICI call that failed (empty: all succeeded)


@dataclass(frozen=True)
class RepairRecord(Record):
    """A tunnel's data-path repairs (hostconfig/agent/README.md, "Data-path repair")."""

    total: int  # since the daemon started
    by_kind: dict[str, int]  # kinds that happened
    attempts: int  # since the tunnel was last healthy for RepairPolicy.backoff_reset_seconds (drives the backoff)
    last: LastRepair | None
    waiting: str | None  # why a seen fault is not repaired now
    next_allowed_in_seconds: float  # backoff left (0: none)


@dataclass(frozen=True)
class ProbeHealth(Record):
    """Hysteresis of the probes to one address (a tunnel's AWS inside address, or an extra target)."""

    up: bool
    reason: str
    rtt_seconds: float | None  # last answered probe
    since: float | None  # epoch seconds of the last up/down change
    consecutive_ok: int
    consecutive_miss: int


@dataclass(frozen=True, kw_only=True)
class TunnelState(ProbeHealth):
    """A tunnel's probe health plus what only tunnels have."""

    interface: str
    probe_error: str | None  # why the last probe could not be sent (bind, no route)
    repair: RepairRecord


@dataclass(frozen=True)
class Switch(Record):
    at: float
    from_tunnel: str | None = field(metadata={"key": "from"})
    to_tunnel: str | None = field(metadata={"key": "to"})
    reason: str


@dataclass(frozen=True)
class ReconcileRecord(Record):
    at: float
    routes_only: bool
    seconds: float
    changes: list[str]
    problems: list[str]


@dataclass(frozen=True)
class BgpSteeringState(Record):
    """routing.mode bgp: what the daemon last had the gateway's bgpd advertise per tunnel (hostconfig/agent/bgp.py)."""

    customer_asn: int
    advertise: dict[str, str]  # tunnel -> outbound route-map in force (empty until the first success)
    reason: str
    changes_total: int  # route-map changes applied since the daemon started
    failures_total: int  # vtysh failures (each retried)
    last_error: str | None  # set while the last attempt failed


@dataclass(frozen=True)
class DaemonState(Document):
    VERSION: ClassVar[int] = DAEMON_STATE_VERSION
    TITLE: ClassVar[str] = "daemon state"

    pid: int
    updated_at: float  # epoch seconds; older than state.FRESH_SECONDS means no daemon writes it
    active: str | None  # the tunnel the metric-100 routes use (None: both down, unreachable only)
    reason: str  # why that one
    up: list[str]
    switches_total: int
    repairs_total: int
    last_switch: Switch | None
    tunnels: dict[str, TunnelState]
    extra_targets: dict[str, ProbeHealth]
    vici: str  # the event connection: connected, unreachable: ..., lost: ...
    last_reconcile: ReconcileRecord | None
    link_mode: str  # vti | given
    bgp: BgpSteeringState | None = field(default=None, metadata={codec.OPTIONAL: True})  # routing.mode bgp only
    version: int = DAEMON_STATE_VERSION


# ------------------------------------------------------------------------------------------------ status JSON


@dataclass(frozen=True)
class ProbeView(Record):
    up: bool
    rtt_seconds: float | None
    since: float | None
    reason: str


@dataclass(frozen=True)
class Traffic(Record):
    rx: int  # bytes
    tx: int


@dataclass(frozen=True)
class UpdownRecord(Record):
    verb: str  # PLUTO_VERB of the last updown hook for this tunnel
    at: float


@dataclass(frozen=True)
class TunnelStatus(Record):
    name: str
    interface: str
    role: str  # active | standby | unused (from the kernel's routes)
    primary: bool
    ike_sa: str  # charon's state, NONE, or unknown (charon unreachable)
    child_sa: str
    probe: ProbeView | None  # None: no daemon data
    link: bool
    bytes: Traffic | None  # None: link missing
    last_updown: UpdownRecord | None
    repair: RepairRecord | None  # None: no daemon data


@dataclass(frozen=True)
class DaemonSummary(Record):
    running: bool  # a daemon holds its lock (or, unreadable lock, its state is fresh)
    state_file: str | None  # fresh | stale (running, not written lately) | None (not running)
    state_error: str | None  # the state file exists but is not a daemon state of this version
    updated_at: float | None
    active: str | None
    reason: str | None
    switches_total: int | None
    repairs_total: int | None
    last_switch: Switch | None
    vici: str | None


@dataclass(frozen=True)
class KernelRouting(Record):
    """The agent's routes and rule as the kernel has them; ``error`` set (and the rest empty) when unreadable."""

    error: str | None
    active_interface: list[str]
    standby_interface: list[str]
    leak_protection: bool
    rule: bool
    routes: int


@dataclass(frozen=True)
class BgpStatus(Record):
    """routing.mode bgp: the gateway's BGP sessions as bgpd reports them now, and the daemon's steering."""

    sessions: dict[str, str]  # tunnel -> bgpd's state of its neighbor (Established, Active, ..., or missing)
    error: str | None  # bgpd unreachable through vtysh
    steering: BgpSteeringState | None  # None: no daemon data


@dataclass(frozen=True)
class StatusReport(Document):
    VERSION: ClassVar[int] = STATUS_VERSION
    TITLE: ClassVar[str] = "vpnctl status --json"

    tunnels: list[TunnelStatus]
    daemon: DaemonSummary
    vici: str  # reachable | unreachable (reason)
    kernel: KernelRouting
    bgp: BgpStatus | None = field(default=None, metadata={codec.OPTIONAL: True})  # routing.mode bgp only
    version: int = STATUS_VERSION

    def tunnel(self, name: str) -> TunnelStatus | None:
        return next((t for t in self.tunnels if t.name == name), None)
