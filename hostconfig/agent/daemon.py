"""The failover daemon: one select() loop over the probe sockets and the VICI event connection.

Per tick it sends one probe per tunnel (and extra target), expires unanswered ones, feeds the hysteresis, and when the
decision changes it reconciles the routes (a switch is one route replace). VICI child/ike down events take a tunnel
out at once. A netlink notification that someone else changed links, addresses, routes or rules triggers a full
reconcile shortly after (an operator's stray route is repaired in well under a second); a full reconcile also runs
periodically as a backstop. State is rebuilt at start from the kernel and VICI; the state file it writes is for
`vpnctl status` only.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import select
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import replace

from .config import AgentConfig
from .desired import LinkMode, TunnelView
from .frr import BgpdVty, BgpSteerer
from .health import (
    Decision,
    RepairAction,
    RepairPolicy,
    RepairState,
    TunnelHealth,
    TunnelSaFacts,
    choose_active,
    plan_repairs,
    replacement_installed,
)
from .kernel import Kernel
from .metrics import write_metrics
from .nft import NftError
from .probe import IcmpProber, ProbeResult
from .reconcile import Reconciler
from .state import LockTimeout, reconcile_lock, write_daemon_state
from .status_contract import (
    BgpSteeringState,
    DaemonState,
    LastRepair,
    ProbeHealth,
    ReconcileRecord,
    RepairRecord,
    Switch,
    TunnelState,
)
from .vici_client import (
    CONNECT_TIMEOUT,
    Connector,
    IkeSa,
    UpdownEvent,
    ViciCommandFailed,
    ViciEventStream,
    ViciUnavailable,
    child_counters,
    connect_unix,
    initiate_child,
    installed_tunnels,
    list_sas,
    terminate_child,
    terminate_ike,
    tunnel_for_ike,
    tunnel_sa_facts,
)
from .vici_worker import ViciWorker

log = logging.getLogger(__name__)

# rtnetlink multicast groups (linux/rtnetlink.h): links, IPv4 addresses, IPv4 routes, IPv4 rules.
RTMGRP_LINK, RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE, RTMGRP_IPV4_RULE = 0x1, 0x10, 0x40, 0x80
# RTNLGRP_NEXTHOP (32) as a bind() group mask: a nexthop replaced by hand sends no route notification.
RTMGRP_NEXTHOP = 1 << (32 - 1)


class KernelChangeWatch:
    """A raw rtnetlink socket subscribed to link, IPv4 address, route, rule and nexthop notifications.

    The messages are not parsed: any one means "the routing state may differ from ours", and a full reconcile (which
    reads everything and changes only what we own) is the answer. Our own changes notify too; the daemon discards what
    is queued right after each of its reconciles (the kernel queues notifications before it acknowledges a request).
    A plain socket rather than a pyroute2 handle: it lives as long as the daemon, and pyroute2 handles grow.
    """

    GROUPS = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV4_RULE | RTMGRP_NEXTHOP

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
                                  socket.NETLINK_ROUTE)
        try:
            self.sock.bind((0, self.GROUPS))
        except OSError:
            self.sock.close()
            raise

    def fileno(self) -> int:
        return self.sock.fileno()

    def drain(self) -> bool:
        """Read everything queued; True when there was anything (an overflow counts: changes were lost)."""
        seen = False
        while True:
            try:
                if not self.sock.recv(65536):
                    return seen
                seen = True
            except BlockingIOError:
                return seen
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                seen = True

    def close(self) -> None:
        self.sock.close()

FULL_RECONCILE_SECONDS = 30.0
# How often the repair side lists charon's SAs: one VICI round trip (a few ms) a second; the repair hold is seconds.
REPAIR_CHECK_SECONDS = 1.0
# After someone else's change to links/addresses/routes/rules, wait this long for the rest of their change (a script
# runs several `ip` commands) before reconciling once; and reconcile for such changes at most once a second.
KERNEL_CHANGE_SETTLE_SECONDS = 0.2
KERNEL_CHANGE_MIN_INTERVAL_SECONDS = 1.0
STATE_WRITE_SECONDS = 1.0
VICI_BACKOFF_MIN = 0.5
VICI_BACKOFF_MAX = 30.0
LOCK_TIMEOUT = 2.0
RETRY_SECONDS = 1.0


class Repairer:
    """Drives the data-path repairs (rules: health.plan_repairs): lists charon's SAs once a second, feeds the per-tunnel
    repair state, and carries out the one decision, if any, over VICI. Logged once per decision at INFO, counted per
    tunnel and kind, kept for status, metrics and doctor. VICI commands do not wait for the peer (vici_client.NO_WAIT).

    Nor does the loop wait for charon: the listing and a repair's commands run on a worker thread (vici_worker), and
    ``tick`` decides from the newest listing that completed. charon answers only after an updown hook it runs (seconds
    on a loaded machine), and the probes and failover must go on meanwhile: a stale listing only delays a repair (the
    hold is seconds) and, for a down event, errs towards "a replacement remains" (the probes decide). At most one
    listing is under way, and the next is asked for only after it completed: every decision sees the effect of the
    repairs decided before it (the worker runs calls in order). The decision and its record stay on the loop's thread;
    only the VICI calls move.
    """

    def __init__(self, config: AgentConfig, health: dict[str, TunnelHealth], policy: RepairPolicy,
                 connect: Connector = connect_unix, wall: Callable[[], float] = time.time):
        self.config = config
        self.health = health
        self.policy = policy
        self.connect = connect
        self.wall = wall
        self.states = {t.name: RepairState() for t in config.tunnels}
        self.waiting: dict[str, str] = {}
        self.next_check = float("-inf")
        self.counters: dict[int, tuple[int, int]] = {}  # CHILD_SA traffic at the last listing
        # The last completed listing's SAs per tunnel (None: no listing yet) and when it was asked for (charon answered
        # since), and the CHILD_SAs VICI reported up since it was asked for: what a down event is judged by.
        self.facts: dict[str, TunnelSaFacts] | None = None
        self.listed_at: float | None = None
        self.came_up: dict[str, frozenset[int]] = {t.name: frozenset() for t in config.tunnels}
        self.worker = ViciWorker()
        self.listing_asked_at: float | None = None  # the listing under way, if any, was asked for then
        self.came_up_before: dict[str, frozenset[int]] = {}  # came_up when it was asked for
        self.stopping = False

    @property
    def total(self) -> int:
        return sum(s.total for s in self.states.values())

    def tick(self, now: float, active: str | None) -> RepairAction | None:
        """Take in what the worker finished (a listing: observe, plan, and start the repair decided, if any) and ask
        for the next listing once a second. Never waits. Returns the repair decided in this call, if any."""
        decided: list[RepairAction] = []
        self.worker.finish(now, active, decided)
        if now >= self.next_check and self.listing_asked_at is None and not self.stopping:
            self.next_check = now + REPAIR_CHECK_SECONDS
            self.listing_asked_at = now
            self.came_up_before = dict(self.came_up)
            path, connect = self.config.paths.vici_socket, self.connect
            self.worker.submit(lambda: list_sas(path, connect=connect), self.listed)
        return decided[0] if decided else None

    def seed(self, sas: list[IkeSa], asked_at: float) -> None:
        """Take in a listing asked for at ``asked_at``; the daemon's start-up listing, taken before the loop runs, is
        the first facts a down event is judged by."""
        self.facts = tunnel_sa_facts(self.config, sas, asked_at, self.counters)
        self.counters = child_counters(sas)
        self.listed_at = asked_at

    def listed(self, now: float, active: str | None, decided: list[RepairAction], sas: list[IkeSa] | None,
               error: Exception | None) -> None:
        asked_at, self.listing_asked_at = self.listing_asked_at, None
        if error is not None:
            if not isinstance(error, ViciUnavailable):
                raise error
            # No SA facts, no repair: charon's absence is the VICI reconnect's business, and it shows in status. The
            # last facts stay: stale, they err towards "remains".
            log.debug("repair check skipped: %s", error)
            return
        if self.stopping:
            return
        assert sas is not None and asked_at is not None
        if now - asked_at >= REPAIR_CHECK_SECONDS:
            log.debug("SA listing took %.1f s (charon busy); the loop went on", now - asked_at)
        # Judged at the moment it was asked for, as when the loop waited for it: looks a second apart, so a hold is
        # counted as before (judged when it came in, the jitter of the loop's round cut 4 s holds to 3.9 s and cost a
        # whole second more: the real-charon test's 3 s hold became 4.65 s). The times only order SAs among themselves.
        self.seed(sas, asked_at)
        # An up event since the listing was asked for may be of an SA the listing missed: it keeps counting.
        self.came_up = {name: ids - self.came_up_before.get(name, frozenset()) for name, ids in self.came_up.items()}
        facts = self.facts
        assert facts is not None
        for name, state in self.states.items():
            state.observe(self.health[name], facts.get(name, TunnelSaFacts()), asked_at, self.policy)
        plan = plan_repairs(self.config.tunnel_names, self.health, facts, self.states, active, asked_at, self.policy)
        self.waiting = plan.waiting
        for action in plan.actions:
            self.execute(action, asked_at)
        decided.extend(plan.actions)

    def execute(self, action: RepairAction, now: float) -> None:
        """Log and count the repair now, on the loop's thread (status, settle and backoff count from the decision);
        its VICI commands run on the worker and their errors are added to the record when they returned."""
        steps = [f"delete IKE_SA #{i}" for i in action.delete_ike_ids]
        steps += [f"delete CHILD_SA #{i}" for i in action.delete_child_ids]
        if action.initiate:
            steps.append(f"initiate {action.tunnel}")
        state = self.states[action.tunnel]
        log.info("repair %s (%s, #%d for this tunnel): %s; %s", action.tunnel, action.kind, state.total + 1,
                 action.reason, ", ".join(steps))
        state.record(action, now, self.wall())
        record = state.last
        self.worker.submit(lambda: self.carry_out(action), lambda _now, _active, _decided, errors, error:
                           self.carried_out(action, record, errors, error))

    def carry_out(self, action: RepairAction) -> list[str]:
        """On the worker: the repair's VICI commands in order; the errors, one per failed command."""
        path, errors = self.config.paths.vici_socket, []
        calls: list[tuple[str, Callable[[], None]]] = [
            # Forced, both kinds: charon still sends the DELETE (once: that is what moves AWS's traffic) and destroys
            # the SA at once. Unforced, the initiate that follows was queued on the dying IKE_SA; in an underlay cut
            # that one gave up after its retransmissions and took the new CHILD_SA with it, leaving the tunnel with
            # no IKE_SA and nobody re-initiating (seen twice in the lab, >10 min). A duplicate may be one the peer
            # dropped silently: forcing it stops the kernel sending on it now.
            *((f"IKE_SA #{i}", lambda i=i: terminate_ike(path, i, force=True, connect=self.connect))
              for i in action.delete_ike_ids),
            *((f"CHILD_SA #{i}", lambda i=i: terminate_child(path, i, connect=self.connect))
              for i in action.delete_child_ids),
        ]
        if action.initiate:
            calls.append((f"initiate {action.tunnel}", lambda: initiate_child(path, action.tunnel,
                                                                              connect=self.connect)))
        for what, call in calls:
            try:
                call()
            except (ViciUnavailable, ViciCommandFailed) as exc:
                # An SA gone in the meantime is fine; the rest still runs, and backoff applies as for any repair.
                errors.append(f"{what}: {exc}")
        return errors

    def carried_out(self, action: RepairAction, record: LastRepair | None, errors: list[str] | None,
                    error: Exception | None) -> None:
        if error is not None:
            errors = [f"{type(error).__name__}: {error}"]
        if not errors:
            return
        log.warning("repair %s: %s", action.tunnel, "; ".join(errors))
        state = self.states[action.tunnel]
        if record is not None and state.last is record:  # not a later repair's record
            state.last = replace(record, errors=errors)

    def close(self, now: float, timeout: float = 2 * CONNECT_TIMEOUT) -> None:
        """Stopping: let the repair under way, if any, send its commands (at most ``timeout``); decide nothing more."""
        self.stopping = True
        self.worker.close(timeout)
        self.worker.finish(now, None, [])

    def snapshot(self, name: str, now: float) -> RepairRecord:
        state = self.states[name]
        next_in = state.next_allowed(self.policy) - now
        return RepairRecord(total=state.total, by_kind=dict(state.by_kind), attempts=state.attempts, last=state.last,
                            waiting=self.waiting.get(name),
                            next_allowed_in_seconds=round(next_in, 1) if next_in > 0 else 0.0)


