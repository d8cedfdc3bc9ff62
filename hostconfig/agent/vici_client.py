"""Talking to charon over VICI (strongSwan's `vici` package): SA listing and a select()-friendly event stream.

Values arrive as bytes and are decoded here, at the boundary. Charon being down or restarting is normal: callers get
ViciUnavailable and decide (status shows "charon not reachable", the daemon reconnects with backoff).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import vici
from vici.exception import CommandException, SessionException
from vici.protocol import Message, Packet, Transport

from .config import AgentConfig
from .health import ChildSaFact, IkeSaFact, TunnelSaFacts

log = logging.getLogger(__name__)

EVENTS = ("ike-updown", "child-updown")
CONNECT_TIMEOUT = 2.0
# A socket connected to charon's VICI: the default opens the configured unix socket; tests pass a fake server's end.
Connector = Callable[[Path, float], socket.socket]


class ViciUnavailable(ConnectionError):
    """charon's VICI socket is missing, refused the connection, or closed it."""


@dataclass(frozen=True)
class ChildSa:
    name: str
    state: str
    mark_in: int | None
    bytes_in: int
    bytes_out: int
    child_id: int | None = None  # charon's unique id (terminate child-id)
    install_time: int | None = None  # seconds since installed
    spi_out: str | None = None


@dataclass(frozen=True)
class IkeSa:
    name: str
    state: str
    remote_host: str | None
    children: tuple[ChildSa, ...]
    ike_id: int | None = None  # charon's unique id (terminate ike-id)
    established: int | None = None  # seconds since established


@dataclass(frozen=True)
class TunnelSaState:
    ike_state: str
    child_state: str
    child_bytes_in: int = 0
    child_bytes_out: int = 0


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


def _int(value: Any, base: int = 10) -> int | None:
    try:
        return int(_text(value), base)
    except ValueError:
        return None


def parse_ike_sas(message: dict[str, Any]) -> list[IkeSa]:
    """Normalise one list-sa event or an updown event payload ({ike name: {...}}) into IkeSa records."""
    result = []
    for name, ike in message.items():
        if not isinstance(ike, dict):
            continue  # e.g. the "up" flag of updown events
        children = []
        for child in (ike.get("child-sas") or {}).values():
            children.append(ChildSa(
                name=_text(child.get("name")), state=_text(child.get("state")),
                mark_in=_int(child.get("mark-in"), 16) if child.get("mark-in") else None,
                bytes_in=_int(child.get("bytes-in")) or 0, bytes_out=_int(child.get("bytes-out")) or 0,
                child_id=_int(child.get("uniqueid")), install_time=_int(child.get("install-time")),
                spi_out=_text(child.get("spi-out")) or None,
            ))
        result.append(IkeSa(name=_text(name), state=_text(ike.get("state")),
                            remote_host=_text(ike.get("remote-host")) or None, children=tuple(children),
                            ike_id=_int(ike.get("uniqueid")), established=_int(ike.get("established"))))
    return result


def tunnel_for_ike(config: AgentConfig, ike: IkeSa) -> str | None:
    """Map an IKE SA to a tunnel: by connection name, else by the remote outside address."""
    for tunnel in config.tunnels:
        if ike.name == tunnel.name:
            return tunnel.name
    for tunnel in config.tunnels:
        if ike.remote_host and ike.remote_host == str(tunnel.remote_outside_ip):
            return tunnel.name
    return None


def tunnel_sa_states(config: AgentConfig, sas: list[IkeSa]) -> dict[str, TunnelSaState]:
    """Per tunnel the best IKE and CHILD SA state (INSTALLED wins over a rekeying duplicate)."""
    rank = {"INSTALLED": 3, "REKEYING": 2, "REKEYED": 1}
    result: dict[str, TunnelSaState] = {}
    for ike in sas:
        name = tunnel_for_ike(config, ike)
        if name is None:
            continue
        mark = config.tunnel(name).mark
        children = [c for c in ike.children if c.mark_in in (None, mark)]
        best = max(children, key=lambda c: rank.get(c.state, 0), default=None)
        state = TunnelSaState(ike.state, best.state if best else "NONE", best.bytes_in if best else 0,
                              best.bytes_out if best else 0)
        old = result.get(name)
        if old is None or (rank.get(state.child_state, 0), state.ike_state == "ESTABLISHED") > (
                rank.get(old.child_state, 0), old.ike_state == "ESTABLISHED"):
            result[name] = state
    return result


def installed_tunnels(config: AgentConfig, sas: list[IkeSa]) -> frozenset[str]:
    return frozenset(name for name, st in tunnel_sa_states(config, sas).items() if st.child_state == "INSTALLED")


def child_counters(sas: list[IkeSa]) -> dict[int, tuple[int, int]]:
    """child id -> (bytes in, bytes out), to tell at the next listing which SAs carry traffic."""
    return {c.child_id: (c.bytes_in, c.bytes_out) for ike in sas for c in ike.children if c.child_id is not None}


