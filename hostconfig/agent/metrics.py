"""Prometheus textfile-collector output (node_exporter --collector.textfile.directory), rendered from a snapshot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .health import REPAIR_KINDS
from .state import atomic_write_text


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_metrics(snapshot: dict[str, Any]) -> str:
    """``snapshot`` is the daemon state (see daemon.FailoverDaemon.snapshot): tunnels, active, switches_total."""
    tunnels: dict[str, Any] = snapshot.get("tunnels", {})
    active = snapshot.get("active")
    lines = [
        "# HELP hybrid_vpn_tunnel_up Tunnel health from the failover probes (1 up, 0 down).",
        "# TYPE hybrid_vpn_tunnel_up gauge",
    ]
    lines += [f'hybrid_vpn_tunnel_up{{tunnel="{_label(n)}"}} {1 if t.get("up") else 0}' for n, t in tunnels.items()]
    lines += [
        "# HELP hybrid_vpn_active_tunnel 1 for the tunnel carrying traffic (metric-100 route), else 0.",
        "# TYPE hybrid_vpn_active_tunnel gauge",
    ]
    lines += [f'hybrid_vpn_active_tunnel{{tunnel="{_label(n)}"}} {1 if n == active else 0}' for n in tunnels]
    lines += [
        "# HELP hybrid_vpn_probe_rtt_seconds Round-trip time of the last answered probe to the AWS inside address.",
        "# TYPE hybrid_vpn_probe_rtt_seconds gauge",
    ]
    lines += [f'hybrid_vpn_probe_rtt_seconds{{tunnel="{_label(n)}"}} {t["rtt_seconds"]:.6f}'
              for n, t in tunnels.items() if t.get("rtt_seconds") is not None]
    lines += [
        "# HELP hybrid_vpn_switches_total Active-tunnel changes made by this daemon since it started.",
        "# TYPE hybrid_vpn_switches_total counter",
        f"hybrid_vpn_switches_total {int(snapshot.get('switches_total', 0))}",
    ]
    lines += [
        "# HELP hybrid_vpn_repairs_total Data-path repairs by this daemon since it started: reestablish (IKE_SA deleted"
        " and the child initiated again), dedupe (duplicate IKE/CHILD_SAs deleted).",
        "# TYPE hybrid_vpn_repairs_total counter",
    ]
    lines += [f'hybrid_vpn_repairs_total{{tunnel="{_label(n)}",kind="{kind}"}} '
              f'{int(((t.get("repair") or {}).get("by_kind") or {}).get(kind, 0))}'
              for n, t in tunnels.items() for kind in REPAIR_KINDS]
    lines += [
        "# HELP hybrid_vpn_repair_waiting 1 while a tunnel's data path is dead but a repair is held back (hold, "
        "backoff, one at a time, or the last tunnel with a CHILD_SA).",
        "# TYPE hybrid_vpn_repair_waiting gauge",
    ]
    lines += [f'hybrid_vpn_repair_waiting{{tunnel="{_label(n)}"}} {1 if (t.get("repair") or {}).get("waiting") else 0}'
              for n, t in tunnels.items()]
    targets: dict[str, Any] = snapshot.get("extra_targets", {})
    if targets:
        lines += ["# HELP hybrid_vpn_target_up Extra probe target answering through the active path (1/0).",
                  "# TYPE hybrid_vpn_target_up gauge"]
        lines += [f'hybrid_vpn_target_up{{target="{_label(n)}"}} {1 if t.get("up") else 0}'
                  for n, t in targets.items()]
    return "\n".join(lines) + "\n"


def write_metrics(path: Path, snapshot: dict[str, Any]) -> None:
    atomic_write_text(path, render_metrics(snapshot))
