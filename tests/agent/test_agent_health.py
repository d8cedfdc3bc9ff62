"""Pure failover logic with a fake clock: hysteresis, choose_active in every case, failback damping."""

from __future__ import annotations

import pytest

from hostconfig.agent.desired import TunnelView
from hostconfig.agent.health import TunnelHealth, choose_active, view_for_one_shot

T = ("tunnel1", "tunnel2")


def health(up1: bool, up2: bool, since1: float = 0.0, since2: float = 0.0) -> dict[str, TunnelHealth]:
    result = {}
    for name, up, since in (("tunnel1", up1, since1), ("tunnel2", up2, since2)):
        h = TunnelHealth(name, down_after=3, up_after=5)
        if up:
            h.presume_up(since, "test")
        result[name] = h
    return result


def test_down_after_n_consecutive_misses_only():
    h = TunnelHealth("t", down_after=3, up_after=5)
    h.presume_up(0.0, "start")
    flips = [h.record(ok, now=float(i)) for i, ok in enumerate([False, False, True, False, False, False])]
    # the success in the middle resets the miss counter: down only at the 3rd miss in a row
    assert flips == [False, False, False, False, False, True]
    assert not h.up and "3 probes unanswered" in h.reason


def test_up_after_m_consecutive_successes_and_rtt_recorded():
    h = TunnelHealth("t", down_after=3, up_after=5)
    results = [True, True, True, True, False, True, True, True, True, True]
    flips = [h.record(ok, float(i), rtt=0.01 * i) for i, ok in enumerate(results)]
    assert flips.index(True) == 9 and h.up and h.up_since == 9.0
    assert h.last_rtt == pytest.approx(0.09)


def test_force_down_is_immediate_and_idempotent():
    h = TunnelHealth("t", 3, 5)
    h.presume_up(0, "start")
    assert h.force_down(1.0, "child down") is True
    assert h.force_down(2.0, "child down again") is False
    assert not h.up and h.changed_at == 1.0


@pytest.mark.parametrize(
    "up1, up2, current, now, expected, why",
    [
        (False, False, None, 100, None, "no tunnel is up"),
        (False, False, "tunnel1", 100, None, "no tunnel is up"),
        (True, True, None, 100, "tunnel1", "primary tunnel1 is up"),
        (True, False, None, 100, "tunnel1", "primary tunnel1 is up"),
        (False, True, None, 100, "tunnel2", "primary tunnel1 is down, tunnel2 is up"),
        (True, True, "tunnel1", 100, "tunnel1", "(primary) is up"),
        (False, True, "tunnel1", 100, "tunnel2", "tunnel1 is down"),
        (True, False, "tunnel2", 100, "tunnel1", "tunnel2 is down; primary tunnel1 is up"),
        (False, True, "tunnel2", 100, "tunnel2", "primary tunnel1 is down"),
        # failback damping: primary up since t=90, hold 20 s
        (True, True, "tunnel2", 100, "tunnel2", "healthy for only 10.0s"),
        (True, True, "tunnel2", 109.9, "tunnel2", "healthy for only 19.9s"),
        (True, True, "tunnel2", 110, "tunnel1", "failback"),
        (True, True, "tunnel2", 500, "tunnel1", "failback"),
    ],
)
def test_choose_active(up1, up2, current, now, expected, why):
    decision = choose_active(T, "tunnel1", health(up1, up2, since1=90.0), current, now, failback_hold=20.0)
    assert decision.active == expected
    assert why in decision.reason


def test_failback_hold_restarts_when_primary_flaps():
    hs = health(False, True)
    primary = hs["tunnel1"]
    clock = 0.0
    for _ in range(5):  # comes up at t=4
        primary.record(True, clock)
        clock += 1
    assert primary.up and primary.up_since == 4.0
    assert choose_active(T, "tunnel1", hs, "tunnel2", 20.0, 20.0).active == "tunnel2"
    for _ in range(3):  # flaps down at t=7
        primary.record(False, clock)
        clock += 1
    assert not primary.up
    for _ in range(5):  # up again at t=12
        primary.record(True, clock)
        clock += 1
    assert choose_active(T, "tunnel1", hs, "tunnel2", 30.0, 20.0).active == "tunnel2"  # only 18 s
    assert choose_active(T, "tunnel1", hs, "tunnel2", 32.0, 20.0).active == "tunnel1"


def test_secondary_as_primary_is_respected():
    decision = choose_active(T, "tunnel2", health(True, True), None, 5, 20)
    assert decision.active == "tunnel2"


@pytest.mark.parametrize(
    "daemon, vici, kernel_up, kernel_active, event, expected",
    [
        # nothing known, no event: nothing is up
        (None, None, frozenset(), None, None, TunnelView(frozenset(), None)),
        # no daemon, no charon: the kernel's routes are kept (an up event for an up tunnel changes nothing)
        (None, None, frozenset(T), "tunnel1", ("tunnel1", True), TunnelView(frozenset(T), "tunnel1")),
        # up event without daemon brings a tunnel in
        (None, None, frozenset(), None, ("tunnel2", True), TunnelView(frozenset({"tunnel2"}), "tunnel2")),
        # down event of the active tunnel moves traffic at once
        (None, None, frozenset(T), "tunnel1", ("tunnel1", False), TunnelView(frozenset({"tunnel2"}), "tunnel2")),
        # charon's view wins over the kernel's
        (None, frozenset({"tunnel2"}), frozenset(T), "tunnel1", None, TunnelView(frozenset({"tunnel2"}), "tunnel2")),
        # current active kept even if it is not the primary (no failback without the daemon)
        (None, frozenset(T), frozenset(T), "tunnel2", None, TunnelView(frozenset(T), "tunnel2")),
        # a running daemon is authoritative; an up event does not override its probes
        (TunnelView(frozenset({"tunnel2"}), "tunnel2"), None, frozenset(T), "tunnel1", ("tunnel1", True),
         TunnelView(frozenset({"tunnel2"}), "tunnel2")),
        # ... but a down event still takes the tunnel out
        (TunnelView(frozenset(T), "tunnel1"), None, frozenset(T), "tunnel1", ("tunnel1", False),
         TunnelView(frozenset({"tunnel2"}), "tunnel2")),
    ],
)
def test_view_for_one_shot(daemon, vici, kernel_up, kernel_active, event, expected):
    view = view_for_one_shot(T, "tunnel1", daemon_view=daemon, vici_up=vici, kernel_up=kernel_up,
                             kernel_active=kernel_active, event=event)
    assert view == expected