def tunnel_sa_facts(config: AgentConfig, sas: list[IkeSa], now: float,
                    previous: dict[int, tuple[int, int]] | None = None) -> dict[str, TunnelSaFacts]:
    """Per tunnel its ESTABLISHED IKE_SAs and their INSTALLED CHILD_SAs, times on the caller's clock, for the repair
    decision; ``previous`` (child_counters of the last listing) tells which CHILD_SAs carried traffic since. SAs
    without charon's unique id cannot be terminated one by one and are left out."""
    previous = previous or {}

    def fact(c: ChildSa) -> ChildSaFact:
        assert c.child_id is not None
        before = previous.get(c.child_id)
        return ChildSaFact(c.child_id, None if c.install_time is None else now - c.install_time,
                           receiving=before is not None and c.bytes_in > before[0],
                           sending=before is not None and c.bytes_out > before[1])

    found: dict[str, list[IkeSaFact]] = {}
    for ike in sas:
        name = tunnel_for_ike(config, ike)
        if name is None or ike.state != "ESTABLISHED" or ike.ike_id is None:
            continue
        mark = config.tunnel(name).mark
        children = tuple(fact(c) for c in ike.children
                         if c.state == "INSTALLED" and c.mark_in in (None, mark) and c.child_id is not None)
        found.setdefault(name, []).append(
            IkeSaFact(ike.ike_id, None if ike.established is None else now - ike.established, children))
    return {name: TunnelSaFacts(tuple(ikes)) for name, ikes in found.items()}


def connect_unix(path: Path, timeout: float) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
    except OSError as exc:
        sock.close()
        raise ViciUnavailable(f"VICI socket {path}: {exc.strerror or exc}") from None
    return sock


def list_sas(path: Path, timeout: float = CONNECT_TIMEOUT, connect: Connector = connect_unix) -> list[IkeSa]:
    """All IKE SAs charon knows; ViciUnavailable when charon is not reachable."""
    sock = connect(path, timeout)
    try:
        session = vici.Session(sock)
        sas: list[IkeSa] = []
        for message in session.list_sas():
            sas.extend(parse_ike_sas(message))
        return sas
    except (OSError, SessionException) as exc:
        raise ViciUnavailable(f"VICI list-sas on {path}: {exc}") from None
    finally:
        sock.close()


class ViciCommandFailed(RuntimeError):
    """charon answered a command with success = no (e.g. the SA was gone already)."""


def _command(path: Path, command: str, message: dict[str, Any], timeout: float, connect: Connector) -> None:
    # A plain request, not the package's streamed one: we do not register for control-log, so charon answers with
    # the result only.
    sock = connect(path, timeout)
    try:
        vici.Session(sock).request(command, message)
    except CommandException as exc:
        raise ViciCommandFailed(f"VICI {command} {message}: {exc}") from None
    except (OSError, SessionException) as exc:
        raise ViciUnavailable(f"VICI {command} on {path}: {exc}") from None
    finally:
        sock.close()


# timeout -1: charon starts the exchange and answers at once. The daemon's select() loop (probes of the other tunnel,
# failover) must not wait for a DELETE to a peer that may not answer (up to the retransmission timeout, ~14 s).
NO_WAIT = "-1"


def terminate_ike(path: Path, ike_id: int, timeout: float = CONNECT_TIMEOUT, connect: Connector = connect_unix) -> None:
    """Delete one IKE_SA (and its CHILD_SAs) with an IKE DELETE to the peer, without waiting for its answer."""
    _command(path, "terminate", {"ike-id": str(ike_id), "timeout": NO_WAIT}, timeout, connect)


def terminate_child(path: Path, child_id: int, timeout: float = CONNECT_TIMEOUT, connect: Connector = connect_unix
                    ) -> None:
    """Delete one CHILD_SA (a DELETE in its IKE_SA), without waiting for the peer's answer."""
    _command(path, "terminate", {"child-id": str(child_id), "timeout": NO_WAIT}, timeout, connect)


def initiate_child(path: Path, child: str, timeout: float = CONNECT_TIMEOUT, connect: Connector = connect_unix) -> None:
    """Establish the named CHILD_SA (a new IKE_SA if there is none for its connection), without waiting."""
    _command(path, "initiate", {"child": child, "timeout": NO_WAIT}, timeout, connect)


@dataclass(frozen=True)
class UpdownEvent:
    kind: str  # "ike-updown" | "child-updown"
    up: bool
    sas: tuple[IkeSa, ...]


class ViciEventStream:
    """A registered VICI event connection whose socket the daemon's select() loop watches.

    Built on the vici package's protocol classes (Transport, Packet, Message) rather than Session.listen(), whose
    blocking generator cannot share one loop with the probe sockets.
    """

    def __init__(self, path: Path, timeout: float = CONNECT_TIMEOUT, connect: Connector = connect_unix):
        self.sock = connect(path, timeout)
        self.transport = Transport(self.sock)
        try:
            for event in EVENTS:
                self.transport.send(Packet.register_event(event))
                while True:
                    reply = Packet.parse(self.transport.receive())
                    if reply.response_type == Packet.EVENT:
                        continue  # an event raced the confirmation: it is before our registration, drop it
                    if reply.response_type != Packet.EVENT_CONFIRM:
                        raise ViciUnavailable(f"VICI refused to register event {event}")
                    break
        except OSError as exc:
            self.close()
            raise ViciUnavailable(f"VICI event registration on {path}: {exc}") from None
        self.sock.settimeout(None)

    def fileno(self) -> int:
        return self.sock.fileno()

    def read_event(self) -> UpdownEvent | None:
        """Read one message (the socket is readable); ViciUnavailable when charon closed the connection."""
        try:
            packet = Packet.parse(self.transport.receive())
        except (OSError, ValueError) as exc:
            raise ViciUnavailable(f"VICI event connection lost: {exc}") from None
        if packet.response_type != Packet.EVENT:
            return None
        kind = _text(packet.event_type)
        message = Message.deserialize(packet.payload)
        return UpdownEvent(kind=kind, up=_text(message.get("up")) == "yes", sas=tuple(parse_ike_sas(message)))

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

