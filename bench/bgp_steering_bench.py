#!/usr/bin/env python3
"""Benchmark of BGP steering (routing.mode bgp, issue 16): how fast the 'AWS' side's kernel moves its return traffic
(AWS -> VLAN direction) after the agent's steering, with real FRR 8.4 (zebra + bgpd) in two namespaces over two veth
'tunnels' (needs root and Debian's frr; no IPsec: the host kernel has none, and BGP steering does not need it).

Per run: the primary tunnel's link drops every packet (link up, as a VTI whose ESP died), the agent's failover steering
is applied (vtysh), and the time until every more-specific half is in the AWS namespace's kernel via the other link is
taken; then the link heals and the steady steering (failback) is timed until the halves are gone. The numbers are
FRR-to-FRR on one machine: AWS's own processing time of a BGP update is not published. Usage:
    .venv/bin/python bench/bgp_steering_bench.py [--runs 10] [--cidrs 1,33]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from frr_testlib import (  # noqa: E402
    aws_bgp_routes,
    drop_link,
    frr_missing,
    frr_pair,
    heal_link,
    wire_tunnels,
)
from testlib import wait_for  # noqa: E402

FIXTURE = REPO / "tests" / "fixtures" / "host_config.default.json"


def plan_with(cidrs: int):
    from hostconfig.plan import GatewayPlan

    obj = json.loads(FIXTURE.read_text())
    obj["routing"] = {"mode": "bgp", "customer_asn": 65000, "amazon_side_asn": 64512}
    if cidrs > 1:
        obj["linode"]["vlan_cidrs"] = [f"172.16.{i}.0/24" for i in range(cidrs)]
        obj["gateway"]["vlan_address"] = "172.16.1.1/24"
    return GatewayPlan.from_host_config(obj)


def one_size(cidrs: int, runs: int) -> dict[str, list[float]]:
    from hostconfig.agent.bgp import steer
    from hostconfig.agent.desired import TunnelView
    from hostconfig.agent.frr import apply_steering
    from hostconfig.contract import rules

    plan = plan_with(cidrs)
    tunnels = tuple(t.name for t in plan.tunnels)
    primary = plan.failover.primary
    other = next(n for n in tunnels if n != primary)
    neighbors = {t.name: str(t.aws_inside_ip) for t in plan.tunnels}
    halves = {str(h) for n in plan.vlan_cidrs for h in rules.more_specific_halves(n)}
    vlan = {str(n) for n in plan.vlan_cidrs}
    failover = steer(tunnels, primary, TunnelView(frozenset({other}), other))
    steady = steer(tunnels, primary, TunnelView(frozenset(tunnels), primary))
    made: list[str] = []
    out: dict[str, list[float]] = {"apply_ms": [], "failover_ms": [], "failback_ms": []}
    try:
        for prefix in ("hvbbgw", "hvbbaws"):
            name = f"{prefix}-{uuid.uuid4().hex[:8]}"
            subprocess.run(["ip", "netns", "add", name], check=True)
            made.append(name)
            subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        gw, aws = made
        links = wire_tunnels(gw, aws, plan)
        with frr_pair(gw, aws, plan) as (gateway, amazon):
            primary_peer = str(plan.tunnel(primary).gateway_inside_ip)

            def settled_on(link: str, with_halves: bool) -> bool:
                routes = aws_bgp_routes(aws)
                want = vlan | halves if with_halves else vlan
                return set(routes) == want and all(routes[p] == link for p in (halves if with_halves else vlan))

            for _ in range(runs):
                wait_for(lambda: amazon.neighbor_states().get(primary_peer) == "Established", timeout=120,
                         what="the primary's session")
                apply_steering(steady, asn=plan.routing.customer_asn, neighbors=neighbors, run=gateway.vtysh)
                wait_for(lambda: settled_on(links[primary], False), timeout=120, what="steady state")
                drop_link(gw, plan.tunnel(primary).interface)
                started = time.perf_counter()
                apply_steering(failover, asn=plan.routing.customer_asn, neighbors=neighbors, run=gateway.vtysh)
                out["apply_ms"].append((time.perf_counter() - started) * 1000)
                wait_for(lambda: settled_on(links[other], True), timeout=120, interval=0.005, what="failover")
                out["failover_ms"].append((time.perf_counter() - started) * 1000)
                heal_link(gw)
                wait_for(lambda: amazon.neighbor_states().get(primary_peer) == "Established", timeout=120,
                         what="the primary's session after healing")
                started = time.perf_counter()
                apply_steering(steady, asn=plan.routing.customer_asn, neighbors=neighbors, run=gateway.vtysh)
                wait_for(lambda: settled_on(links[primary], False), timeout=120, interval=0.005, what="failback")
                out["failback_ms"].append((time.perf_counter() - started) * 1000)
    finally:
        for name in reversed(made):
            subprocess.run(["ip", "netns", "del", name], check=False)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--cidrs", default="1,33", help="VLAN CIDR counts to measure (33: AWS's 100-route limit)")
    args = parser.parse_args()
    if reason := frr_missing():
        sys.exit(reason)
    print("AWS -> VLAN direction, primary's data path dead (link up, all packets dropped); FRR 8.4 both ends")
    print("bound without steering: AWS's BGP hold time 30 s (static mode: AWS's DPD timeout, 30 s min, 40 s default)")
    for cidrs in (int(c) for c in args.cidrs.split(",")):
        numbers = one_size(cidrs, args.runs)
        summary = ", ".join(f"{name} median {statistics.median(v):.0f} (min {min(v):.0f}, max {max(v):.0f})"
                            for name, v in numbers.items())
        print(f"{cidrs} VLAN CIDR(s) ({cidrs * 3} routes), {args.runs} runs: {summary}")


if __name__ == "__main__":
    main()
