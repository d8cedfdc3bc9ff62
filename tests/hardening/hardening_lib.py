"""Helpers shared by the hardening tests: a kernel-state snapshot read through `ip -j` / `nft -j` (never through the
code under test), a directory fingerprint, and running `vpnctl` in a namespace with an arbitrary environment."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


def kernel_snapshot(ns: str) -> dict[str, str]:
    """Everything the agent could touch, as the kernel reports it: routes of every table, rules, links, addresses,
    the nftables ruleset and the sysctls the agent writes. Compared byte for byte."""

    def run(*argv: str) -> str:
        proc = subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, check=True)
        return proc.stdout

    snap = {
        "routes": run("ip", "-j", "route", "show", "table", "all"),
        "rules": run("ip", "-j", "rule", "show"),
        "links": run("ip", "-j", "link", "show"),
        "addresses": run("ip", "-j", "addr", "show"),
        "nft": run("nft", "-j", "list", "ruleset"),
    }
    sysctls = []
    for dev in ("all", "vti-aws1", "vti-aws2"):
        for key in ("rp_filter", "disable_policy"):
            sysctls.append(run("sh", "-c", f"cat /proc/sys/net/ipv4/conf/{dev}/{key} 2>/dev/null || true").strip())
    sysctls.append(run("cat", "/proc/sys/net/ipv4/ip_forward").strip())
    snap["sysctls"] = " ".join(sysctls)
    return snap


def tree_fingerprint(root: Path) -> dict[str, str]:
    """Relative path -> mode and sha256 of every file and directory under ``root`` (empty when it does not exist)."""
    out: dict[str, str] = {}
    if not root.exists():
        return out
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        rel = str(path.relative_to(root))
        if path.is_file():
            out[rel] = f"{st.st_mode:o} {hashlib.sha256(path.read_bytes()).hexdigest()}"
        else:
            out[rel] = f"{st.st_mode:o}"
    return out


def vpnctl(ns: str, config: Path, *args: str, env: dict | None = None,
           timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
    """`python -m hostconfig.agent.cli ARGS --config CONFIG` in namespace ``ns``; ``env`` may hold bytes (non-UTF8)."""
    base: dict = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "PYTHONPATH": str(REPO)}
    if env and any(isinstance(k, bytes) or isinstance(v, bytes) for k, v in env.items()):
        full: dict = {k.encode(): v.encode() for k, v in base.items()}
        full.update({(k if isinstance(k, bytes) else k.encode()): (v if isinstance(v, bytes) else v.encode())
                     for k, v in env.items()})
    else:
        full = {**base, **(env or {})}
    return subprocess.run(["ip", "netns", "exec", ns, PYTHON, "-m", "hostconfig.agent.cli", *args,
                           "--config", str(config)], capture_output=True, env=full, timeout=timeout)


def without_ipv6(ns: str) -> None:
    """The agent is IPv4 only; IPv6 duplicate address detection would change addresses and local routes while a
    test compares snapshots, so the gateway namespace runs without IPv6 (set before any link is made)."""
    for key in ("all", "default"):
        subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w", f"net.ipv6.conf.{key}.disable_ipv6=1"],
                       check=True)


def route_get(ns: str, dst: str) -> tuple[int, str]:
    """(exit code, output) of `ip route get DST` in the namespace: what a packet to DST would take right now."""
    proc = subprocess.run(["ip", "-n", ns, "-j", "route", "get", dst], capture_output=True, text=True)
    return proc.returncode, (proc.stdout if proc.returncode == 0 else proc.stderr).strip()


def table_routes(ns: str, table: int = 1519) -> list[dict]:
    out = subprocess.run(["ip", "-n", ns, "-j", "route", "show", "table", str(table)], capture_output=True,
                         text=True, check=True).stdout
    return json.loads(out or "[]")


LOAD_AWS_CIDRS = [f"10.{2 * i + 1}.0.0/16" for i in range(100)]  # not adjacent: nft keeps 100 separate intervals
LOAD_VLAN_CIDRS = [f"172.16.{32 * i}.0/20" for i in range(8)] + ["192.168.0.0/24", "192.168.2.0/24"]


def write_rendered_files(tmp: Path, aws_cidrs: list[str], vlan_cidrs: list[str]) -> tuple[Path, dict]:
    """agent.json + nftables.nft rendered by hostconfig from the default host_config with these CIDRs (the real
    templates, not a hand-written ruleset), paths moved under ``tmp``. Returns (config path, agent.json dict)."""
    from hostconfig.gateway_paths import AGENT_CONFIG, NFT_RULESET
    from hostconfig.plan import GatewayPlan
    from hostconfig.render import render_gateway_files

    host_config = json.loads((REPO / "tests" / "fixtures" / "host_config.default.json").read_text())
    host_config["aws"]["cidrs"] = aws_cidrs
    host_config["linode"]["vlan_cidrs"] = vlan_cidrs
    files = {f.path: f.content for f in render_gateway_files(GatewayPlan.from_host_config(host_config))}
    data = json.loads(files[AGENT_CONFIG.path])
    data["paths"] = {"nft_ruleset": str(tmp / "nftables.nft"), "state_dir": str(tmp / "state"),
                     "metrics_file": str(tmp / "metrics" / "hybrid_vpn.prom"), "vici_socket": str(tmp / "charon.vici")}
    (tmp / "nftables.nft").write_bytes(files[NFT_RULESET.path])
    config = tmp / "agent.json"
    config.write_text(json.dumps(data, indent=2))
    return config, data
