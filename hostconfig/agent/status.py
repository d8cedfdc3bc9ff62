"""`vpnctl status`: what charon, the kernel and the daemon say, side by side. Every source may be missing."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from .config import AgentConfig
from .desired import ACTIVE_METRIC, STANDBY_METRIC, UNREACHABLE_METRIC
from .kernel import Kernel, KernelError
from .state import DAEMON_STATE, EVENT_PREFIX, daemon_liveness, read_json
from .vici_client import ViciUnavailable, list_sas, tunnel_sa_states

log = logging.getLogger(__name__)


def kernel_routing(config: AgentConfig, kernel: Kernel) -> dict[str, Any]:
    """Our routes and rule as the kernel has them: active/standby interface, leak protection present or not."""
    own = config.ownership
    routes = [r for r in kernel.read_routes(own.route_table) if r.protocol == own.route_protocol]
    by_metric: dict[int, set[str | None]] = {}
    for route in routes:
        by_metric.setdefault(route.metric, set()).add(route.ifname if route.type == "unicast" else route.type)
    unreachable = {r.dst for r in routes if r.metric == UNREACHABLE_METRIC and r.type == "unreachable"}
    rules = kernel.read_rules(own.rule_priority)
    return {
        "active_interface": sorted(x for x in by_metric.get(ACTIVE_METRIC, set()) if x),
        "standby_interface": sorted(x for x in by_metric.get(STANDBY_METRIC, set()) if x),
        "leak_protection": all(c in unreachable for c in config.aws_cidrs),
        "rule": any(r.table == own.route_table and not r.selectors for r in rules),
        "routes": len(routes),
    }


def gather_status(config: AgentConfig) -> dict[str, Any]:
    daemon = read_json(config.paths.state_dir / DAEMON_STATE)
    liveness = daemon_liveness(config.paths.state_dir, daemon)
    try:
        sa_states = tunnel_sa_states(config, list_sas(config.paths.vici_socket))
        vici = "reachable"
    except ViciUnavailable as exc:
        sa_states, vici = {}, f"unreachable ({exc})"
    counters: dict[str, dict[str, int]] = {}
    routing: dict[str, Any] = {}
    kernel_error = None
    try:
        with Kernel() as kernel:
            counters = kernel.read_link_counters(tuple(t.interface for t in config.tunnels))
            routing = kernel_routing(config, kernel)
    except (KernelError, OSError) as exc:
        kernel_error = str(exc)
    tunnels = []
    for t in config.tunnels:
        sa = sa_states.get(t.name)
        probe = (daemon or {}).get("tunnels", {}).get(t.name) if daemon else None
        if t.interface in routing.get("active_interface", []):
            role = "active"
        elif t.interface in routing.get("standby_interface", []):
            role = "standby"
        else:
            role = "unused"
        event = read_json(config.paths.state_dir / f"{EVENT_PREFIX}{t.name}.json")
        tunnels.append({
            "name": t.name, "interface": t.interface, "role": role, "primary": t.name == config.primary_tunnel,
            "ike_sa": sa.ike_state if sa else ("unknown" if vici != "reachable" else "NONE"),
            "child_sa": sa.child_state if sa else ("unknown" if vici != "reachable" else "NONE"),
            "probe": None if probe is None else {"up": probe.get("up"), "rtt_seconds": probe.get("rtt_seconds"),
                                                 "since": probe.get("since"), "reason": probe.get("reason")},
            "link": t.interface in counters,
            "bytes": {"rx": counters[t.interface]["rx_bytes"], "tx": counters[t.interface]["tx_bytes"]}
            if t.interface in counters else None,
            "last_updown": None if event is None else {"verb": event.get("verb"), "at": event.get("at")},
            "repair": None if probe is None else _repair_view(probe.get("repair")),
        })
    return {
        "tunnels": tunnels,
        "daemon": {"running": liveness != "stopped", "state_file": "stale" if liveness == "stale" else (
                       "fresh" if liveness == "running" else None), "updated_at": (daemon or {}).get("updated_at"),
                   "active": (daemon or {}).get("active"), "reason": (daemon or {}).get("reason"),
                   "switches_total": (daemon or {}).get("switches_total"),
                   "repairs_total": (daemon or {}).get("repairs_total"),
                   "last_switch": (daemon or {}).get("last_switch"), "vici": (daemon or {}).get("vici")},
        "vici": vici,
        "kernel": routing if kernel_error is None else {"error": kernel_error},
    }


def _repair_view(repair: dict[str, Any] | None) -> dict[str, Any] | None:
    if repair is None:
        return None  # a daemon from before repairs existed
    return {k: repair.get(k) for k in ("total", "by_kind", "attempts", "last", "waiting", "next_allowed_in_seconds")}


def render_repair(name: str, repair: dict[str, Any] | None) -> str | None:
    """One line per tunnel the daemon repaired or holds back a repair for; None when there is nothing to say."""
    if not repair or (not repair.get("total") and not repair.get("waiting")):
        return None
    parts = [f"{repair.get('total', 0)} repair(s)"]
    last = repair.get("last")
    if last:
        parts.append(f"last {_when(last.get('at'))} {last.get('kind')}: {last.get('reason')}"
                     + (f" (errors: {'; '.join(last['errors'])})" if last.get("errors") else ""))
    if repair.get("waiting"):
        parts.append(f"now: {repair['waiting']}")
    return f"  {name} repair: " + "; ".join(parts)


def _when(ts: float | None) -> str:
    if ts is None:
        return "never"
    return dt.datetime.fromtimestamp(ts).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def render_status(status: dict[str, Any]) -> str:
    lines = []
    for t in status["tunnels"]:
        probe = t["probe"]
        if probe is None:
            health = "probe: no daemon data"
        else:
            rtt = f"{probe['rtt_seconds'] * 1000:.1f} ms" if probe.get("rtt_seconds") is not None else "-"
            health = f"probe: {'up' if probe['up'] else 'down'} (rtt {rtt}; {probe.get('reason')})"
        traffic = (f"rx {t['bytes']['rx']} B tx {t['bytes']['tx']} B" if t["bytes"] else "link missing")
        lines.append(f"{t['name']}{' (primary)' if t['primary'] else ''} [{t['interface']}]: {t['role']}; "
                     f"IKE {t['ike_sa']}, CHILD {t['child_sa']}; {health}; {traffic}")
        repair = render_repair(t["name"], t.get("repair"))
        if repair:
            lines.append(repair)
    d = status["daemon"]
    if not d["running"]:
        lines.append("daemon: not running (no process holds its lock, or no fresh state file)")
    elif d.get("state_file") == "stale":
        lines.append(f"daemon: running, but its state file is stale (last written {_when(d.get('updated_at'))}; "
                     "a full or read-only state dir? see its log); the tunnel data below may be old")
    else:
        lines.append("daemon: running")
    switch = d.get("last_switch")
    if switch:
        lines.append(f"last switch: {_when(switch.get('at'))} {switch.get('from') or 'none'} -> "
                     f"{switch.get('to') or 'none'}: {switch.get('reason')}")
    else:
        lines.append("last switch: none recorded")
    if d.get("repairs_total") is not None:
        lines.append(f"data-path repairs: {d['repairs_total']} since the daemon started")
    k = status["kernel"]
    if "error" in k:
        lines.append(f"kernel: cannot read ({k['error']})")
    else:
        lines.append(f"kernel: rule {'present' if k['rule'] else 'MISSING'}, leak protection "
                     f"{'present' if k['leak_protection'] else 'MISSING'}, {k['routes']} routes")
    lines.append(f"charon (VICI): {status['vici']}")
    return "\n".join(lines) + "\n"
