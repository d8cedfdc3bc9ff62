"""`vpnctl status`: what charon, the kernel and the daemon say, side by side. Every source may be missing."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging

from .config import AgentConfig
from .desired import ACTIVE_METRIC, STANDBY_METRIC, UNREACHABLE_METRIC
from .frr import BgpdVty, FrrError, neighbor_states
from .kernel import Kernel, KernelError
from .state import EVENT_PREFIX, daemon_summary, read_json
from .status_contract import (
    BgpStatus,
    BgpSteeringState,
    ContractError,
    KernelRouting,
    ProbeView,
    RepairRecord,
    StatusReport,
    Traffic,
    TunnelStatus,
    UpdownRecord,
)
from .vici_client import ViciUnavailable, list_sas, tunnel_sa_states

log = logging.getLogger(__name__)


def kernel_routing(config: AgentConfig, kernel: Kernel) -> KernelRouting:
    """Our routes and rule as the kernel has them: active/standby interface, leak protection present or not."""
    own = config.ownership
    routes = [r for r in kernel.read_routes(own.route_table) if r.protocol == own.route_protocol]
    by_metric: dict[int, set[str | None]] = {}
    for route in routes:
        by_metric.setdefault(route.metric, set()).add(route.ifname if route.type == "unicast" else route.type)
    unreachable = {r.dst for r in routes if r.metric == UNREACHABLE_METRIC and r.type == "unreachable"}
    rules = kernel.read_rules(own.rule_priority)
    return KernelRouting(
        error=None,
        active_interface=sorted(x for x in by_metric.get(ACTIVE_METRIC, set()) if x),
        standby_interface=sorted(x for x in by_metric.get(STANDBY_METRIC, set()) if x),
        leak_protection=all(c in unreachable for c in config.aws_cidrs),
        rule=any(r.table == own.route_table and not r.selectors for r in rules),
        routes=len(routes),
    )


def _last_updown(config: AgentConfig, tunnel: str) -> UpdownRecord | None:
    event = read_json(config.paths.state_dir / f"{EVENT_PREFIX}{tunnel}.json")
    if event is None:
        return None
    try:
        return UpdownRecord.from_json(event, f"updown event of {tunnel}")
    except ContractError as exc:
        log.info("%s", exc)
        return None


def gather_status(config: AgentConfig) -> StatusReport:
    summary, daemon = daemon_summary(config.paths.state_dir)
    try:
        sa_states = tunnel_sa_states(config, list_sas(config.paths.vici_socket))
        vici = "reachable"
    except ViciUnavailable as exc:
        sa_states, vici = {}, f"unreachable ({exc})"
    counters: dict[str, dict[str, int]] = {}
    routing = KernelRouting(error=None, active_interface=[], standby_interface=[], leak_protection=False, rule=False,
                            routes=0)
    try:
        with Kernel() as kernel:
            counters = kernel.read_link_counters(tuple(t.interface for t in config.tunnels))
            routing = kernel_routing(config, kernel)
    except (KernelError, OSError) as exc:
        routing = dataclasses.replace(routing, error=str(exc))
    unknown = "unknown" if vici != "reachable" else "NONE"
    tunnels = []
    for t in config.tunnels:
        sa = sa_states.get(t.name)
        probe = daemon.tunnels.get(t.name) if daemon else None  # a tunnel the daemon's config did not have: no data
        if t.interface in routing.active_interface:
            role = "active"
        elif t.interface in routing.standby_interface:
            role = "standby"
        else:
            role = "unused"
        tunnels.append(TunnelStatus(
            name=t.name, interface=t.interface, role=role, primary=t.name == config.primary_tunnel,
            ike_sa=sa.ike_state if sa else unknown, child_sa=sa.child_state if sa else unknown,
            probe=None if probe is None else ProbeView(up=probe.up, rtt_seconds=probe.rtt_seconds, since=probe.since,
                                                       reason=probe.reason),
            link=t.interface in counters,
            bytes=Traffic(rx=counters[t.interface]["rx_bytes"], tx=counters[t.interface]["tx_bytes"])
            if t.interface in counters else None,
            last_updown=_last_updown(config, t.name),
            repair=None if probe is None else probe.repair,
        ))
    return StatusReport(tunnels=tunnels, daemon=summary, vici=vici, kernel=routing,
                        bgp=bgp_status(config, daemon.bgp if daemon else None))


def bgp_status(config: AgentConfig, steering: BgpSteeringState | None) -> BgpStatus | None:
    if config.bgp is None:
        return None
    bgpd = BgpdVty.of(config.bgp)
    try:
        states = neighbor_states(bgpd)
    except FrrError as exc:
        return BgpStatus(sessions={}, error=str(exc), steering=steering)
    return BgpStatus(sessions={t.name: states.get(str(t.aws_inside_ip), "missing") for t in config.tunnels},
                     error=None, steering=steering)


def render_bgp(bgp: BgpStatus) -> list[str]:
    if bgp.error is not None:
        lines = [f"bgp: bgpd unreachable ({bgp.error})"]
    else:
        lines = ["bgp sessions: " + ", ".join(f"{name} {state}" for name, state in bgp.sessions.items())]
    s = bgp.steering
    if s is None:
        lines.append("bgp steering: no daemon data")
    else:
        shown = ", ".join(f"{name} {route_map}" for name, route_map in s.advertise.items()) or "nothing applied yet"
        lines.append(f"bgp steering (AS {s.customer_asn}): {shown}; {s.reason}; {s.changes_total} change(s), "
                     f"{s.failures_total} failure(s)" + (f"; now failing: {s.last_error}" if s.last_error else ""))
    return lines


def render_repair(name: str, repair: RepairRecord | None) -> str | None:
    """One line per tunnel the daemon repaired or holds back a repair for; None when there is nothing to say."""
    if repair is None or (not repair.total and not repair.waiting):
        return None
    parts = [f"{repair.total} repair(s)"]
    last = repair.last
    if last is not None:
        parts.append(f"last {_when(last.at)} {last.kind}: {last.reason}"
                     + (f" (errors: {'; '.join(last.errors)})" if last.errors else ""))
    if repair.waiting:
        parts.append(f"now: {repair.waiting}")
    return f"  {name} repair: " + "; ".join(parts)


def _when(ts: float | None) -> str:
    if ts is None:
        return "never"
    return dt.datetime.fromtimestamp(ts).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def render_status(status: StatusReport) -> str:
    lines = []
    for t in status.tunnels:
        probe = t.probe
        if probe is None:
            health = "probe: no daemon data"
        else:
            rtt = f"{probe.rtt_seconds * 1000:.1f} ms" if probe.rtt_seconds is not None else "-"
            health = f"probe: {'up' if probe.up else 'down'} (rtt {rtt}; {probe.reason})"
        traffic = f"rx {t.bytes.rx} B tx {t.bytes.tx} B" if t.bytes else "link missing"
        lines.append(f"{t.name}{' (primary)' if t.primary else ''} [{t.interface}]: {t.role}; "
                     f"IKE {t.ike_sa}, CHILD {t.child_sa}; {health}; {traffic}")
        repair = render_repair(t.name, t.repair)
        if repair:
            lines.append(repair)
    d = status.daemon
    if not d.running:
        lines.append("daemon: not running (no process holds its lock, or no fresh state file)")
    elif d.state_file == "stale":
        lines.append(f"daemon: running, but its state file is stale (last written {_when(d.updated_at)}; "
                     "a full or read-only state dir? see its log); the tunnel data below may be old")
    else:
        lines.append("daemon: running")
    if d.state_error:
        lines.append(f"daemon: its state file is unusable: {d.state_error}")
    switch = d.last_switch
    if switch:
        lines.append(f"last switch: {_when(switch.at)} {switch.from_tunnel or 'none'} -> "
                     f"{switch.to_tunnel or 'none'}: {switch.reason}")
    else:
        lines.append("last switch: none recorded")
    if d.repairs_total is not None:
        lines.append(f"data-path repairs: {d.repairs_total} since the daemon started")
    k = status.kernel
    if k.error is not None:
        lines.append(f"kernel: cannot read ({k.error})")
    else:
        lines.append(f"kernel: rule {'present' if k.rule else 'MISSING'}, leak protection "
                     f"{'present' if k.leak_protection else 'MISSING'}, {k.routes} routes")
    lines.append(f"charon (VICI): {status.vici}")
    if status.bgp is not None:
        lines += render_bgp(status.bgp)
    return "\n".join(lines) + "\n"
