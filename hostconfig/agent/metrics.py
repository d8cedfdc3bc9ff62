"""Prometheus textfile-collector output (node_exporter --collector.textfile.directory) of the daemon state."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .health import REPAIR_KINDS
from .state import atomic_write_text
from .status_contract import DaemonState


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_metrics(state: DaemonState | None, tunnel_names: Sequence[str] = (), switches_total: int = 0) -> str:
    """``state`` is the daemon's (status_contract.DaemonState). None: no fresh state; stale numbers would look healthy,
    so each of ``tunnel_names`` is published down, no tunnel active, and only the switch counter (``switches_total``,
    from the stale state if any) kept."""
    tunnels = state.tunnels if state is not None else {}
    names = list(tunnels) if state is not None else list(tunnel_names)
    active = state.active if state is not None else None
    lines = [
        "# HELP hybrid_vpn_tunnel_up Tunnel health from the failover probes (1 up, 0 down).",
        "# TYPE hybrid_vpn_tunnel_up gauge",
    ]
    lines += [f'hybrid_vpn_tunnel_up{{tunnel="{_label(n)}"}} {1 if n in tunnels and tunnels[n].up else 0}'
              for n in names]
    lines += [
        "# HELP hybrid_vpn_active_tunnel 1 for the tunnel carrying traffic (metric-100 route), else 0.",
        "# TYPE hybrid_vpn_active_tunnel gauge",
    ]
    lines += [f'hybrid_vpn_active_tunnel{{tunnel="{_label(n)}"}} {1 if n == active else 0}' for n in names]
    lines += [
        "# HELP hybrid_vpn_probe_rtt_seconds Round-trip time of the last answered probe to the AWS inside address.",
        "# TYPE hybrid_vpn_probe_rtt_seconds gauge",
    ]
    lines += [f'hybrid_vpn_probe_rtt_seconds{{tunnel="{_label(n)}"}} {t.rtt_seconds:.6f}'
              for n, t in tunnels.items() if t.rtt_seconds is not None]
    lines += [
        "# HELP hybrid_vpn_switches_total Active-tunnel changes made by this daemon since it started.",
        "# TYPE hybrid_vpn_switches_total counter",
        f"hybrid_vpn_switches_total {state.switches_total if state is not None else switches_total}",
    ]
    lines += [
        "# HELP hybrid_vpn_repairs_total Data-path repairs by this daemon since it started: reestablish (IKE_SA deleted"
        " and the child initiated again), dedupe (duplicate IKE/CHILD_SAs deleted).",
        "# TYPE hybrid_vpn_repairs_total counter",
    ]
    lines += [f'hybrid_vpn_repairs_total{{tunnel="{_label(n)}",kind="{kind}"}} '
              f'{tunnels[n].repair.by_kind.get(kind, 0) if n in tunnels else 0}'
              for n in names for kind in REPAIR_KINDS]
    lines += [
        "# HELP hybrid_vpn_repair_waiting 1 while a tunnel's data path is dead but a repair is held back (hold, "
        "backoff, one at a time, or the last tunnel with a CHILD_SA).",
        "# TYPE hybrid_vpn_repair_waiting gauge",
    ]
    lines += [f'hybrid_vpn_repair_waiting{{tunnel="{_label(n)}"}} '
              f'{1 if n in tunnels and tunnels[n].repair.waiting else 0}' for n in names]
    if state is not None and state.bgp is not None:
        lines += _bgp_metrics(state)
    targets = state.extra_targets if state is not None else {}
    if targets:
        lines += ["# HELP hybrid_vpn_target_up Extra probe target answering through the active path (1/0).",
                  "# TYPE hybrid_vpn_target_up gauge"]
        lines += [f'hybrid_vpn_target_up{{target="{_label(n)}"}} {1 if t.up else 0}' for n, t in targets.items()]
    return "\n".join(lines) + "\n"


def _bgp_metrics(state: DaemonState) -> list[str]:
    bgp = state.bgp
    assert bgp is not None
    lines = ["# HELP hybrid_vpn_bgp_advertisement 1 for the outbound route-map each tunnel's BGP neighbor has "
             "(routing.mode bgp: primary, standby = AS path prepended, primary-more-specific = plus the halves).",
             "# TYPE hybrid_vpn_bgp_advertisement gauge"]
    lines += [f'hybrid_vpn_bgp_advertisement{{tunnel="{_label(n)}",route_map="{_label(m)}"}} 1'
              for n, m in sorted(bgp.advertise.items())]
    lines += ["# HELP hybrid_vpn_bgp_steering_changes_total Route-map changes the daemon applied through vtysh.",
              "# TYPE hybrid_vpn_bgp_steering_changes_total counter",
              f"hybrid_vpn_bgp_steering_changes_total {bgp.changes_total}",
              "# HELP hybrid_vpn_bgp_steering_failures_total vtysh calls that failed (each retried).",
              "# TYPE hybrid_vpn_bgp_steering_failures_total counter",
              f"hybrid_vpn_bgp_steering_failures_total {bgp.failures_total}"]
    return lines


def write_metrics(path: Path, state: DaemonState | None, tunnel_names: Sequence[str] = (),
                  switches_total: int = 0) -> None:
    atomic_write_text(path, render_metrics(state, tunnel_names, switches_total))
