"""The effect layer of BGP steering: read and switch the outbound route-maps of the gateway's bgpd through vtysh.

Only the route-maps of the neighbors the agent was given are touched (the ones frr.conf.j2 renders, one per tunnel);
a neighbor already on its route-map gets no command at all, so applying the same steering twice changes nothing.
The daemon's loop never talks to bgpd itself (BgpSteerer: a worker thread does, one call per steering change), and
it talks to bgpd's own vty socket (BgpdVty), not through a vtysh process. FRR re-sends a neighbor's advertisements
itself when its outbound route-map changes (soft reconfiguration out).
"""

from __future__ import annotations

import json
import logging
import socket
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hostconfig import gateway_paths as gp

from .bgp import RouteMapChange, Steering, changes, steer
from .desired import TunnelView
from .vici_worker import ViciWorker

if TYPE_CHECKING:
    from .config import BgpConfig

log = logging.getLogger(__name__)

Runner = Callable[[Sequence[str]], str]  # runs one vtysh command line, returns its stdout; raises FrrError


class FrrError(RuntimeError):
    pass


@dataclass(frozen=True)
class Vtysh:
    """vtysh of one FRR instance: the gateway's (default sockets), or a test's (``vty_socket``: its socket dir)."""

    vty_socket: str | None = None
    binary: str = gp.VTYSH
    timeout: float = 20.0

    def __call__(self, args: Sequence[str]) -> str:
        argv = [self.binary, *(["--vty_socket", self.vty_socket] if self.vty_socket else []), *args]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=self.timeout)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise FrrError(f"vtysh failed: {err}") from err
        # vtysh exits 0 on some refused commands and prints "% ..." instead: both are failures here.
        if done.returncode != 0 or any(line.startswith("%") for line in done.stdout.splitlines()):
            raise FrrError(f"vtysh {' '.join(args)[:200]!r} exit {done.returncode}: "
                           f"{(done.stdout + done.stderr).strip()[:400]}")
        return done.stdout


VTY_END = b"\0\0\0"  # FRR's vty protocol: a daemon ends each reply with three NULs and the command's status byte
CMD_SUCCESS = 0


@dataclass(frozen=True)
class BgpdVty:
    """bgpd's vty socket spoken to directly, with the protocol vtysh itself uses (each command NUL-terminated; each
    reply ends with three NULs and a status byte). Same arguments as Vtysh (``-c`` command pairs, one session).

    Why not vtysh: a vtysh process builds FRR's whole command tree and connects to every daemon before it runs one
    command. Measured: 2.2 s per call in the lab's TCG VM (0.6 s user + 0.5 s sys), 40 ms on the host; the socket
    0.3 ms on the host (bench/bgp_restart_bench.py). In the lab the steering call was most of the AWS -> VLAN
    blackout of a cut (3.16 s: the gateway's detection ~0.6 s, AWS's UPDATE and zebra install within the same
    second in its logs). The commands steering sends are bgpd's alone (route-maps per neighbor, `show bgp
    neighbors`), so bgpd's socket is the only one needed.
    ``vty_socket``: the socket directory (None: frr.service's, /run/frr)."""

    vty_socket: str | None = None
    timeout: float = 20.0

    @classmethod
    def of(cls, bgp: BgpConfig) -> BgpdVty:
        """The gateway's bgpd as agent.json's bgp section names it (the daemon's, status's and doctor's)."""
        return cls(vty_socket=str(bgp.vty_socket) if bgp.vty_socket else None)

    @property
    def path(self) -> str:
        return f"{self.vty_socket or gp.FRR_RUN_DIR}/bgpd.vty"

    def __call__(self, args: Sequence[str]) -> str:
        commands = [args[i + 1] for i in range(0, len(args) - 1, 2) if args[i] == "-c"]
        if len(commands) * 2 != len(args):
            raise FrrError(f"bgpd vty: only -c COMMAND pairs are sent, got {list(args)[:6]!r}")
        out: list[str] = []
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(self.timeout)
                sock.connect(self.path)
                # A new vty starts in view mode; "end" leaves configure mode (its lock) before the socket closes.
                configures = any(c.startswith("conf") for c in commands)
                for command in ["enable", *commands, *(["end"] if configures else [])]:
                    status, text = self._one(sock, command)
                    out.append(text)
                    if status != CMD_SUCCESS or any(line.startswith("%") for line in text.splitlines()):
                        raise FrrError(f"bgpd {command[:200]!r} status {status}: {text.strip()[:400]}")
        except OSError as err:
            raise FrrError(f"bgpd vty {self.path}: {err}") from err
        return "".join(out)

    @staticmethod
    def _one(sock: socket.socket, command: str) -> tuple[int, str]:
        sock.sendall(command.encode() + b"\0")
        reply = b""
        while not (len(reply) >= 4 and reply[-4:-1] == VTY_END):
            chunk = sock.recv(65536)
            if not chunk:
                raise FrrError(f"bgpd closed its vty during {command[:200]!r}")
            reply += chunk
        return reply[-1], reply[:-4].decode(errors="replace")


