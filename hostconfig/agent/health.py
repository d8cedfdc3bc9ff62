"""Pure failover decisions: per-tunnel hysteresis, the choice of the active tunnel, and the health view the one-shot
commands (reconcile, updown) use when no daemon is running. Time is always passed in (tests use a fake clock)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from .desired import TunnelView

log = logging.getLogger(__name__)


@dataclass
class TunnelHealth:
    """Down after ``down_after`` consecutive misses, up after ``up_after`` consecutive successes."""

    name: str
    down_after: int
    up_after: int
    up: bool = False
    consecutive_ok: int = 0
    consecutive_miss: int = 0
    up_since: float | None = None
    changed_at: float | None = None
    last_rtt: float | None = None
    reason: str = "not probed yet"

    def record(self, ok: bool, now: float, rtt: float | None = None) -> bool:
        """Feed one probe result; return True when the verdict flipped."""
        if ok:
            self.consecutive_ok += 1
            self.consecutive_miss = 0
            self.last_rtt = rtt
            if not self.up and self.consecutive_ok >= self.up_after:
                return self._set(True, now, f"{self.consecutive_ok} probe replies in a row")
        else:
            self.consecutive_miss += 1
            self.consecutive_ok = 0
            if self.up and self.consecutive_miss >= self.down_after:
                return self._set(False, now, f"{self.consecutive_miss} probes unanswered in a row")
        return False

    def force_down(self, now: float, reason: str) -> bool:
        """An authoritative signal (the CHILD_SA went down): no need to wait for missed probes."""
        self.consecutive_ok = 0
        return self._set(False, now, reason) if self.up else False

    def presume_up(self, now: float, reason: str) -> None:
        """At daemon start: a tunnel the kernel already routes through is kept until probes say otherwise."""
        self._set(True, now, reason)

    def _set(self, up: bool, now: float, reason: str) -> bool:
        self.up = up
        self.up_since = now if up else None
        self.changed_at = now
        self.reason = reason
        return True

    def healthy_for(self, now: float) -> float:
        return now - self.up_since if self.up and self.up_since is not None else 0.0


@dataclass(frozen=True)
class Decision:
    active: str | None
    reason: str


def choose_active(tunnels: tuple[str, ...], primary: str, health: dict[str, TunnelHealth], current: str | None,
                  now: float, failback_hold: float) -> Decision:
    """Which tunnel carries traffic: keep a healthy one, prefer the primary, fail back only after a hold time."""
    up = [name for name in tunnels if health[name].up]
    if not up:
        return Decision(None, "no tunnel is up")
    if current in up:
        if current == primary:
            return Decision(current, f"{current} (primary) is up")
        if primary in up:
            held = health[primary].healthy_for(now)
            if held >= failback_hold:
                return Decision(primary, f"failback: primary {primary} healthy for {held:.1f}s"
                                         f" (hold {failback_hold:.0f}s)")
            return Decision(current, f"{current} kept: primary {primary} healthy for only {held:.1f}s"
                                     f" of {failback_hold:.0f}s")
        return Decision(current, f"{current} is up, primary {primary} is down")
    if primary in up:
        why = "no active tunnel" if current is None else f"{current} is down"
        return Decision(primary, f"{why}; primary {primary} is up")
    other = up[0]
    why = "no active tunnel" if current is None else f"{current} is down"
    return Decision(other, f"{why}; primary {primary} is down, {other} is up")


def view_for_one_shot(tunnels: tuple[str, ...], primary: str, *, daemon_view: TunnelView | None,
                      vici_up: frozenset[str] | None, kernel_up: frozenset[str], kernel_active: str | None,
                      event: tuple[str, bool] | None = None) -> TunnelView:
    """The health view of ``vpnctl reconcile`` and ``vpnctl updown``.

    A running daemon is authoritative (it probes); without one, the CHILD_SAs charon reports decide, and without charon
    we keep what the kernel routes now. An updown event is applied on top: a down event takes the tunnel out at once;
    an up event counts only when no daemon runs (with a daemon, probes confirm the tunnel before traffic moves).
    No failback damping here: a healthy current tunnel is kept, the daemon does failback.
    """
    if daemon_view is not None:
        up, current = set(daemon_view.up), daemon_view.active
    elif vici_up is not None:
        up, current = set(vici_up), kernel_active
    else:
        up, current = set(kernel_up), kernel_active
    if event is not None:
        name, is_up = event
        if not is_up:
            up.discard(name)
        elif daemon_view is None:
            up.add(name)
    up &= set(tunnels)
    if current in up:
        return TunnelView(frozenset(up), current)
    if primary in up:
        return TunnelView(frozenset(up), primary)
    remaining = [t for t in tunnels if t in up]
    return TunnelView(frozenset(up), remaining[0] if remaining else None)
