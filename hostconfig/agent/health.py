"""Pure failover decisions: per-tunnel hysteresis, the choice of the active tunnel, and the health view the one-shot
commands (reconcile, updown) use when no daemon is running. Time is always passed in (tests use a fake clock)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from .config import DEFAULT_REPAIR_HOLD_SECONDS
from .desired import TunnelView
from .status_contract import LastRepair

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


# ---- data-path repair ----------------------------------------------------------------------------------------------
#
# The probes can see what IKE cannot: a CHILD_SA that charon (and AWS) consider installed while ESP no longer flows
# (ESP dropped with IKE passing, or crossed initiations that left the kernel sending on an SA the peer does not have).
# AWS's DPD is satisfied by IKE, so AWS keeps sending into such a tunnel forever; deleting its IKE_SA makes AWS mark it
# DOWN and move its return traffic, and initiating the child again rebuilds it. These are the rules for when.

@dataclass(frozen=True)
class ChildSaFact:
    child_id: int
    installed_at: float | None  # on the daemon's clock; None when charon did not say
    # Traffic since the previous listing (a second ago; the probes make some every 100 ms on a live tunnel):
    receiving: bool = False  # bytes in grew: the peer sends on this SA, so the peer has it
    sending: bool = False  # bytes out grew: the kernel sends on this SA


@dataclass(frozen=True)
class IkeSaFact:
    ike_id: int
    established_at: float | None
    children: tuple[ChildSaFact, ...]  # INSTALLED CHILD_SAs of this tunnel only


@dataclass(frozen=True)
class TunnelSaFacts:
    """The ESTABLISHED IKE_SAs of one tunnel with their INSTALLED CHILD_SAs (rekeying ones left out: charon is
    already replacing those)."""

    ikes: tuple[IkeSaFact, ...] = ()

    @property
    def child_installed(self) -> bool:
        return any(ike.children for ike in self.ikes)

    @property
    def duplicated(self) -> bool:
        return len(self.ikes) > 1 or sum(len(ike.children) for ike in self.ikes) > 1


def replacement_installed(known: TunnelSaFacts, came_up: frozenset[int], whole_ike_sa: bool, going_ike_id: int | None,
                          going_child_ids: frozenset[int]) -> bool:
    """A down event (an IKE_SA, or CHILD_SAs of one) for a tunnel: does another INSTALLED CHILD_SA of the tunnel
    remain (a reauthentication's or a duplicate's), so that the event must not fail the tunnel over?

    Decided from what the daemon already knows: ``known``, the repair check's last listing (at most a second old),
    and ``came_up``, the CHILD_SAs child-updown reported up since. Never by asking charon at that moment: charon answers
    VICI only once the SA going down is checked in again, after its updown hook ran (seconds on a loaded machine), and
    that question blocked the daemon's loop twice per DELETE (the lab's maintenance with DELETE: 4.1 s gateway -> AWS,
    worse than the probes alone). A stale listing errs towards "remains" (an SA rekeyed away since still counts): then
    the probes decide, as without the event.
    """
    others = {c.child_id for ike in known.ikes for c in ike.children
              if not (whole_ike_sa and ike.ike_id == going_ike_id) and c.child_id not in going_child_ids}
    return bool(others | (came_up - going_child_ids))


@dataclass(frozen=True)
class RepairPolicy:
    """Defaults, and why:

    hold 5 s: an IKE exchange that lost one message completes at charon's second retransmission (2 s + 2.8 s = 4.8 s
    with the rendered retransmit settings), so a CHILD_SA rekey or a short loss burst heals itself before we act; and
    the probes (~0.3-0.6 s to say down) plus 5 s stay an order of magnitude below AWS's DPD (30-40 s), which in the
    ESP-dead case never fires at all.
    settle 20 s: one repair at a time; after a repair nothing else is repaired until the repaired tunnel answers
    probes or this long has passed (DELETE, IKE_SA_INIT and IKE_AUTH with retransmissions 2 + 2.8 + 3.9 s, plus the
    probes' up_after).
    backoff 20 s doubling to 300 s: a repair that did not help (the cause is elsewhere, e.g. ESP filtered upstream)
    is retried, at most every 5 minutes in the end, each costing a few hundred ms of an already dead tunnel.
    backoff reset 15 s: a tunnel that answered probes this long after a repair was healed by it, and its next fault
    is a new one, repaired after the hold alone. A longer window makes a fault that follows a healed one inherit the
    old backoff: after an endpoint replacement took 3 repairs, an ESP-dead tunnel AWS sends on waited out 80 s of
    backoff, and AWS -> gateway stayed dark all that time (AWS's DPD never fires while IKE answers). A tunnel that
    flaps faster than this keeps backing off: at most one repair per hold + reset (~20 s), as with backoff_min.
    """

    hold_seconds: float = DEFAULT_REPAIR_HOLD_SECONDS
    backoff_min_seconds: float = 20.0
    backoff_max_seconds: float = 300.0
    settle_seconds: float = 20.0
    backoff_reset_seconds: float = 15.0

    def backoff(self, attempts: int) -> float:
        """Delay before the next repair of a tunnel already repaired ``attempts`` times (without healing)."""
        if attempts <= 0:
            return 0.0
        return min(self.backoff_min_seconds * 2 ** (attempts - 1), self.backoff_max_seconds)


@dataclass
class RepairState:
    """Per tunnel: since when the fault has been seen, and the repairs made (mutable, owned by the daemon)."""

    dead_since: float | None = None  # probe-down while a CHILD_SA is installed, continuously since
    duplicated_since: float | None = None
    attempts: int = 0  # repairs since the tunnel was last healthy for backoff_reset_seconds
    last_at: float | None = None
    total: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    last: LastRepair | None = None  # the last repair as status shows it

    def observe(self, health: TunnelHealth, sas: TunnelSaFacts, now: float, policy: RepairPolicy) -> None:
        dead = not health.up and sas.child_installed
        if not dead:
            self.dead_since = None
        else:
            # Observed once a second: a tunnel that came up and went down again in between is dead since it went
            # down (changed_at), not since our first look. The look may be dated before the probes' verdict (the
            # daemon judges a listing at the moment it asked for it): never dead since before it went down.
            since = self.dead_since if self.dead_since is not None else now
            self.dead_since = since if health.changed_at is None else max(since, health.changed_at)
        self.duplicated_since = ((self.duplicated_since if self.duplicated_since is not None else now)
                                 if sas.duplicated else None)
        if health.up and health.healthy_for(now) >= policy.backoff_reset_seconds:
            self.attempts = 0

    def settling(self, health: TunnelHealth, now: float, policy: RepairPolicy) -> bool:
        """Repaired recently and not answering probes yet: the repair is still under way."""
        return self.last_at is not None and not health.up and now - self.last_at < policy.settle_seconds

    def record(self, action: RepairAction, now: float, wall: float) -> None:
        """A repair was made: count it, start its backoff, and look at the tunnel afresh (the hold starts again)."""
        self.attempts += 1
        self.total += 1
        self.by_kind[action.kind] = self.by_kind.get(action.kind, 0) + 1
        self.last_at = now
        self.dead_since = None
        self.duplicated_since = None
        self.last = LastRepair(at=wall, kind=action.kind, reason=action.reason,
                               deleted_ike_sas=list(action.delete_ike_ids),
                               deleted_child_sas=list(action.delete_child_ids), initiated=action.initiate, errors=[])

    def next_allowed(self, policy: RepairPolicy) -> float:
        return float("-inf") if self.last_at is None else self.last_at + policy.backoff(self.attempts)


REPAIR_KINDS = ("reestablish", "dedupe")


@dataclass(frozen=True)
class RepairAction:
    """``reestablish``: delete every IKE_SA of the tunnel, then initiate its child. ``dedupe``: delete the IKE_SAs
    and CHILD_SAs listed, keep ``keep_ike_id``."""

    kind: str  # "reestablish" | "dedupe"
    tunnel: str
    reason: str
    delete_ike_ids: tuple[int, ...]
    delete_child_ids: tuple[int, ...] = ()
    keep_ike_id: int | None = None

    @property
    def initiate(self) -> bool:
        return self.kind == "reestablish"


@dataclass(frozen=True)
class RepairPlan:
    actions: tuple[RepairAction, ...]
    waiting: dict[str, str]  # tunnel -> why a seen fault is not repaired now (status shows it)


def _dedupe(name: str, sas: TunnelSaFacts) -> RepairAction:
    """Keep one CHILD_SA (and its IKE_SA), delete every other.

    Which one: the one the peer sends on (bytes in grew: the peer certainly has it), else the one the kernel sends on
    (bytes out grew), else the most recently installed, else the highest id. Crossed initiations can leave us an SA
    the peer destroyed silently (charon on the peer, answering our INITIAL_CONTACT, drops its duplicate without a
    DELETE): once only the kept SA remains, the kernel sends on it, and the peer has it.
    """
    def child_key(c: ChildSaFact) -> tuple[bool, bool, float, int]:
        return (c.receiving, c.sending, c.installed_at if c.installed_at is not None else float("-inf"), c.child_id)

    children = [(child_key(c), c, ike) for ike in sas.ikes for c in ike.children]
    if children:
        _key, kept_child, keep = max(children, key=lambda x: x[0])
    else:
        kept_child, keep = None, max(sas.ikes, key=lambda i: (i.established_at or float("-inf"), i.ike_id))
    drop_ikes = tuple(sorted(i.ike_id for i in sas.ikes if i.ike_id != keep.ike_id))
    drop_children = tuple(sorted(c.child_id for c in keep.children if kept_child and c.child_id != kept_child.child_id))
    why = ("the peer sends on it" if kept_child and kept_child.receiving else
           "the kernel sends on it" if kept_child and kept_child.sending else "the newest")
    counts = f"{len(sas.ikes)} IKE_SAs, {sum(len(i.children) for i in sas.ikes)} CHILD_SAs"
    return RepairAction("dedupe", name, f"{counts} for one tunnel (crossed initiations): keeping IKE_SA #{keep.ike_id}"
                        f"{f' CHILD_SA #{kept_child.child_id}' if kept_child else ''} ({why})",
                        drop_ikes, drop_children, keep.ike_id)


def plan_repairs(tunnels: tuple[str, ...], health: dict[str, TunnelHealth], sas: dict[str, TunnelSaFacts],
                 repairs: dict[str, RepairState], active: str | None, now: float, policy: RepairPolicy) -> RepairPlan:
    """At most one repair per call, and none while an earlier one settles.

    Re-establish tunnel T (delete its IKE_SAs, initiate its child) only when all hold:
      1. T has been probe-down with a CHILD_SA installed for ``hold_seconds`` (a tunnel without a CHILD_SA is charon's
         to bring back: DPD/close action and keyingtries already retry it);
      2. T's backoff has passed (``backoff_min`` doubling per unhealed repair, capped at ``backoff_max``);
      3. no repair is settling (one made less than ``settle_seconds`` ago whose tunnel does not answer probes yet);
      4. T is not the only tunnel that may still carry traffic: another tunnel is probe-up, or another tunnel has an
         installed CHILD_SA (all probe-dead: AWS may still send to us on either, and probes can be wrong; keep one).
    Among several due, the least repaired goes first (with every tunnel dead they take turns); with no tunnel
    probe-up, a tunnel other than the one the kernel sends on (``active``) goes first, and the active one follows only
    once another has an installed CHILD_SA again (rule 4).
    Deduplicate T (several ESTABLISHED IKE_SAs or INSTALLED CHILD_SAs) when that has lasted ``hold_seconds`` (charon
    resolves rekey collisions within one exchange) and T is not re-established; backoff and settling apply the same
    way, rule 4 does not (one CHILD_SA stays: the last carrier is deduplicated, never rebuilt).
    """
    waiting: dict[str, str] = {}
    settling = [t for t in tunnels if repairs[t].settling(health[t], now, policy)]
    any_up = {t for t in tunnels if health[t].up}
    installed = {t for t in tunnels if sas.get(t, TunnelSaFacts()).child_installed}
    candidates: list[tuple[tuple[int, int, int, float], str, RepairAction]] = []
    for t in tunnels:
        st, facts = repairs[t], sas.get(t, TunnelSaFacts())
        dead_for = None if st.dead_since is None else now - st.dead_since
        duplicated_for = None if st.duplicated_since is None else now - st.duplicated_since
        due = dead_for is not None and dead_for >= policy.hold_seconds
        dup_due = duplicated_for is not None and duplicated_for >= policy.hold_seconds
        if not due and not dup_due:
            if dead_for is not None:
                waiting[t] = f"probe-dead with CHILD_SA installed for {dead_for:.1f}s (hold {policy.hold_seconds:.0f}s)"
            continue
        if now < st.next_allowed(policy):
            waiting[t] = f"backoff: next repair in {st.next_allowed(policy) - now:.0f}s (attempt {st.attempts + 1})"
            continue
        if settling:
            waiting[t] = f"one repair at a time: {settling[0]} was repaired and does not answer probes yet"
            continue
        others_up, others_installed = any_up - {t}, installed - {t}
        last_carrier = not others_up and not others_installed
        if dead_for is not None and due and not last_carrier:
            cover = (f"{sorted(others_up)[0]} answers probes" if others_up
                     else f"{sorted(others_installed)[0]} keeps its CHILD_SA")
            reason = (f"probe-dead for {dead_for:.1f}s while its CHILD_SA is installed"
                      f"{' (duplicated)' if facts.duplicated else ''}; {cover}")
            action = RepairAction("reestablish", t, reason, tuple(sorted(i.ike_id for i in facts.ikes)))
            # Least repaired first (both dead: they take turns); then, with no other tunnel up, the kernel's active
            # tunnel last; then the longest dead.
            candidates.append(((0, st.attempts, int(t == active and not others_up), -dead_for), t, action))
        elif dup_due and duplicated_for is not None:
            candidates.append(((1, st.attempts, 0, -duplicated_for), t, _dedupe(t, facts)))
        else:
            waiting[t] = "not repaired: the only tunnel with an installed CHILD_SA and no other answers probes"
    if not candidates:
        return RepairPlan((), waiting)
    candidates.sort(key=lambda c: (c[0], c[1]))
    chosen = candidates[0][2]
    for _rank, t, _action in candidates[1:]:
        waiting.setdefault(t, f"one repair at a time: {chosen.tunnel} first")
    return RepairPlan((chosen,), waiting)
