"""Talking to charon over VICI (strongSwan's `vici` package): SA listing and a select()-friendly event stream.

Values arrive as bytes and are decoded here, at the boundary. Charon being down or restarting is normal: callers get
ViciUnavailable and decide (status shows "charon not reachable", the daemon reconnects with backoff).

``ViciClient(endpoint)`` is the one way in: ``endpoint`` is charon's socket path, or a socket already connected to a
VICI server (a test's socketpair or its Unix socket server), so everything here runs without root and without charon
(tests/agent/test_vici_client.py). The module functions (list_sas, terminate_*, initiate_child) are its one-call forms.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
# charon's socket path, or a socket connected to a VICI server
Endpoint = Path | str | socket.socket


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
    spi_in: str | None = None


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
                spi_out=_text(child.get("spi-out")) or None, spi_in=_text(child.get("spi-in")) or None,
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


class ViciCommandFailed(RuntimeError):
    """charon answered a command with success = no (e.g. the SA was gone already)."""


# timeout -1: charon starts the exchange and answers at once. The daemon's select() loop (probes of the other tunnel,
# failover) must not wait for a DELETE to a peer that may not answer (up to the retransmission timeout, ~14 s).
NO_WAIT = "-1"


class ViciClient:
    """The commands the agent sends charon over VICI, and its updown event stream.

    ``endpoint`` a path: each call opens its own connection with ``connect`` (a Unix stream socket, ``timeout``
    seconds for connect and each read) and closes it, so a restarted charon is simply reached again. ``endpoint`` a
    connected socket: every call runs on it in turn (a VICI connection carries one request after another) and the
    caller closes it; ``events()`` takes it over for good (a connection registered for events receives them).
    """

    def __init__(self, endpoint: Endpoint, timeout: float = CONNECT_TIMEOUT, connect: Connector = connect_unix):
        self.endpoint = endpoint if isinstance(endpoint, socket.socket) else Path(endpoint)
        self.timeout = timeout
        self.connect = connect

    @property
    def name(self) -> str:
        """For messages: the socket path, or what the given socket is connected to."""
        if isinstance(self.endpoint, Path):
            return str(self.endpoint)
        try:
            peer = self.endpoint.getpeername()
        except OSError:
            peer = ""
        return f"socket {peer or f'fd {self.endpoint.fileno()}'}"

    @contextmanager
    def _connection(self) -> Iterator[socket.socket]:
        if isinstance(self.endpoint, socket.socket):
            yield self.endpoint
            return
        sock = self.connect(self.endpoint, self.timeout)
        try:
            yield sock
        finally:
            sock.close()

    def list_sas(self) -> list[IkeSa]:
        """All IKE SAs charon knows; ViciUnavailable when charon is not reachable."""
        try:
            with self._connection() as sock:
                sas: list[IkeSa] = []
                for message in vici.Session(sock).list_sas():
                    sas.extend(parse_ike_sas(message))
                return sas
        except (OSError, SessionException) as exc:
            raise ViciUnavailable(f"VICI list-sas on {self.name}: {exc}") from None

    def _command(self, command: str, message: dict[str, Any]) -> None:
        # A plain request, not the package's streamed one: we do not register for control-log, so charon answers with
        # the result only.
        try:
            with self._connection() as sock:
                vici.Session(sock).request(command, message)
        except CommandException as exc:
            raise ViciCommandFailed(f"VICI {command} {message}: {exc}") from None
        except (OSError, SessionException) as exc:
            raise ViciUnavailable(f"VICI {command} on {self.name}: {exc}") from None

    def terminate_ike(self, ike_id: int, force: bool = False) -> None:
        """Delete one IKE_SA (and its CHILD_SAs) with an IKE DELETE to the peer, without waiting for its answer.

        ``force``: destroy it at once instead of after the peer's answer. For a duplicate the peer may no longer have
        (measured: charon kept such an orphan and its CHILD_SA installed for the whole retransmission time, ~14 s, its
        DELETE queued behind an unanswered DPD), so the kernel stops sending on it now.
        """
        message = {"ike-id": str(ike_id), "timeout": NO_WAIT}
        if force:
            message["force"] = "yes"
        self._command("terminate", message)

    def terminate_child(self, child_id: int) -> None:
        """Delete one CHILD_SA (a DELETE in its IKE_SA), without waiting for the peer's answer."""
        self._command("terminate", {"child-id": str(child_id), "timeout": NO_WAIT})

    def initiate_child(self, child: str) -> None:
        """Establish the named CHILD_SA (a new IKE_SA if there is none for its connection), without waiting."""
        self._command("initiate", {"child": child, "timeout": NO_WAIT})

    def events(self) -> ViciEventStream:
        """A connection registered for ike-updown and child-updown, for the caller's select() loop."""
        return ViciEventStream(self.endpoint, self.timeout, self.connect)


def list_sas(path: Endpoint, timeout: float = CONNECT_TIMEOUT, connect: Connector = connect_unix) -> list[IkeSa]:
    return ViciClient(path, timeout, connect).list_sas()


def terminate_ike(path: Endpoint, ike_id: int, force: bool = False, timeout: float = CONNECT_TIMEOUT,
                  connect: Connector = connect_unix) -> None:
    ViciClient(path, timeout, connect).terminate_ike(ike_id, force)


def terminate_child(path: Endpoint, child_id: int, timeout: float = CONNECT_TIMEOUT,
                    connect: Connector = connect_unix) -> None:
    ViciClient(path, timeout, connect).terminate_child(child_id)


def initiate_child(path: Endpoint, child: str, timeout: float = CONNECT_TIMEOUT,
                   connect: Connector = connect_unix) -> None:
    ViciClient(path, timeout, connect).initiate_child(child)


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

    def __init__(self, endpoint: Endpoint, timeout: float = CONNECT_TIMEOUT, connect: Connector = connect_unix):
        """``endpoint``: charon's socket path (connected here with ``connect``), or a connected socket, which the
        stream then owns (close() closes it)."""
        path = endpoint if isinstance(endpoint, socket.socket) else Path(endpoint)
        self.sock = path if isinstance(path, socket.socket) else connect(path, timeout)
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

