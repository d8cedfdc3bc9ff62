"""Desired state and the diffs, pure: no kernel, no root."""

from __future__ import annotations

import copy
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

import pytest
from agent_testlib import BASE_CONFIG

from hostconfig.agent.config import parse_config
from hostconfig.agent.desired import (
    ActualLink,
    ActualRoute,
    ActualRule,
    RouteSpec,
    RuleSpec,
    TunnelView,
    desired_state,
    diff_addresses,
    diff_links,
    diff_routes,
    diff_rule,
    diff_sysctls,
)

CFG = parse_config(copy.deepcopy(BASE_CONFIG))
NET = IPv4Network("10.0.0.0/16")
SRC = IPv4Address("172.16.1.1")
BOTH = frozenset({"tunnel1", "tunnel2"})


def routes_of(view: TunnelView, cfg=CFG):
    return {(r.dst, r.metric): (r.type, r.ifname, r.src) for r in desired_state(cfg, view).routes}


def test_both_up_active_primary():
    assert routes_of(TunnelView(BOTH, "tunnel1")) == {
        (NET, 100): ("unicast", "vti-aws1", SRC),
        (NET, 200): ("unicast", "vti-aws2", SRC),
        (NET, 0xFFFFFFFF): ("unreachable", None, None),
    }


def test_active_secondary_and_unhealthy_standby_has_no_route():
    assert routes_of(TunnelView(frozenset({"tunnel2"}), "tunnel2")) == {
        (NET, 100): ("unicast", "vti-aws2", SRC),
        (NET, 0xFFFFFFFF): ("unreachable", None, None),
    }


def test_both_down_leaves_only_the_unreachable_route():
    assert routes_of(TunnelView(frozenset(), None)) == {(NET, 0xFFFFFFFF): ("unreachable", None, None)}


def test_every_aws_cidr_gets_its_three_routes():
    data = copy.deepcopy(BASE_CONFIG)
    data["aws_cidrs"] = [f"10.{i}.0.0/16" for i in range(100)]
    cfg = parse_config(data)
    assert len(desired_state(cfg, TunnelView(BOTH, "tunnel1")).routes) == 300


def test_links_addresses_sysctls_rule_do_not_depend_on_health():
    a = desired_state(CFG, TunnelView(BOTH, "tunnel1"))
    b = desired_state(CFG, TunnelView(frozenset(), None))
    assert (a.links, a.addresses, a.sysctls, a.rule) == (b.links, b.addresses, b.sysctls, b.rule)
    assert [(x.name, x.key, str(x.local), str(x.remote), x.mtu) for x in a.links] == [
        ("vti-aws1", 100, "10.8.0.2", "198.51.100.1", 1419), ("vti-aws2", 200, "10.8.0.2", "198.51.100.2", 1419)]
    assert a.sysctls["net/ipv4/ip_forward"] == "1"
    assert a.sysctls["net/ipv4/conf/vti-aws2/disable_policy"] == "1"
    assert a.sysctls["net/ipv4/conf/vti-aws1/rp_filter"] == "2"
    assert a.rule == RuleSpec(10100, 1519)


def test_view_rejects_active_that_is_not_up_and_unknown_names():
    with pytest.raises(ValueError):
        TunnelView(frozenset({"tunnel2"}), "tunnel1")
    with pytest.raises(ValueError, match="unknown tunnel"):
        desired_state(CFG, TunnelView(frozenset({"tunnel9"}), None))


def vti(name="vti-aws1", key=100, mtu=1419, up=True, kind="vti", remote="198.51.100.1"):
    return ActualLink(name, 5, kind, mtu, up, IPv4Address("10.8.0.2"), IPv4Address(remote), key, key)


def test_diff_links_vti_mode():
    desired = desired_state(CFG, TunnelView(BOTH, "tunnel1")).links
    converged = {"vti-aws1": vti(), "vti-aws2": vti("vti-aws2", 200, remote="198.51.100.2")}
    assert diff_links(desired, converged, "vti") == []
    half = {"vti-aws1": vti(key=7, mtu=1500), "vti-aws2": vti("vti-aws2", 200, mtu=1500, up=False,
                                                              remote="198.51.100.2")}
    actions = [(c.action, c.spec.name) for c in diff_links(desired, half, "vti")]
    assert actions == [("recreate_link", "vti-aws1"), ("set_link", "vti-aws2")]
    assert [c.action for c in diff_links(desired, {}, "vti")] == ["create_link", "create_link"]
    wrong_kind = {"vti-aws1": vti(kind="veth"), "vti-aws2": vti("vti-aws2", 200, remote="198.51.100.2")}
    assert [c.action for c in diff_links(desired, wrong_kind, "vti")] == ["recreate_link"]