def _neighbors(run: Runner) -> dict[str, dict]:
    """FRR 8.4's `show bgp neighbors json`: neighbor address -> its facts (other keys, if any, dropped)."""
    text = run(["-c", "show bgp neighbors json"])
    try:
        data = json.loads(text or "{}")
    except ValueError as err:
        raise FrrError(f"vtysh gave no JSON for the neighbors: {text[:200]!r}") from err
    return {address: info for address, info in data.items() if isinstance(info, dict) and "bgpState" in info}


def outbound_route_maps(run: Runner) -> dict[str, str | None]:
    """neighbor address -> its IPv4 unicast outbound route-map (None: none set), as bgpd has them now."""
    return {address: info.get("addressFamilyInfo", {}).get("ipv4Unicast", {}).get("routeMapForOutgoingAdvertisements")
            for address, info in _neighbors(run).items()}


def neighbor_states(run: Runner) -> dict[str, str]:
    """neighbor address -> bgpd's session state (Established, Active, Connect, ...)."""
    return {address: str(info["bgpState"]) for address, info in _neighbors(run).items()}


def apply_steering(steering: Steering, *, asn: int, neighbors: Mapping[str, str], run: Runner,
                   current: Mapping[str, str | None] | None = None) -> list[RouteMapChange]:
    """Bring bgpd to ``steering`` (``neighbors``: tunnel -> AWS's inside address); return the changes made, [] when
    FRR already matched. ``current``: bgpd's outbound route-maps if known (None: read them first, one vtysh call).
    The changes are one vtysh call, in make-before-break order."""
    todo = changes(steering, neighbors, outbound_route_maps(run) if current is None else current)
    if not todo:
        return []
    args = ["-c", "configure terminal", "-c", f"router bgp {asn}", "-c", "address-family ipv4 unicast"]
    for change in todo:
        args += ["-c", f"neighbor {change.neighbor} route-map {change.new.route_map} out"]
    run(args)
    for change in todo:
        log.info("bgp: %s (neighbor %s) now %s (was %s): %s", change.tunnel, change.neighbor, change.new.route_map,
                 change.old, steering.reason)
    return todo