class FailoverDaemon:
    def __init__(self, config: AgentConfig, link_mode: LinkMode = "vti", clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time, full_reconcile_seconds: float = FULL_RECONCILE_SECONDS,
                 vici_connector: Connector = connect_unix):
        self.config = config
        self.link_mode = link_mode
        self.clock = clock
        self.wall = wall
        self.full_reconcile_seconds = full_reconcile_seconds
        probe = config.probe
        self.interval = probe.interval_ms / 1000.0
        timeout = probe.timeout_ms / 1000.0
        base = random.randrange(0x10000)
        self.health = {t.name: TunnelHealth(t.name, probe.down_after, probe.up_after) for t in config.tunnels}
        self.probers = {t.name: IcmpProber(t.name, t.gateway_inside_ip, t.aws_inside_ip, base + i, timeout)
                        for i, t in enumerate(config.tunnels)}
        # Extra targets are probed through the path real traffic takes (source = the VLAN address, the routing table
        # picks the tunnel). They are reported, not used to judge a tunnel: an application host being down must not
        # look like both tunnels down (the guide's single-host probe flaw).
        self.targets = {str(ip): TunnelHealth(str(ip), probe.down_after, probe.up_after) for ip in probe.extra_targets}
        self.target_probers = {str(ip): IcmpProber(str(ip), config.gateway_vlan_address.ip, ip, base + 16 + i, timeout)
                               for i, ip in enumerate(probe.extra_targets)}
        self.repairer = Repairer(config, self.health, RepairPolicy(hold_seconds=probe.repair_hold_seconds),
                                 vici_connector, wall)
        self.active: str | None = None
        self.last_active: str | None = None  # the tunnel the kernel sent on last (all down: active is None)
        self.view: TunnelView | None = None
        self.reason = "starting"
        self.switches_total = 0
        self.last_switch: Switch | None = None
        self.last_reconcile: ReconcileRecord | None = None
        self.pending_routes = False
        self.retry_at = 0.0
        self.vici: ViciEventStream | None = None
        self.vici_status = "not connected yet"
        self.vici_retry_at = 0.0
        self.vici_backoff = VICI_BACKOFF_MIN
        self.stopping = False
        self.kernel = Kernel()
        self.kernel_handles_opened = 1
        self.kernel_watch: KernelChangeWatch | None = None
        self.kernel_changed_at: float | None = None
        self.last_change_reconcile = float("-inf")
        self.reconciler = Reconciler(config, self.kernel, link_mode)
        self.output_errors: dict[str, str] = {}
        self.bgp = bgp_steerer(config)

    def steer_bgp(self, now: float, force: bool = False) -> None:
        """routing.mode bgp: tell AWS, through the gateway's bgpd, the tunnel the kernel now sends on (after the kernel
        switch: the gateway -> AWS direction never waits for bgpd). Never waits: the bgpd calls run on the steerer's
        worker thread, their outcome is taken in on a later round. ``force``: re-read FRR even for an unchanged view
        (the periodic full reconcile: an FRR restart went back to frr.conf's steady state)."""
        if self.bgp is not None and self.view is not None:
            self.bgp.on_view(self.view, now, force=force)

    # ---- start-up --------------------------------------------------------------------------------------------------

    def rebuild(self) -> None:
        """Trust the kernel and charon, not our old state file: which tunnel the routes use and which SAs exist."""
        now = self.clock()
        own = self.config.ownership
        routed: dict[str, int] = {}
        for route in self.kernel.read_routes(own.route_table):
            if route.protocol == own.route_protocol and route.type == "unicast" and route.ifname:
                routed[route.ifname] = min(route.metric, routed.get(route.ifname, route.metric))
        try:
            # Before the loop runs, so waiting here delays no probe; the listing is also the repair side's first.
            sas = list_sas(self.config.paths.vici_socket, connect=self.repairer.connect)
            installed: frozenset[str] | None = installed_tunnels(self.config, sas)
            self.repairer.seed(sas, now)
        except ViciUnavailable as exc:
            log.info("start: charon not reachable (%s); judging tunnels by probes only", exc)
            installed = None
        for tunnel in self.config.tunnels:
            if tunnel.interface in routed and (installed is None or tunnel.name in installed):
                self.health[tunnel.name].presume_up(now, f"routed through {tunnel.interface} at daemon start")
        best = sorted((metric, ifname) for ifname, metric in routed.items())
        for _metric, ifname in best:
            tunnel = self.config.tunnel_by_interface(ifname)
            if tunnel is not None and self.health[tunnel.name].up:
                self.active = tunnel.name
                break
        up = sorted(n for n, h in self.health.items() if h.up)
        log.info("start: active %s, presumed up %s (from the kernel routes%s)", self.active, up or "none",
                 " and VICI" if installed is not None else "")

    # ---- decisions -------------------------------------------------------------------------------------------------

    def on_probe_results(self, results: list[ProbeResult], now: float) -> None:
        for result in results:
            health = self.health.get(result.key)
            if health is not None:
                if health.record(result.ok, now, result.rtt):
                    log.info("%s %s: %s", health.name, "up" if health.up else "down", health.reason)
                continue
            target = self.targets.get(result.key)
            if target is not None and target.record(result.ok, now, result.rtt):
                log.info("extra target %s %s: %s", target.name, "up" if target.up else "down", target.reason)

    def decide(self, now: float) -> Decision:
        return choose_active(self.config.tunnel_names, self.config.primary_tunnel, self.health, self.active, now,
                             self.config.probe.failback_hold_seconds)

    def evaluate(self, now: float) -> None:
        decision = self.decide(now)
        up = frozenset(n for n, h in self.health.items() if h.up)
        view = TunnelView(up, decision.active)
        if view == self.view and not (self.pending_routes and now >= self.retry_at):
            return
        if decision.active != self.active:
            log.info("switch %s -> %s: %s", self.active or "none", decision.active or "none (unreachable only)",
                     decision.reason)
            self.last_switch = Switch(at=self.wall(), from_tunnel=self.active, to_tunnel=decision.active,
                                      reason=decision.reason)
            if self.view is not None:
                self.switches_total += 1
        self.active = decision.active
        self.last_active = decision.active or self.last_active
        self.reason = decision.reason
        self.view = view
        self.apply(routes_only=True)

    def renew_kernel(self) -> None:
        """A fresh netlink handle for the next reconcile.

        pyroute2 (0.9.x) keeps memory per request in a long-lived IPRoute: about 40 KiB of RSS per switch, found by
        bench/soak.py. Measured (2000 route switches in a netns, RSS after a 100-switch warm-up): one handle for all
        +17 MiB per 400 and growing; renewed every 32 reconciles +2.7 MiB (a plateau); every reconcile +1.3 MiB.
        Opening a handle costs ~0.5 ms, against 5-120 ms for a switch.
        """
        old = self.kernel
        self.kernel = Kernel()
        self.reconciler = Reconciler(self.config, self.kernel, self.link_mode)
        self.kernel_handles_opened += 1
        old.close()

    def kernel_change_deadline(self) -> float:
        """When to reconcile after someone else changed the routing state: once their change settled, at most once a
        second (a tool fighting over our table must not turn the daemon into a busy loop); inf when nothing changed."""
        if self.kernel_changed_at is None:
            return float("inf")
        return max(self.kernel_changed_at + KERNEL_CHANGE_SETTLE_SECONDS,
                   self.last_change_reconcile + KERNEL_CHANGE_MIN_INTERVAL_SECONDS)

    def apply(self, routes_only: bool) -> None:
        assert self.view is not None
        self.renew_kernel()
        try:
            with reconcile_lock(self.config.paths.state_dir, LOCK_TIMEOUT):
                try:
                    result = self.reconciler.run(self.view, routes_only=routes_only)
                except NftError as exc:
                    # A bad ruleset file must not stop links, routes and leak protection.
                    log.error("nftables ruleset refused (%s); reconciling everything else", exc)
                    result = self.reconciler.run(self.view, routes_only=routes_only, with_nft=False)
                    result.problems.append(str(exc))
        except LockTimeout as exc:
            log.warning("reconcile postponed: %s", exc)
            self._retry_later()
            return
        except Exception as exc:  # noqa: BLE001 - the loop must survive anything one reconcile throws
            log.error("reconcile failed: %s", exc)
            self._retry_later()
            return
        if self.kernel_watch is not None:
            self.kernel_watch.drain()  # notifications of our own changes (queued before each request was acked)
        self.pending_routes = False
        if not result.ok:
            self._retry_later()
        self.last_reconcile = ReconcileRecord(at=self.wall(), routes_only=routes_only,
                                              seconds=round(result.seconds, 4),
                                              changes=[str(c) for c in result.changes],
                                              problems=list(result.problems))

    def _retry_later(self) -> None:
        # Retried from evaluate() at most once per second: a persistent problem must not become a busy loop.
        self.pending_routes = True
        self.retry_at = self.clock() + RETRY_SECONDS

    def on_vici_event(self, event: UpdownEvent, now: float) -> None:
        for ike in event.sas:
            name = tunnel_for_ike(self.config, ike)
            if name is None:
                continue
            mark = self.config.tunnel(name).mark
            if event.kind == "child-updown" and not any(c.mark_in in (None, mark) for c in ike.children):
                continue
            children = frozenset(c.child_id for c in ike.children if c.child_id is not None)
            if event.up:
                log.debug("%s: %s up for %s; probing now", event.kind, ike.name, name)
                if event.kind == "child-updown":
                    self.repairer.came_up[name] |= children
                self.probe_now(name, now)
            elif not self._still_installed(name, event.kind == "ike-updown", ike.ike_id, children):
                if self.health[name].force_down(now, f"{event.kind}: {ike.name} went down (VICI)"):
                    log.info("%s down: %s", name, self.health[name].reason)

    def _still_installed(self, name: str, whole_ike_sa: bool, ike_id: int | None, children: frozenset[int]) -> bool:
        # A down event for an old SA while a replacement is installed (reauth, duplicate) must not fail over. Never by
        # asking charon now (it answers after the hook of this very SA). No listing at all (charon was unreachable at
        # start and none completed since): what VICI reported up since is all there is to go by.
        facts = self.repairer.facts or {}
        return replacement_installed(facts.get(name, TunnelSaFacts()), self.repairer.came_up[name], whole_ike_sa,
                                     ike_id, children)

    def probe_now(self, name: str, now: float) -> None:
        self.on_probe_results(self.probers[name].send(now), now)

    # ---- VICI connection -------------------------------------------------------------------------------------------

    def ensure_vici(self, now: float) -> None:
        if self.vici is not None or now < self.vici_retry_at:
            return
        try:
            self.vici = ViciEventStream(self.config.paths.vici_socket)
        except ViciUnavailable as exc:
            if self.vici_status != f"unreachable: {exc}":
                log.info("VICI: %s; retrying with backoff", exc)
            self.vici_status = f"unreachable: {exc}"
            self.vici_retry_at = now + self.vici_backoff
            self.vici_backoff = min(self.vici_backoff * 2, VICI_BACKOFF_MAX)
            return
        log.info("VICI: listening for ike-updown and child-updown on %s", self.config.paths.vici_socket)
        self.vici_status = "connected"
        self.vici_backoff = VICI_BACKOFF_MIN
        # charon may have restarted: what it knows now counts, probe everything at once.
        for name in self.probers:
            self.probe_now(name, now)

    def drop_vici(self, why: str) -> None:
        if self.vici is not None:
            self.vici.close()
            self.vici = None
        log.info("VICI: %s; reconnecting", why)
        self.vici_status = f"lost: {why}"
        self.vici_retry_at = self.clock() + self.vici_backoff

    # ---- outputs ---------------------------------------------------------------------------------------------------

    def snapshot(self) -> DaemonState:
        now, wall = self.clock(), self.wall()

        def since(h: TunnelHealth) -> float | None:
            return None if h.changed_at is None else wall - (now - h.changed_at)

        def target(h: TunnelHealth) -> ProbeHealth:
            return ProbeHealth(up=h.up, reason=h.reason, rtt_seconds=h.last_rtt, since=since(h),
                               consecutive_ok=h.consecutive_ok, consecutive_miss=h.consecutive_miss)

        tunnels = {}
        for t in self.config.tunnels:
            h = self.health[t.name]
            tunnels[t.name] = TunnelState(up=h.up, reason=h.reason, rtt_seconds=h.last_rtt, since=since(h),
                                          consecutive_ok=h.consecutive_ok, consecutive_miss=h.consecutive_miss,
                                          interface=t.interface, probe_error=self.probers[t.name].last_error,
                                          repair=self.repairer.snapshot(t.name, now))
        return DaemonState(
            pid=os.getpid(), updated_at=wall, active=self.active, reason=self.reason,
            up=sorted(n for n, h in self.health.items() if h.up), switches_total=self.switches_total,
            repairs_total=self.repairer.total, last_switch=self.last_switch, tunnels=tunnels,
            extra_targets={n: target(h) for n, h in self.targets.items()}, vici=self.vici_status,
            last_reconcile=self.last_reconcile, link_mode=self.link_mode, bgp=self.bgp_snapshot(),
        )

    def bgp_snapshot(self) -> BgpSteeringState | None:
        if self.bgp is None:
            return None
        last = self.bgp.last
        return BgpSteeringState(
            customer_asn=self.bgp.asn,
            advertise={name: a.route_map for name, a in last.advertise.items()} if last else {},
            reason=last.reason if last else "not applied yet", changes_total=self.bgp.changes_total,
            failures_total=self.bgp.failures_total, last_error=self.bgp.last_error)

    def write_outputs(self) -> None:
        snap = self.snapshot()
        # Separately: the metrics live on another filesystem than the state dir, and with /run full the monitoring
        # must still see the switches (the lab's fault matrix found them frozen behind the failed state write).
        self._write_output("state", lambda: write_daemon_state(self.config.paths.state_dir, snap))
        self._write_output("metrics", lambda: write_metrics(self.config.paths.metrics_file, snap))

    def _write_output(self, what: str, write: Callable[[], None]) -> None:
        # Written every second: log a failure when it starts or changes and when it clears, not every time.
        try:
            write()
        except OSError as exc:
            if self.output_errors.get(what) != str(exc):
                log.warning("cannot write %s: %s", what, exc)
            self.output_errors[what] = str(exc)
            return
        if self.output_errors.pop(what, None) is not None:
            log.info("writing %s again", what)

    # ---- the loop --------------------------------------------------------------------------------------------------

    def request_stop(self, *_: object) -> None:
        self.stopping = True

    def run(self, duration: float | None = None) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        started = self.clock()
        self.rebuild()
        self.view = TunnelView(frozenset(n for n, h in self.health.items() if h.up), None)
        decision = self.decide(started)
        self.active, self.reason = decision.active, decision.reason
        self.view = TunnelView(self.view.up, decision.active)
        self.last_active = decision.active
        try:
            self.kernel_watch = KernelChangeWatch()
        except OSError as exc:
            log.warning("no netlink change notifications (%s): changes by others are repaired by the periodic "
                        "reconcile only", exc)
        self.apply(routes_only=False)
        self.steer_bgp(started, force=True)
        log.info("running: active %s (%s); probing every %.0f ms", self.active or "none", self.reason,
                 self.interval * 1000)
        next_probe = started
        next_full = started + self.full_reconcile_seconds
        next_write = started
        try:
            while not self.stopping and (duration is None or self.clock() - started < duration):
                now = self.clock()
                self.ensure_vici(now)
                if now >= next_probe:
                    for prober in [*self.probers.values(), *self.target_probers.values()]:
                        self.on_probe_results(prober.expire(now) + prober.send(now), now)
                    next_probe += self.interval
                    if next_probe < now:  # we fell behind (suspend, loaded machine): do not burst
                        next_probe = now + self.interval
                self.evaluate(now)
                self.steer_bgp(now)
                if self.repairer.tick(now, self.active or self.last_active) is not None:
                    self.write_outputs()
                if now >= next_full or now >= self.kernel_change_deadline():
                    if now < next_full:
                        log.info("links, addresses, routes or rules changed by someone else: reconciling")
                        self.last_change_reconcile = now
                    self.kernel_changed_at = None
                    self.apply(routes_only=False)
                    self.steer_bgp(now, force=True)
                    next_full = now + self.full_reconcile_seconds
                if now >= next_write:
                    self.write_outputs()
                    next_write = now + STATE_WRITE_SECONDS
                watch = [p for p in [*self.probers.values(), *self.target_probers.values()] if p.sock is not None]
                if self.vici is not None:
                    watch.append(self.vici)
                if self.kernel_watch is not None:
                    watch.append(self.kernel_watch)
                wait = max(0.0, min(next_probe, next_write, self.kernel_change_deadline()) - self.clock())
                readable, _, _ = select.select(watch, [], [], wait)
                now = self.clock()
                changed_before = self.view
                for item in readable:
                    if item is self.kernel_watch:
                        if self.kernel_watch.drain() and self.kernel_changed_at is None:
                            self.kernel_changed_at = now
                    elif item is self.vici:
                        try:
                            event = self.vici.read_event()
                        except ViciUnavailable as exc:
                            self.drop_vici(str(exc))
                            continue
                        if event is not None:
                            self.on_vici_event(event, now)
                    else:
                        self.on_probe_results(item.receive(now), now)
                self.evaluate(now)
                self.steer_bgp(now)
                if self.view != changed_before:
                    self.write_outputs()
        finally:
            self.repairer.close(self.clock())
            if self.bgp is not None:
                self.bgp.close(LOCK_TIMEOUT)
            self.write_outputs()
            for prober in [*self.probers.values(), *self.target_probers.values()]:
                prober.close()
            if self.vici is not None:
                self.vici.close()
            if self.kernel_watch is not None:
                self.kernel_watch.close()
            self.kernel.close()
            log.info("stopped (routes left in place: traffic keeps flowing without the daemon)")


def bgp_steerer(config: AgentConfig) -> BgpSteerer | None:
    """The daemon's BGP steering when agent.json has a bgp section (routing.mode bgp), else None."""
    if config.bgp is None:
        return None
    bgpd = BgpdVty.of(config.bgp)
    neighbors = {t.name: str(t.aws_inside_ip) for t in config.tunnels}
    return BgpSteerer(config.tunnel_names, config.primary_tunnel, neighbors, config.bgp.customer_asn, bgpd)