def test_diff_links_given_mode_never_creates_and_ignores_kind():
    desired = desired_state(CFG, TunnelView(BOTH, "tunnel1")).links
    links = {"vti-aws1": ActualLink("vti-aws1", 3, "veth", 1500, False)}
    assert [(c.action, c.spec.name) for c in diff_links(desired, links, "given")] == [
        ("set_link", "vti-aws1"), ("missing_link", "vti-aws2")]


def test_diff_addresses_removes_foreign_addresses_on_our_links_only():
    desired = desired_state(CFG, TunnelView(BOTH, "tunnel1")).addresses
    actual = {"vti-aws1": (IPv4Interface("169.254.10.2/29"),), "vti-aws2": (IPv4Interface("169.254.11.2/30"),)}
    assert [str(c) for c in diff_addresses(desired, actual)] == [
        "delete_address 169.254.10.2/29 dev vti-aws1", "add_address 169.254.10.2/30 dev vti-aws1"]


def test_diff_sysctls():
    desired = {"net/ipv4/ip_forward": "1", "net/ipv4/conf/vti-aws1/rp_filter": "2"}
    assert diff_sysctls(desired, {"net/ipv4/ip_forward": "1", "net/ipv4/conf/vti-aws1/rp_filter": "2"}) == []
    assert [c.spec for c in diff_sysctls(desired, {"net/ipv4/ip_forward": "0",
                                                   "net/ipv4/conf/vti-aws1/rp_filter": None})] == [
        ("net/ipv4/ip_forward", "1")]


def ours(metric, ifname=None, kind="unicast", proto=157, dst=NET, src=SRC):
    return ActualRoute(dst, metric, proto, kind, ifname, src if kind == "unicast" else None)


LINKS = {"vti-aws1", "vti-aws2"}


def test_diff_routes_converged_is_empty_and_switch_is_one_replace():
    desired = desired_state(CFG, TunnelView(BOTH, "tunnel1")).routes
    actual = [ours(100, "vti-aws1"), ours(200, "vti-aws2"), ours(0xFFFFFFFF, kind="unreachable")]
    assert diff_routes(desired, actual, 157, LINKS) == ([], [])
    switched = desired_state(CFG, TunnelView(frozenset({"tunnel2"}), "tunnel2")).routes
    changes, problems = diff_routes(switched, actual, 157, LINKS)
    assert [c.action for c in changes] == ["replace_route", "delete_route"]
    assert changes[0].spec == RouteSpec(NET, 100, "unicast", "vti-aws2", SRC)
    assert changes[1].spec.metric == 200 and problems == []


def test_diff_routes_strays_foreign_and_missing_links():
    desired = desired_state(CFG, TunnelView(BOTH, "tunnel1")).routes
    stray = ours(100, "vti-aws1", dst=IPv4Network("192.0.2.0/24"))
    foreign = ours(50, "vti-aws1", proto=4, dst=IPv4Network("10.0.0.0/16"))
    wrong_src = ours(100, "vti-aws1", src=IPv4Address("169.254.10.2"))
    changes, problems = diff_routes(desired, [stray, foreign, wrong_src], 157, {"vti-aws1"})
    assert [str(c).split(" (")[0] for c in changes] == [
        "replace_route 10.0.0.0/16 metric 100 dev vti-aws1 src 172.16.1.1",
        "replace_route 10.0.0.0/16 metric 4294967295 unreachable",
        "delete_route 192.0.2.0/24 metric 100 unicast dev vti-aws1",
    ]
    assert problems == ["route 10.0.0.0/16 metric 200 dev vti-aws2 src 172.16.1.1: link vti-aws2 is missing or down"]


def test_diff_routes_never_clobbers_a_foreign_route_with_our_key():
    desired = desired_state(CFG, TunnelView(BOTH, "tunnel1")).routes
    foreign = ours(0xFFFFFFFF, kind="blackhole", proto=4)
    changes, problems = diff_routes(desired, [foreign], 157, LINKS)
    assert all(c.spec.metric != 0xFFFFFFFF for c in changes)
    assert "protocol 4 holds the same destination" in problems[0]


def test_diff_rule():
    want = RuleSpec(10100, 1519)
    good = ActualRule(10100, 1519)
    assert diff_rule(want, [good]) == []
    assert [c.action for c in diff_rule(want, [])] == ["add_rule"]
    wrong = ActualRule(10100, 254)
    marked = ActualRule(10100, 1519, selectors=(("FRA_FWMARK", 100),))
    assert [c.action for c in diff_rule(want, [wrong, marked])] == ["add_rule", "delete_rule", "delete_rule"]
    assert [c.action for c in diff_rule(want, [good, good])] == ["delete_rule"]
