#!/usr/bin/env python3
"""Load benchmark of the agent's reconcile at the contract's maximum size (prints numbers; needs root).

100 AWS CIDRs (300 routes in our table) and 10 VLAN CIDRs, with agent.json and the nftables ruleset rendered by
hostconfig from the default host_config (real templates). In a fresh namespace pair (veth "tunnels", link mode
'given': this host kernel has no ip_vti) it times:
  cold    first reconcile: links up, addresses, sysctls, 300 routes, the rule, the nft table (nft -f);
  warm    converged, nothing to apply (reads routes/rules/links, fingerprints the nft table), repeated --warm-runs;
  switch  failover fast path (routes only): 100 replaces + 100 standby deletes, then back (failback, 200 replaces).
Usage: .venv/bin/python bench/load_bench.py [--warm-runs 20] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # testlib
sys.path.insert(0, str(REPO / "tests" / "agent"))
sys.path.insert(0, str(REPO / "tests" / "hardening"))

from agent_testlib import run_in_netns, wire_gateway  # noqa: E402
from hardening_lib import LOAD_AWS_CIDRS, LOAD_VLAN_CIDRS, without_ipv6, write_rendered_files  # noqa: E402

BOTH = frozenset({"tunnel1", "tunnel2"})


def _timed(config: str, steps: list[tuple[frozenset[str], str | None, bool]]) -> list[tuple[float, int]]:
    from hostconfig.agent.config import load_config
    from hostconfig.agent.desired import TunnelView
    from hostconfig.agent.kernel import Kernel
    from hostconfig.agent.reconcile import Reconciler

    cfg = load_config(config)
    out = []
    with Kernel() as kernel:
        reconciler = Reconciler(cfg, kernel, "given")
        for up, active, routes_only in steps:
            started = time.perf_counter()
            result = reconciler.run(TunnelView(up, active), routes_only=routes_only)
            out.append((time.perf_counter() - started, len(result.changes)))
            if result.problems:
                raise RuntimeError(result.problems)
    return out


def one_round(warm_runs: int) -> dict[str, list[tuple[float, int]]]:
    made: list[str] = []
    try:
        with tempfile.TemporaryDirectory(prefix="load-bench-") as tmp:
            for prefix in ("hvlbgw", "hvlbaws"):
                name = f"{prefix}-{uuid.uuid4().hex[:8]}"
                subprocess.run(["ip", "netns", "add", name], check=True)
                subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
                made.append(name)
            gw, aws = made
            without_ipv6(gw)
            config, data = write_rendered_files(Path(tmp), LOAD_AWS_CIDRS, LOAD_VLAN_CIDRS)
            wire_gateway(gw, aws, data)
            cold = run_in_netns(gw, _timed, str(config), [(BOTH, "tunnel1", False)])
            warm = run_in_netns(gw, _timed, str(config), [(BOTH, "tunnel1", False)] * warm_runs)
            switch = run_in_netns(gw, _timed, str(config), [(frozenset({"tunnel2"}), "tunnel2", True)])
            failback = run_in_netns(gw, _timed, str(config), [(BOTH, "tunnel1", True)])
            if any(changes for _, changes in warm):
                raise RuntimeError("a warm run applied changes: not idempotent")
            return {"cold": cold, "warm": warm, "switch": switch, "failback": failback}
    finally:
        for name in reversed(made):
            subprocess.run(["ip", "netns", "del", name], check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--warm-runs", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3, help="fresh namespaces per round")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("load_bench: needs root (network namespaces)", file=sys.stderr)
        return 2
    print(f"{len(LOAD_AWS_CIDRS)} AWS CIDRs ({3 * len(LOAD_AWS_CIDRS)} routes), {len(LOAD_VLAN_CIDRS)} VLAN CIDRs, "
          f"{args.rounds} round(s)")
    print(f"{'round':>5} {'cold ms':>9} {'chg':>4} {'warm med ms':>12} {'warm max ms':>12} {'switch ms':>10} {'chg':>4}"
          f" {'failback ms':>12} {'chg':>4}")
    for i in range(args.rounds):
        r = one_round(args.warm_runs)
        warm = [t for t, _ in r["warm"]]
        print(f"{i + 1:>5} {r['cold'][0][0] * 1000:>9.1f} {r['cold'][0][1]:>4} {statistics.median(warm) * 1000:>12.1f}"
              f" {max(warm) * 1000:>12.1f} {r['switch'][0][0] * 1000:>10.1f} {r['switch'][0][1]:>4}"
              f" {r['failback'][0][0] * 1000:>12.1f} {r['failback'][0][1]:>4}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
