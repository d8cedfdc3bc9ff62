"""A small VICI server for fast tests of the repair path without root: the real wire protocol (the vici package's
Transport/Packet/Message) over socketpairs, in a thread per connection, with charon's answers to list-sas, terminate
(ike-id / child-id) and initiate (child) modelled on an in-memory SA table, and event registration with events sent
by the test (``emit``). Not a charon: no IKE, no timing; the
real-charon tests (test_agent_repair_charon.py) check that charon answers the same commands the same way."""

from __future__ import annotations

import select
import socket
import struct
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vici.protocol import FiniteStream, Message, Packet, Transport


@dataclass
class FakeChild:
    child_id: int
    name: str
    mark: int
    install_time: int = 10
    state: str = "INSTALLED"


@dataclass
class FakeIke:
    ike_id: int
    name: str
    remote_host: str
    children: list[FakeChild] = field(default_factory=list)
    established: int = 10
    state: str = "ESTABLISHED"


class FakeVici:
    def __init__(self) -> None:
        self.ikes: list[FakeIke] = []
        self.commands: list[tuple[str, dict[str, str]]] = []  # every command after list-sas, in order
        self.connections = 0
        self.next_id = 100
        self.remotes: dict[str, tuple[str, int]] = {}  # connection name -> (remote host, mark) for initiate
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []
        self.registrations: list[tuple[Transport, str]] = []  # (connection, event name), in registration order
        self.refused_events: set[str] = set()  # registration answered EVENT_UNKNOWN, as charon for a name it lacks
        self.registered = threading.Condition(self.lock)
        # Commands answered only after release(), as charon answers while it runs an updown hook; how many requests
        # were held, and the most held at one time.
        self.held: frozenset[str] = frozenset()
        self.released = threading.Event()
        self.held_total = 0
        self.held_most = 0
        self.waiting: set[socket.socket] = set()  # connections of held requests whose client still waits

    def add(self, name: str, remote: str, mark: int, children: int = 1, established: int = 10) -> FakeIke:
        with self.lock:
            self.remotes[name] = (remote, mark)
            ike = FakeIke(self._id(), name, remote, established=established)
            ike.children = [FakeChild(self._id(), name, mark, install_time=established) for _ in range(children)]
            self.ikes.append(ike)
            return ike

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id

    # ---- the vici_client.Connector --------------------------------------------------------------------------------

    def connect(self, _path: Path, timeout: float) -> socket.socket:
        client, server = socket.socketpair()
        client.settimeout(timeout)
        self.connections += 1
        thread = threading.Thread(target=self._serve, args=(server,), daemon=True)
        thread.start()
        self.threads.append(thread)
        return client

    def serve_unix(self, path: Path) -> socket.socket:
        """Listen on a unix socket path like charon's, for a daemon in another process; close the result to stop."""
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(path))
        listener.listen(16)

        def accept() -> None:
            while True:
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                self.connections += 1
                threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

        threading.Thread(target=accept, daemon=True).start()
        return listener

    def _serve(self, sock: socket.socket) -> None:
        transport = Transport(sock)
        try:
            while True:
                try:
                    raw = transport.receive()
                except OSError:
                    return
                kind, = struct.unpack("!B", raw[:1])
                name = raw[2:2 + raw[1]].decode()
                body = raw[2 + raw[1]:]
                if kind in (Packet.EVENT_REGISTER, Packet.EVENT_UNREGISTER):
                    with self.registered:
                        if name in self.refused_events:
                            transport.send(struct.pack("!B", Packet.EVENT_UNKNOWN))
                            continue
                        if kind == Packet.EVENT_REGISTER:
                            self.registrations.append((transport, name))
                            self.registered.notify_all()
                        transport.send(struct.pack("!B", Packet.EVENT_CONFIRM))
                elif kind == Packet.CMD_REQUEST:
                    message = {k: v.decode() if isinstance(v, bytes) else v
                               for k, v in Message.deserialize(FiniteStream(body)).items()} if body else {}
                    self._command(transport, name, message)
        except OSError:
            return  # the client went away (e.g. gave up on a held command) before the answer
        finally:
            sock.close()

    def _respond(self, transport: Transport, message: dict[str, Any]) -> None:
        transport.send(struct.pack("!B", Packet.CMD_RESPONSE) + Message.serialize(message))

    def _command(self, transport: Transport, name: str, message: dict[str, str]) -> None:
        if name in self.held:
            sock = transport.socket
            with self.lock:
                # A client that gave up closed its connection before it asked again: counted exactly at each arrival.
                self.waiting = {s for s in self.waiting if not self._client_gone(s)} | {sock}
                self.held_total += 1
                self.held_most = max(self.held_most, len(self.waiting))
            while not self.released.wait(0.05):
                if self._client_gone(sock):  # it gave up (its read timeout): charon still carries the command out
                    break
            with self.lock:
                self.waiting.discard(sock)
            self.released.wait()
        try:
            self._answer(transport, name, message)
        except OSError:
            pass  # the client gave up waiting (its read timeout) and closed the connection

    @property
    def held_now(self) -> int:
        with self.lock:
            return sum(not self._client_gone(s) for s in self.waiting)

    @staticmethod
    def _client_gone(sock: socket.socket) -> bool:
        poller = select.poll()
        poller.register(sock, select.POLLRDHUP)
        return bool(poller.poll(0))

    def _answer(self, transport: Transport, name: str, message: dict[str, str]) -> None:
        if name == "list-sas":
            with self.lock:
                listing = [self._listing(ike) for ike in self.ikes]
            for item in listing:
                event = b"list-sa"
                transport.send(struct.pack("!BB", Packet.EVENT, len(event)) + event + Message.serialize(item))
            self._respond(transport, {})
            return
        with self.lock:
            self.commands.append((name, message))
            if name == "terminate":
                ok = self._terminate(message)
                self._respond(transport, {"success": "yes"} if ok else {"success": "no", "errmsg": "no matching SAs"})
            elif name == "initiate":
                remote, mark = self.remotes[message["child"]]
                ike = FakeIke(self._id(), message["child"], remote, established=0)
                ike.children = [FakeChild(self._id(), message["child"], mark, install_time=0)]
                self.ikes.append(ike)
                self._respond(transport, {"success": "yes"})
            else:
                transport.send(struct.pack("!B", Packet.CMD_UNKNOWN))

    def _terminate(self, message: dict[str, str]) -> bool:
        if "ike-id" in message:
            before = len(self.ikes)
            self.ikes = [i for i in self.ikes if i.ike_id != int(message["ike-id"])]
            return len(self.ikes) < before
        for ike in self.ikes:
            for child in list(ike.children):
                if child.child_id == int(message["child-id"]):
                    ike.children.remove(child)
                    return True
        return False

    @staticmethod
    def _listing(ike: FakeIke) -> dict[str, Any]:
        return {ike.name: {
            "uniqueid": str(ike.ike_id), "state": ike.state, "remote-host": ike.remote_host,
            "established": str(ike.established),
            "child-sas": {f"{c.name}-{c.child_id}": {
                "name": c.name, "uniqueid": str(c.child_id), "state": c.state, "mark-in": f"{c.mark:08x}",
                "install-time": str(c.install_time), "bytes-in": "0", "bytes-out": "0", "spi-out": f"c{c.child_id:07x}",
            } for c in ike.children},
        }}

    def hold(self, *commands: str) -> None:
        """From now on these commands (e.g. "list-sas") are answered only after release(), as charon answers while
        an updown hook runs; a client's read timeout may come first."""
        self.released.clear()
        self.held = frozenset(commands)

    def release(self) -> None:
        self.held = frozenset()
        self.released.set()

    def wait_registered(self, events: int, timeout: float = 10.0) -> None:
        with self.registered:
            if not self.registered.wait_for(lambda: len(self.registrations) >= events, timeout):
                raise TimeoutError(f"{len(self.registrations)} of {events} event registrations after {timeout:g}s")

    def emit(self, event: str, message: dict[str, Any]) -> int:
        """Send an event to every connection registered for it, as charon does; returns how many got it."""
        packet = struct.pack("!BB", Packet.EVENT, len(event)) + event.encode() + Message.serialize(message)
        with self.lock:
            targets = [t for t, name in self.registrations if name == event]
        for transport in targets:
            transport.send(packet)
        return len(targets)

    def hang_up(self) -> None:
        """Close every event connection, as a stopping charon does."""
        with self.lock:
            transports = list({id(t): t for t, _ in self.registrations}.values())
            self.registrations.clear()
        for transport in transports:
            try:
                transport.socket.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # closed already

    def listing(self, ike: FakeIke) -> dict[str, Any]:
        """An SA as list-sa and the updown events carry it."""
        return self._listing(ike)

    def tunnel_ikes(self, name: str) -> list[FakeIke]:
        with self.lock:
            return [i for i in self.ikes if i.name == name]
