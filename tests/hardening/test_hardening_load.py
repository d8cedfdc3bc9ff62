"""Load (root): 100 AWS CIDRs and 10 VLAN CIDRs, with the real rendered agent.json and nftables ruleset. One
reconcile installs all 300 routes with the right metrics and the nft sets hold every CIDR; a second run applies
nothing; a switch moves all 100 active routes. Timing is printed by bench/load_bench.py, never asserted here."""

from __future__ import annotations

import json
import subprocess
from collections import Counter

import pytest
from agent_testlib import run_in_netns, wire_gateway
from hardening_lib import LOAD_AWS_CIDRS, LOAD_VLAN_CIDRS, route_get, table_routes, without_ipv6, write_rendered_files

pytestmark = pytest.mark.root

BOTH = frozenset({"tunnel1", "tunnel2"})


def _reconcile(config: str, up: frozenset[str], active: str | None, routes_only: bool = False):
    from hostconfig.agent.config import load_config
    from hostconfig.agent.desired import TunnelView
    from hostconfig.agent.kernel import Kernel
    from hostconfig.agent.reconcile import Reconciler

    with Kernel() as kernel:
        result = Reconciler(load_config(config), kernel, "given").run(TunnelView(up, active), routes_only=routes_only)
    return [c.action for c in result.changes], result.problems


def nft_set(ns: str, name: str) -> set[str]:
    out = subprocess.run(["ip", "netns", "exec", ns, "nft", "-j", "list", "set", "inet", "hybrid_vpn", name],
                         capture_output=True, text=True, check=True).stdout
    elements = json.loads(out)["nftables"][1]["set"].get("elem", [])
    found = set()
    for element in elements:
        prefix = element.get("prefix") if isinstance(element, dict) else None
        found.add(f"{prefix['addr']}/{prefix['len']}" if prefix else str(element))
    return found


def by_metric(ns: str) -> dict[int, dict[str, str]]:
    """metric -> {dst: dev or type}, with every route checked to be ours (protocol 157)."""
    out: dict[int, dict[str, str]] = {}
    for route in table_routes(ns):
        assert route.get("protocol") == "157", route
        out.setdefault(route["metric"], {})[route["dst"]] = route.get("dev") or route["type"]
        if route.get("dev"):
            assert route.get("prefsrc") == "172.16.1.1", route
    return out


def test_hundred_aws_and_ten_vlan_cidrs(netns, tmp_path):
    gw, aws = netns("hvlgw"), netns("hvlaws")
    without_ipv6(gw)
    config, data = write_rendered_files(tmp_path, LOAD_AWS_CIDRS, LOAD_VLAN_CIDRS)
    wire_gateway(gw, aws, data)
    subprocess.run(["ip", "-n", gw, "link", "add", "eth0", "type", "veth", "peer", "name", "wan0"], check=True)

    changes, problems = run_in_netns(gw, _reconcile, str(config), BOTH, "tunnel1")
    assert problems == []
    counts = Counter(changes)
    assert counts["replace_route"] == 300 and counts["add_rule"] == 1 and counts["apply_nft"] == 1
    table = by_metric(gw)
    assert set(table) == {100, 200, 4294967295}
    assert table[100] == {c: "vti-aws1" for c in LOAD_AWS_CIDRS}
    assert table[200] == {c: "vti-aws2" for c in LOAD_AWS_CIDRS}
    assert table[4294967295] == {c: "unreachable" for c in LOAD_AWS_CIDRS}
    assert nft_set(gw, "aws_cidrs") == set(LOAD_AWS_CIDRS)
    assert nft_set(gw, "vlan_cidrs") == set(LOAD_VLAN_CIDRS)
    rules = subprocess.run(["ip", "-n", gw, "rule", "show", "pref", "10100"], capture_output=True, text=True).stdout
    assert rules.strip() == "10100:\tfrom all lookup 1519 proto 157"

    assert run_in_netns(gw, _reconcile, str(config), BOTH, "tunnel1") == ([], [])

    changes, problems = run_in_netns(gw, _reconcile, str(config), frozenset({"tunnel2"}), "tunnel2", True)
    assert problems == []
    # one message moves all 100 active routes (their nexthop), then the standby nexthop goes with its 100 routes
    assert changes == ["replace_nexthop", "delete_nexthop"]
    table = by_metric(gw)
    assert table[100] == {c: "vti-aws2" for c in LOAD_AWS_CIDRS} and 200 not in table
    assert len(table[4294967295]) == 100
    for cidr in (LOAD_AWS_CIDRS[0], LOAD_AWS_CIDRS[57], LOAD_AWS_CIDRS[-1]):
        code, out = route_get(gw, cidr.replace(".0.0/16", ".4.85"))
        assert code == 0 and '"dev":"vti-aws2"' in out, out
    assert run_in_netns(gw, _reconcile, str(config), frozenset({"tunnel2"}), "tunnel2") == ([], [])
