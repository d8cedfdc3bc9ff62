"""Desired state and the diffs, pure: no kernel, no root."""

from __future__ import annotations

import copy
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

import pytest
from agent_testlib import BASE_CONFIG

from hostconfig.agent.config import parse_config
from hostconfig.agent.desired import (
    ACTIVE_NEXTHOP,
    NEXTHOP_IDS,
    STANDBY_NEXTHOP,
    ActualLink,
    ActualNexthop,
    ActualRoute,
    ActualRule,
    NexthopSpec,
    RuleSpec,
    TunnelView,
    desired_state,
    diff_addresses,
    diff_links,
    diff_nexthops,
    diff_routes,
    diff_rule,
    diff_sysctls,
    owned_links,
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


def vti(name="vti-aws1", key=100, mtu=1419, up=True, kind="vti", remote="198.51.100.1", alias="mark"):
    alias = f"hybrid-vpn tunnel {name}" if alias == "mark" else alias
    return ActualLink(name, 5, kind, mtu, up, IPv4Address("10.8.0.2"), IPv4Address(remote), key, key, alias)


def test_diff_links_vti_mode():
    desired = desired_state(CFG, TunnelView(BOTH, "tunnel1")).links
    converged = {"vti-aws1": vti(), "vti-aws2": vti("vti-aws2", 200, remote="198.51.100.2")}
    assert diff_links(desired, converged, "vti") == []
    half = {"vti-aws1": vti(key=7, mtu=1500), "vti-aws2": vti("vti-aws2", 200, mtu=1500, up=False,
                                                              remote="198.51.100.2")}
    actions = [(c.action, c.spec.name) for c in diff_links(desired, half, "vti")]
    assert actions == [("recreate_link", "vti-aws1"), ("set_link", "vti-aws2")]
    assert [c.action for c in diff_links(desired, {}, "vti")] == ["create_link", "create_link"]
    # not ours: never recreated (that would delete it), only reported
    wrong_kind = {"vti-aws1": vti(kind="veth"), "vti-aws2": vti("vti-aws2", 200, remote="198.51.100.2")}
    assert [c.action for c in diff_links(desired, wrong_kind, "vti")] == ["foreign_link"]
    assert "vti-aws1 is a veth link, not a VTI the agent made" in diff_links(desired, wrong_kind, "vti")[0].target
    others_vti = {"vti-aws1": vti(key=7, alias=None), "vti-aws2": vti("vti-aws2", 200, remote="198.51.100.2")}
    assert [c.action for c in diff_links(desired, others_vti, "vti")] == ["foreign_link"]
    # a VTI with the tunnel's key but no mark (made before the mark existed) is ours: adopted, marked in place
    unmarked = {"vti-aws1": vti(alias=None), "vti-aws2": vti("vti-aws2", 200, remote="198.51.100.2")}
    assert [c.action for c in diff_links(desired, unmarked, "vti")] == ["set_link"]
    assert owned_links(desired, {**wrong_kind, **{"eth0": vti("eth0")}}, "vti") == {"vti-aws2": wrong_kind["vti-aws2"]}
    assert set(owned_links(desired, wrong_kind, "given")) == {"vti-aws1", "vti-aws2"}


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


def ours(metric, ifname=None, kind="unicast", proto=157, dst=NET, src=SRC, nhid="role"):
    if nhid == "role":
        nhid = {100: ACTIVE_NEXTHOP, 200: STANDBY_NEXTHOP}.get(metric) if kind == "unicast" else None
    return ActualRoute(dst, metric, proto, kind, ifname, src if kind == "unicast" else None, nhid)


LINKS = {"vti-aws1", "vti-aws2"}


def nexthop(nh_id, ifname, proto=157, kind="dev"):
    return ActualNexthop(nh_id, proto, ifname, kind)


def test_desired_routes_reference_one_nexthop_per_role():
    state = desired_state(CFG, TunnelView(BOTH, "tunnel1"))
    assert state.nexthops == (NexthopSpec(ACTIVE_NEXTHOP, "active", "vti-aws1"),
                              NexthopSpec(STANDBY_NEXTHOP, "standby", "vti-aws2"))
    assert {(r.metric, r.nhid) for r in state.routes} == {(100, ACTIVE_NEXTHOP), (200, STANDBY_NEXTHOP),
                                                          (0xFFFFFFFF, None)}
    assert desired_state(CFG, TunnelView(frozenset(), None)).nexthops == ()
    assert ACTIVE_NEXTHOP in NEXTHOP_IDS and STANDBY_NEXTHOP in NEXTHOP_IDS


def test_switch_is_one_nexthop_replace_and_one_delete_whatever_the_cidr_count():
    data = copy.deepcopy(BASE_CONFIG)
    data["aws_cidrs"] = [f"10.{i}.0.0/16" for i in range(100)]
    cfg = parse_config(data)
    before = desired_state(cfg, TunnelView(BOTH, "tunnel1"))
    actual_nh = [nexthop(ACTIVE_NEXTHOP, "vti-aws1"), nexthop(STANDBY_NEXTHOP, "vti-aws2")]
    # the kernel reports the link of the route's nexthop: after the replace the routes show the new link
    actual_routes = [ours(r.metric, r.ifname, r.type, dst=r.dst) for r in before.routes]
    after = desired_state(cfg, TunnelView(frozenset({"tunnel2"}), "tunnel2"))
    nh = diff_nexthops(after.nexthops, actual_nh, 157, LINKS)
    assert [str(c).split(" (")[0] for c in nh.changes] == [
        f"replace_nexthop id {ACTIVE_NEXTHOP} dev vti-aws2",
        f"delete_nexthop id {STANDBY_NEXTHOP} dev vti-aws2 proto 157"]
    assert nh.removed == {STANDBY_NEXTHOP} and nh.unavailable == frozenset() and nh.problems == []
    # no route changes at all: the active routes keep their nexthop id, the standby ones go with their nexthop
    assert diff_routes(after.routes, actual_routes, 157, nh.unavailable, nh.removed) == ([], [])
    # converged: nothing
    assert diff_nexthops(before.nexthops, actual_nh, 157, LINKS).changes == []
    assert diff_routes(before.routes, actual_routes, 157) == ([], [])


def test_diff_nexthops_leaves_foreign_nexthops_alone_and_deletes_only_ours():
    desired = desired_state(CFG, TunnelView(BOTH, "tunnel1")).nexthops
    actual = [nexthop(ACTIVE_NEXTHOP, "vti-aws1", kind="blackhole"),  # ours, wrong: replaced
              nexthop(STANDBY_NEXTHOP, "vti-aws2", proto=4),  # someone else's at our id: reported, left alone
              nexthop(1_519_150, "vti-aws1"),  # our stray: deleted
              nexthop(7, "vti-aws1"),  # outside our id range: not ours whatever its protocol
              nexthop(1_519_160, "eth1", proto=12)]  # in the range, other protocol: not ours
    nh = diff_nexthops(desired, actual, 157, LINKS)
    assert [c.action for c in nh.changes] == ["replace_nexthop", "delete_nexthop"]
    assert nh.changes[1].spec.id == 1_519_150
    assert nh.unavailable == {STANDBY_NEXTHOP} and "protocol 4 (not the agent's)" in nh.problems[0]
    missing_link = diff_nexthops(desired, [], 157, {"vti-aws1"})
    assert [c.action for c in missing_link.changes] == ["add_nexthop"]
    assert missing_link.unavailable == {STANDBY_NEXTHOP}
    assert "link vti-aws2 is missing, down or not the agent's" in missing_link.problems[0]


def test_diff_routes_strays_foreign_and_unavailable_nexthops():
    desired = desired_state(CFG, TunnelView(BOTH, "tunnel1")).routes
    stray = ours(100, "vti-aws1", dst=IPv4Network("192.0.2.0/24"))
    foreign = ours(50, "vti-aws1", proto=4, dst=IPv4Network("10.0.0.0/16"))
    wrong_src = ours(100, "vti-aws1", src=IPv4Address("169.254.10.2"))
    changes, problems = diff_routes(desired, [stray, foreign, wrong_src], 157, frozenset({STANDBY_NEXTHOP}))
    assert [str(c).split(" (")[0] for c in changes] == [
        f"replace_route 10.0.0.0/16 metric 100 nhid {ACTIVE_NEXTHOP} dev vti-aws1 src 172.16.1.1",
        "replace_route 10.0.0.0/16 metric 4294967295 unreachable",
        "delete_route 192.0.2.0/24 metric 100 unicast dev vti-aws1",
    ]
    assert problems == []
    # a route of the old kind (dev, no nexthop) is replaced by one via the nexthop
    old_kind = ours(100, "vti-aws1", nhid=None)
    changes, _ = diff_routes(desired, [old_kind], 157)
    assert changes[0].action == "replace_route" and changes[0].spec.nhid == ACTIVE_NEXTHOP


def test_diff_routes_never_clobbers_a_foreign_route_with_our_key():
    desired = desired_state(CFG, TunnelView(BOTH, "tunnel1")).routes
    foreign = ours(0xFFFFFFFF, kind="blackhole", proto=4)
    changes, problems = diff_routes(desired, [foreign], 157)
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