class BgpSteerer:
    """The daemon's BGP steering: on every new health view (and at every periodic full reconcile, which puts back what
    an FRR restart reset to frr.conf's steady state) it applies ``steer`` through vtysh. A failure is logged, counted
    and retried after ``retry_seconds``.

    The loop never waits for vtysh: the decision (``steer``) is made on the loop's thread, the vtysh calls run on a
    worker thread (vici_worker's, in order), and their outcome is taken in on a later round. vtysh is a process that
    connects to every FRR daemon: ~30 ms on the host, several times that under the lab's TCG, and up to its timeout
    when bgpd is busy or restarting; on the loop that stopped the probes for as long. One call per steering change:
    the route-maps bgpd has are remembered from the last read or change, and read again (a second call) only when
    unknown (start, after a failure) or forced (the periodic full reconcile). bgpd changed behind the agent's back (an
    FRR restart) is thus seen at the next forced read, within FULL_RECONCILE_SECONDS, as it was for an unchanged view.
    Sending every neighbor's route-map each time instead is not free: FRR re-sends a neighbor's updates even for its
    unchanged route-map (measured in netns: 3 more UPDATEs per neighbor). At most one call is under way; a view that
    arrives meanwhile is applied when it returned (the newest view wins)."""

    def __init__(self, tunnels: Sequence[str], primary: str, neighbors: Mapping[str, str], asn: int, run: Runner,
                 retry_seconds: float = 1.0):
        self.tunnels = tuple(tunnels)
        self.primary = primary
        self.neighbors = dict(neighbors)
        self.asn = asn
        self.run = run
        self.retry_seconds = retry_seconds
        self.applied: TunnelView | None = None  # the view FRR was last brought to
        self.last: Steering | None = None
        self.changes_total = 0
        self.failures_total = 0
        self.last_error: str | None = None
        self.retry_at = 0.0
        self.worker = ViciWorker("frr-worker")
        self.known: dict[str, str | None] | None = None  # bgpd's outbound route-maps as last read or set
        self.under_way = False
        self.force_pending = False

    def on_view(self, view: TunnelView, now: float, force: bool = False) -> list[RouteMapChange]:
        """Take in the vtysh call that returned, if any, and start the one this view needs, if any; never waits.
        Returns the changes whose call returned since the last round."""
        made = self.take_in(now)
        self.force_pending = self.force_pending or force
        if self.under_way:
            return made
        force, self.force_pending = self.force_pending, False
        if not force and view == self.applied and self.last_error is None:
            return made
        if self.last_error is not None and now < self.retry_at and not force:
            return made
        steering = steer(self.tunnels, self.primary, view)
        known = None if force else self.known
        self.under_way = True
        self.worker.submit(lambda: self._apply(steering, known),
                           lambda made_, at, result, error: self._applied(view, steering, made_, at, result, error))
        return made

    def take_in(self, now: float) -> list[RouteMapChange]:
        made: list[RouteMapChange] = []
        self.worker.finish(made, now)
        return made

    def close(self, timeout: float) -> None:
        """Stopping: let the call under way, if any, return (at most ``timeout``) and take it in."""
        self.worker.close(timeout)
        self.take_in(0.0)

    def _apply(self, steering: Steering, known: Mapping[str, str | None] | None,
               ) -> tuple[list[RouteMapChange], dict[str, str | None]]:
        """On the worker: the vtysh calls; the changes made and bgpd's route-maps after them."""
        current = dict(outbound_route_maps(self.run) if known is None else known)
        made = apply_steering(steering, asn=self.asn, neighbors=self.neighbors, run=self.run, current=current)
        return made, {**current, **{change.neighbor: change.new.route_map for change in made}}

    def _applied(self, view: TunnelView, steering: Steering, made: list[RouteMapChange], now: float,
                 result: tuple[list[RouteMapChange], dict[str, str | None]] | None, error: Exception | None) -> None:
        self.under_way = False
        if error is not None:
            if not isinstance(error, FrrError):
                raise error
            self.known = None  # a half-applied call leaves bgpd unknown: read it again
            self.failures_total += 1
            self.last_error = str(error)
            self.retry_at = now + self.retry_seconds
            log.error("bgp steering not applied (retry in %.0f s): %s", self.retry_seconds, error)
            return
        assert result is not None
        todo, self.known = result
        self.applied, self.last, self.last_error = view, steering, None
        self.changes_total += len(todo)
        made.extend(todo)
