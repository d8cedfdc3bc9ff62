"""The effect layer of BGP steering: read and switch the outbound route-maps of the gateway's bgpd through vtysh.

Only the route-maps of the neighbors the agent was given are touched (the ones frr.conf.j2 renders, one per tunnel);
a neighbor already on its route-map gets no command at all, so applying the same steering twice changes nothing.
FRR re-sends a neighbor's advertisements itself when its outbound route-map changes (soft reconfiguration out).
"""

from __future__ import annotations

import json
import logging
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from hostconfig import gateway_paths as gp

from .bgp import RouteMapChange, Steering, changes, steer
from .desired import TunnelView

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


def apply_steering(steering: Steering, *, asn: int, neighbors: Mapping[str, str], run: Runner) -> list[RouteMapChange]:
    """Bring bgpd to ``steering`` (``neighbors``: tunnel -> AWS's inside address); return the changes made, [] when
    FRR already matched. One vtysh call, in make-before-break order."""
    todo = changes(steering, neighbors, outbound_route_maps(run))
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
    and retried after ``retry_seconds`` without blocking the kernel switch, which already happened."""

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

    def on_view(self, view: TunnelView, now: float, force: bool = False) -> list[RouteMapChange]:
        if not force and view == self.applied and self.last_error is None:
            return []
        if self.last_error is not None and now < self.retry_at and not force:
            return []
        steering = steer(self.tunnels, self.primary, view)
        try:
            made = apply_steering(steering, asn=self.asn, neighbors=self.neighbors, run=self.run)
        except FrrError as exc:
            self.failures_total += 1
            self.last_error = str(exc)
            self.retry_at = now + self.retry_seconds
            log.error("bgp steering not applied (retry in %.0f s): %s", self.retry_seconds, exc)
            return []
        self.applied, self.last, self.last_error = view, steering, None
        self.changes_total += len(made)
        return made
