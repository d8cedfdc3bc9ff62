"""`vpnctl doctor`'s pure half: every check against healthy facts (all ok) and against each broken fact (that one
line fails with the right hint, the others stay ok); the `ip xfrm` and charon-log parsers; the report formats."""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

import pytest

from hostconfig.agent.config import AgentConfig, parse_config
from hostconfig.agent.desired import ActualLink, ActualRoute, ActualRule, TunnelView, desired_state
from hostconfig.agent.doctor import render_json, render_text
from hostconfig.agent.doctor_checks import FAIL, OK, SKIP, CheckResult, evaluate
from hostconfig.agent.doctor_facts import (
    LOG_PATTERNS,
    DaemonFacts,
    DoctorFacts,
    LogFacts,
    NftFacts,
    ProbeFacts,
    SaFacts,
    Unavailable,
    XfrmPolicy,
    XfrmState,
    _recent,
    match_log_lines,
    parse_xfrm_policies,
    parse_xfrm_states,
    read_log_facts,
)
from hostconfig.agent.vici_client import TunnelSaState

AGENT_JSON = {
    "version": 1, "public_interface": "eth0", "vlan_interface": "eth1", "gateway_vlan_address": "172.16.1.1/24",
    "local_outside_ip": "10.8.0.2", "aws_cidrs": ["10.0.0.0/16", "10.1.0.0/16"], "vlan_cidrs": ["172.16.0.0/12"],
    "tunnels": [
        {"name": "tunnel1", "interface": "vti-aws1", "mark": 100, "remote_outside_ip": "198.51.100.1",
         "gateway_inside_cidr": "169.254.10.2/30", "aws_inside_ip": "169.254.10.1"},
        {"name": "tunnel2", "interface": "vti-aws2", "mark": 200, "remote_outside_ip": "198.51.100.2",
         "gateway_inside_cidr": "169.254.11.2/30", "aws_inside_ip": "169.254.11.1"},
    ],
    "mtu": 1419, "primary_tunnel": "tunnel1",
    "probe": {"interval_ms": 200, "timeout_ms": 600, "down_after": 3, "up_after": 5, "failback_hold_seconds": 20,
              "extra_targets": []},
    "ownership": {"route_table": 1519, "route_protocol": 157, "rule_priority": 10100, "nft_table": "hybrid_vpn"},
    "paths": {"nft_ruleset": "/etc/hybrid-vpn/nftables.nft", "state_dir": "/run/hybrid-vpn",
              "metrics_file": "/var/lib/prometheus/node-exporter/hybrid_vpn.prom", "vici_socket": "/run/charon.vici"},
}
CFG: AgentConfig = parse_config(copy.deepcopy(AGENT_JSON))
SRC = IPv4Address("172.16.1.1")
NETS = [IPv4Network("10.0.0.0/16"), IPv4Network("10.1.0.0/16")]


def healthy() -> DoctorFacts:
    links, states, policies = {}, [], []
    for i, t in enumerate(CFG.tunnels):
        links[t.interface] = ActualLink(t.interface, 10 + i, "vti", 1419, True, CFG.local_outside_ip,
                                        t.remote_outside_ip, t.mark, t.mark)
        local, remote = str(CFG.local_outside_ip), str(t.remote_outside_ip)
        states += [XfrmState(local, remote, "esp", 0xC0000001 + i, i + 1, t.mark, 0xFFFFFFFF),
                   XfrmState(remote, local, "esp", 0xC1000001 + i, i + 1, None, None)]
        policies += [XfrmPolicy("out", t.mark, 0xFFFFFFFF, local, remote),
                     XfrmPolicy("in", t.mark, 0xFFFFFFFF, remote, local),
                     XfrmPolicy("fwd", t.mark, 0xFFFFFFFF, remote, local)]
    routes = []
    for net in NETS:
        routes += [ActualRoute(net, 100, 157, "unicast", "vti-aws1", SRC),
                   ActualRoute(net, 200, 157, "unicast", "vti-aws2", SRC),
                   ActualRoute(net, 0xFFFFFFFF, 157, "unreachable")]
    return DoctorFacts(
        link_mode="vti",
        links=links,
        addresses={t.interface: (t.gateway_inside_cidr,) for t in CFG.tunnels},
        sysctls=dict(desired_state(CFG, TunnelView(frozenset(), None)).sysctls),
        routes=routes,
        rules=[ActualRule(10100, 1519)],
        nft=NftFacts("aa" * 32, "aa" * 32, "file loaded in a scratch namespace"),
        xfrm_states=states,
        xfrm_policies=policies,
        sas=SaFacts({t.name: TunnelSaState("ESTABLISHED", "INSTALLED") for t in CFG.tunnels},
                    frozenset({"tunnel1", "tunnel2"})),
        log=LogFacts("charon.log", 120, {name: () for name in LOG_PATTERNS}),
        probes={t.name: ProbeFacts(True, 0.012, route_dev=t.interface) for t in CFG.tunnels},
        daemon=DaemonFacts(True, "tunnel1"),
    )


def by_name(results: list[CheckResult]) -> dict[str, CheckResult]:
    named = {r.name: r for r in results}
    assert len(named) == len(results), "check names must be unique"
    return named


def test_healthy_gateway_every_check_ok():
    results = evaluate(CFG, healthy())
    assert [r for r in results if r.status != OK] == []
    names = set(by_name(results))
    # every item of the guide's checklist that applies to this design has a line
    for expected in ("link vti-aws1", "vti vti-aws2", "address vti-aws1", "sysctl net.ipv4.ip_forward",
                     "sysctl net.ipv4.conf.vti-aws1.disable_policy",
                     "sysctl net.ipv4.conf.vti-aws2.rp_filter", "rule 10100", "route 10.0.0.0/16 active",
                     "route 10.1.0.0/16 standby", "route 10.1.0.0/16 unreachable", "nftables inet hybrid_vpn",
                     "xfrm state tunnel1", "xfrm policy tunnel2", "sa tunnel1", "sa tunnel2",
                     "charon log NO_PROPOSAL_CHOSEN", "charon log AUTHENTICATION_FAILED",
                     "charon log CHILD_SA not established", "charon log IKE_SA deleted", "probe tunnel1",
                     "probe tunnel2", "daemon"):
        assert expected in names
    assert "exit" not in render_text(results)
    assert render_text(results).splitlines()[-1] == f"{len(results)} ok, 0 FAIL, 0 skip"


def _set(field: str, value) -> Callable[[DoctorFacts], DoctorFacts]:
    return lambda f: dataclasses.replace(f, **{field: value})


def _edit(field: str, fn: Callable) -> Callable[[DoctorFacts], DoctorFacts]:
    def apply(f: DoctorFacts) -> DoctorFacts:
        value = copy.deepcopy(getattr(f, field))
        result = fn(value)
        return dataclasses.replace(f, **{field: value if result is None else result})
    return apply


def _link(name: str, **changes) -> Callable[[DoctorFacts], DoctorFacts]:
    return _edit("links", lambda links: links.__setitem__(name, dataclasses.replace(links[name], **changes)))


def _drop_route(net: str, metric: int) -> Callable[[DoctorFacts], DoctorFacts]:
    return _edit("routes", lambda rs: [r for r in rs if not (str(r.dst) == net and r.metric == metric)])


def _replace_route(net: str, metric: int, **changes) -> Callable[[DoctorFacts], DoctorFacts]:
    return _edit("routes", lambda rs: [dataclasses.replace(r, **changes) if (str(r.dst) == net and r.metric == metric)
                                       else r for r in rs])


def _sysctl(key: str, value) -> Callable[[DoctorFacts], DoctorFacts]:
    return _edit("sysctls", lambda s: s.__setitem__(key, value))


def _probe(name: str, **changes) -> Callable[[DoctorFacts], DoctorFacts]:
    return _edit("probes", lambda p: p.__setitem__(name, dataclasses.replace(p[name], **changes)))


def _sa(name: str, ike: str | None, child: str = "NONE", loaded=frozenset({"tunnel1", "tunnel2"})):
    def apply(f: DoctorFacts) -> DoctorFacts:
        states = dict(f.sas.states)
        if ike is None:
            states.pop(name)
        else:
            states[name] = TunnelSaState(ike, child)
        return dataclasses.replace(f, sas=SaFacts(states, loaded))
    return apply


def _log(pattern: str, *lines: str) -> Callable[[DoctorFacts], DoctorFacts]:
    return lambda f: dataclasses.replace(f, log=LogFacts("charon.log", 120, {**f.log.matches, pattern: lines}))


def _both(*fns: Callable[[DoctorFacts], DoctorFacts]) -> Callable[[DoctorFacts], DoctorFacts]:
    def apply(f: DoctorFacts) -> DoctorFacts:
        for fn in fns:
            f = fn(f)
        return f
    return apply


T1_OUT = ("10.8.0.2", "198.51.100.1")
# (id, mutation, the line that must change, its status, a phrase of its hint or found text, other lines allowed to
# change with it because they depend on the same fact)
BROKEN = [
    ("link missing", _edit("links", lambda links: links.pop("vti-aws1") and None), "link vti-aws1", FAIL,
     "vpnctl reconcile", {"vti vti-aws1", "address vti-aws1"}),
    ("link down", _link("vti-aws1", up=False), "link vti-aws1", FAIL, "down", {"route 10.0.0.0/16 active",
                                                                           "route 10.1.0.0/16 active"}),
    ("wrong mtu", _link("vti-aws2", mtu=1500), "link vti-aws2", FAIL, "MTU", set()),
    ("not a vti", _link("vti-aws1", kind="veth", local=None, remote=None, ikey=None, okey=None), "vti vti-aws1",
     FAIL, "is not a VTI", set()),
    ("wrong key", _link("vti-aws1", ikey=101, okey=101), "vti vti-aws1", FAIL, "must equal the CHILD_SA mark 100",
     set()),
    ("wrong remote", _link("vti-aws2", remote=IPv4Address("198.51.100.9")), "vti vti-aws2", FAIL, "ends", set()),
    ("given links skip vti identity", _set("link_mode", "given"), "vti vti-aws1", SKIP, "link mode 'given'",
     {"vti vti-aws2"}),
    ("address missing", _edit("addresses", lambda a: a.__setitem__("vti-aws1", ())), "address vti-aws1", FAIL,
     "169.254.10.2", set()),
    ("extra address", _edit("addresses", lambda a: a.__setitem__(
        "vti-aws2", (IPv4Interface("169.254.11.2/30"), IPv4Interface("192.0.2.5/24")))), "address vti-aws2", FAIL,
     "exactly", set()),
    ("ip_forward off", _sysctl("net/ipv4/ip_forward", "0"), "sysctl net.ipv4.ip_forward", FAIL,
     "does not forward", set()),
    ("disable_policy off", _sysctl("net/ipv4/conf/vti-aws1/disable_policy", "0"),
     "sysctl net.ipv4.conf.vti-aws1.disable_policy", FAIL, "policy", set()),
    ("rp_filter strict", _sysctl("net/ipv4/conf/vti-aws2/rp_filter", "1"), "sysctl net.ipv4.conf.vti-aws2.rp_filter",
     FAIL, "loose", set()),
    ("rule deleted", _set("rules", []), "rule 10100", FAIL, "never reach table 1519", set()),
    ("foreign rule at our priority", _edit("rules", lambda r: r.append(
        ActualRule(10100, 254, selectors=(("FRA_FWMARK", 100),)))), "rule 10100", FAIL, "not its own", set()),
    ("active route deleted", _drop_route("10.0.0.0/16", 100), "route 10.0.0.0/16 active", FAIL,
     "failover daemon running", {"route 10.0.0.0/16 standby"}),
    ("active route wrong src", _replace_route("10.1.0.0/16", 100, src=IPv4Address("169.254.10.2")),
     "route 10.1.0.0/16 active", FAIL, "source 169.254.10.2", set()),
    ("active route elsewhere", _replace_route("10.0.0.0/16", 100, ifname="eth0"), "route 10.0.0.0/16 active", FAIL,
     "does not go through a tunnel", {"route 10.0.0.0/16 standby"}),
    ("active tunnel dead, other alive", _probe("tunnel1", answered=False, rtt_seconds=None, error="timeout 2s"),
     "route 10.0.0.0/16 active", FAIL, "should have switched", {"route 10.1.0.0/16 active", "probe tunnel1"}),
    ("standby route missing while tunnel2 answers", _drop_route("10.1.0.0/16", 200), "route 10.1.0.0/16 standby",
     FAIL, "answers but is not standby", set()),
    ("standby on the active tunnel", _replace_route("10.0.0.0/16", 200, ifname="vti-aws1"),
     "route 10.0.0.0/16 standby", FAIL, "other tunnel", set()),
    ("standby tunnel dead", _probe("tunnel2", answered=False, rtt_seconds=None), "route 10.0.0.0/16 standby", FAIL,
     "black-hole", {"route 10.1.0.0/16 standby", "probe tunnel2"}),
    ("unreachable route deleted", _drop_route("10.1.0.0/16", 0xFFFFFFFF), "route 10.1.0.0/16 unreachable", FAIL,
     "leak protection missing", set()),
    ("nft table flushed", _set("nft", NftFacts("bb" * 32, "aa" * 32, "scratch")), "nftables inet hybrid_vpn", FAIL,
     "edited or flushed", set()),
    ("nft table deleted", _set("nft", NftFacts(None, "aa" * 32, "scratch")), "nftables inet hybrid_vpn", FAIL,
     "not loaded", set()),
    ("nft file changed, not applied", _set("nft", NftFacts("aa" * 32, None, "agent record", file_changed=True)),
     "nftables inet hybrid_vpn", FAIL, "has not applied it", set()),
    ("nft file invalid", _set("nft", NftFacts("aa" * 32, None, "scratch", problem="nft refuses the ruleset file")),
     "nftables inet hybrid_vpn", FAIL, "re-push", set()),
    ("no SAs in the kernel", _edit("xfrm_states", lambda s: [x for x in s if "198.51.100.1" not in (x.src, x.dst)]),
     "xfrm state tunnel1", FAIL, "no CHILD_SA in the kernel", set()),
    ("outbound SA with a wrong mark", _edit("xfrm_states", lambda s: [
        dataclasses.replace(x, mark=0x65) if (x.src, x.dst) == T1_OUT else x for x in s]), "xfrm state tunnel1",
     FAIL, "mark_out must be 100", set()),
    ("inbound SA missing", _edit("xfrm_states", lambda s: [x for x in s if (x.dst, x.src) != T1_OUT]),
     "xfrm state tunnel1", FAIL, "one direction", set()),
    ("policies with a wrong mark", _edit("xfrm_policies", lambda ps: [
        dataclasses.replace(p, mark=0xC9) if p.mark == 200 else p for p in ps]), "xfrm policy tunnel2", FAIL,
     "mark_in/mark_out must be 200", set()),
    ("policies missing", _edit("xfrm_policies", lambda ps: [p for p in ps if p.mark != 100]), "xfrm policy tunnel1",
     FAIL, "not installed", set()),
    ("charon down", _set("sas", Unavailable("VICI socket /run/charon.vici: Connection refused")), "sa tunnel1",
     FAIL, "systemctl status strongswan", {"sa tunnel2"}),
    ("connection not loaded", _sa("tunnel2", None, loaded=frozenset({"tunnel1"})), "sa tunnel2", FAIL,
     "swanctl --load-all", set()),
    ("IKE not up", _sa("tunnel2", None), "sa tunnel2", FAIL, "AUTHENTICATION_FAILED = PSK", set()),
    ("CHILD_SA missing", _sa("tunnel1", "ESTABLISHED", "NONE"), "sa tunnel1", FAIL, "phase 2 failed", set()),
    ("IKE connecting", _sa("tunnel1", "CONNECTING"), "sa tunnel1", FAIL, "not (yet) established", set()),
    ("proposal mismatch in the log", _log("NO_PROPOSAL_CHOSEN", "charon: 09[IKE] received NO_PROPOSAL_CHOSEN notify"),
     "charon log NO_PROPOSAL_CHOSEN", FAIL, "crypto profile", set()),
    ("psk mismatch in the log", _log("AUTHENTICATION_FAILED", "charon: 12[IKE] received AUTHENTICATION_FAILED"),
     "charon log AUTHENTICATION_FAILED", FAIL, "PSK", set()),
    ("child failure in the log", _log("CHILD_SA not established", "charon: 05[IKE] failed to establish CHILD_SA"),
     "charon log CHILD_SA not established", FAIL, "phase 2", set()),
    ("IKE_SA deleted while a tunnel is down", _both(_sa("tunnel2", None), _log(
        "IKE_SA deleted", "charon: 14[IKE] deleting IKE_SA tunnel2[3] between 10.8.0.2...198.51.100.2")),
     "charon log IKE_SA deleted", FAIL, "not back", {"sa tunnel2"}),
    ("no log source", _set("log", None), "charon log NO_PROPOSAL_CHOSEN", SKIP, "no charon log found",
     {f"charon log {p}" for p in LOG_PATTERNS}),
    ("probe unanswered", _probe("tunnel2", answered=False, rtt_seconds=None, error="timeout 2s"), "probe tunnel2",
     FAIL, "ESP does not pass", {"route 10.0.0.0/16 standby", "route 10.1.0.0/16 standby"}),
    ("probe leaves by the wrong link", _probe("tunnel1", route_dev="eth0"), "probe tunnel1", FAIL,
     "would not go through vti-aws1", set()),
    ("probe source address missing", _probe("tunnel1", answered=False, error="bind 169.254.10.2: Cannot assign "
                                                                            "requested address"),
     "probe tunnel1", FAIL, "is not on the gateway", {"route 10.0.0.0/16 active", "route 10.1.0.0/16 active"}),
    ("probing off", _set("probes", None), "probe tunnel1", SKIP, "--no-probe", {"probe tunnel2"}),
    ("daemon not running", _set("daemon", DaemonFacts(False)), "daemon", FAIL, "hybrid-vpn-failover", set()),
    ("daemon state file stale (full disk)", _set("daemon", DaemonFacts(True, "tunnel1", state_stale=True)), "daemon",
     FAIL, "full or read-only state dir", set()),
    ("not root", _set("routes", Unavailable("PermissionError: [Errno 1] Operation not permitted")),
     "route 10.0.0.0/16 active", FAIL, "as root", {f"route {n} {r}" for n in NETS for r in
                                                  ("active", "standby", "unreachable")}),
]


@pytest.mark.parametrize("mutate,line,status,phrase,also", [b[1:] for b in BROKEN], ids=[b[0] for b in BROKEN])
def test_each_broken_fact_fails_its_own_line_with_the_hint(mutate, line, status, phrase, also):
    before = by_name(evaluate(CFG, healthy()))
    after = by_name(evaluate(CFG, mutate(healthy())))
    assert after[line].status == status, after[line].line()
    text = after[line].line()
    assert phrase in text, text
    changed = {name for name in after if after[name].status != before[name].status}
    assert changed - {line} <= also, f"unexpected lines changed: {sorted(changed - {line} - also)}"


def test_ike_sa_deleted_is_history_once_every_tunnel_is_back():
    facts = _log("IKE_SA deleted", "charon: 14[IKE] deleting IKE_SA tunnel1[1] between ...")(healthy())
    result = by_name(evaluate(CFG, facts))["charon log IKE_SA deleted"]
    assert result.status == OK and "re-established" in result.found


def test_both_tunnels_down_the_missing_active_route_is_explained_as_no_leak():
    facts = healthy()
    facts = _both(_probe("tunnel1", answered=False), _probe("tunnel2", answered=False),
                  _edit("routes", lambda rs: [r for r in rs if r.metric == 0xFFFFFFFF]))(facts)
    result = by_name(evaluate(CFG, facts))
    assert result["route 10.0.0.0/16 active"].status == FAIL
    assert "nothing leaks" in result["route 10.0.0.0/16 active"].hint
    assert result["route 10.0.0.0/16 standby"].status == OK  # no healthy tunnel: no standby expected
    assert result["route 10.0.0.0/16 unreachable"].status == OK


def test_single_tunnel_config_skips_standby():
    data = copy.deepcopy(AGENT_JSON)
    data["tunnels"] = data["tunnels"][:1]
    cfg = parse_config(data)
    facts = healthy()
    facts = dataclasses.replace(facts, probes={"tunnel1": facts.probes["tunnel1"]})
    result = by_name(evaluate(cfg, facts))
    assert result["route 10.0.0.0/16 standby"].status == SKIP
    assert "probe tunnel2" not in result


# ------------------------------------------------------------------------------------------------ parsers

# `ip xfrm state` as iproute2 prints it for a NAT-T CHILD_SA pair (keys included, as the real command prints them).
XFRM_STATE = """src 10.8.0.2 dst 198.51.100.1
\tproto esp spi 0xc5a0b1c2 reqid 1 mode tunnel
\treplay-window 0 flag af-unspec
\tmark 0x64/0xffffffff
\tauth-trunc hmac(sha256) 0x6b6579206d6174657269616c206d757374206e65766572206265207072696e7465 128
\tenc cbc(aes) 0x73656372657420636970686572206b6579206d75737420737461792073656372
\tencap type espinudp sport 4500 dport 4500 addr 0.0.0.0
\tanti-replay context: seq 0x0, oseq 0x5, bitmap 0x00000000
src 198.51.100.1 dst 10.8.0.2
\tproto esp spi 0xc9d8e7f6 reqid 1 mode tunnel
\treplay-window 32 flag af-unspec
\tauth-trunc hmac(sha256) 0x0102030405060708090a0b0c0d0e0f100102030405060708090a0b0c0d0e0f10 128
\tenc cbc(aes) 0x1112131415161718191a1b1c1d1e1f201112131415161718191a1b1c1d1e1f20
\tencap type espinudp sport 4500 dport 4500 addr 0.0.0.0
\tanti-replay context: seq 0x5, oseq 0x0, bitmap 0x0000001f
"""
# `ip xfrm policy` with charon's IKE bypass socket policies, as printed by iproute2 6.1.
XFRM_POLICY = """src 0.0.0.0/0 dst 0.0.0.0/0
\tdir out priority 399999 ptype main
\tmark 0x64/0xffffffff
\ttmpl src 10.8.0.2 dst 198.51.100.1
\t\tproto esp spi 0xc5a0b1c2 reqid 1 mode tunnel
src 0.0.0.0/0 dst 0.0.0.0/0
\tdir fwd priority 399999 ptype main
\tmark 0x64/0xffffffff
\ttmpl src 198.51.100.1 dst 10.8.0.2
\t\tproto esp reqid 1 mode tunnel
src 0.0.0.0/0 dst 0.0.0.0/0
\tdir in priority 399999 ptype main
\tmark 0x64/0xffffffff
\ttmpl src 198.51.100.1 dst 10.8.0.2
\t\tproto esp reqid 1 mode tunnel
src 0.0.0.0/0 dst 0.0.0.0/0
\tsocket in priority 0 ptype main
src 0.0.0.0/0 dst 0.0.0.0/0
\tsocket out priority 0 ptype main
"""


def test_parse_xfrm_states_keeps_addresses_spis_marks_and_never_keys():
    states = parse_xfrm_states(XFRM_STATE)
    assert states == [XfrmState("10.8.0.2", "198.51.100.1", "esp", 0xC5A0B1C2, 1, 0x64, 0xFFFFFFFF),
                      XfrmState("198.51.100.1", "10.8.0.2", "esp", 0xC9D8E7F6, 1, None, None)]
    assert "6b6579" not in repr(states) and "0102030405" not in repr(states)
    assert parse_xfrm_states("") == []


def test_parse_xfrm_policies_drops_socket_policies():
    policies = parse_xfrm_policies(XFRM_POLICY)
    assert [(p.direction, p.mark, p.tmpl_dst) for p in policies] == [
        ("out", 0x64, "198.51.100.1"), ("fwd", 0x64, "10.8.0.2"), ("in", 0x64, "10.8.0.2")]


def test_parsed_real_format_satisfies_the_xfrm_checks_for_tunnel1_only():
    facts = dataclasses.replace(healthy(), xfrm_states=parse_xfrm_states(XFRM_STATE),
                                xfrm_policies=parse_xfrm_policies(XFRM_POLICY))
    result = by_name(evaluate(CFG, facts))
    assert result["xfrm state tunnel1"].status == OK
    assert "spi 0xc5a0b1c2 mark 0x64" in result["xfrm state tunnel1"].found
    assert result["xfrm policy tunnel1"].status == OK
    assert result["xfrm state tunnel2"].status == FAIL and result["xfrm policy tunnel2"].status == FAIL
    # the report never carries key material
    assert "6b6579" not in render_json(list(result.values()))


CHARON_LINES = [
    "2025-01-10T10:00:01+00:00 gw charon[812]: 09[IKE] received NO_PROPOSAL_CHOSEN notify error",
    "2025-01-10T10:00:02+00:00 gw charon[812]: 10[CFG] received proposals: ESP:AES_CBC_128/HMAC_SHA1_96/NO_EXT_SEQ",
    "2025-01-10T10:00:03+00:00 gw charon[812]: 11[IKE] received AUTHENTICATION_FAILED notify error",
    "2025-01-10T10:00:04+00:00 gw charon[812]: 12[IKE] tried 1 shared key for '203.0.113.10' - '198.51.100.1', "
    "but MAC mismatched",
    "2025-01-10T10:00:05+00:00 gw charon[812]: 13[IKE] received TS_UNACCEPTABLE notify, no CHILD_SA built",
    "2025-01-10T10:00:06+00:00 gw charon[812]: 14[IKE] unable to install inbound and outbound IPsec SA (SAD) in "
    "kernel",
    "2025-01-10T10:00:07+00:00 gw charon[812]: 15[IKE] deleting IKE_SA tunnel1[4] between 10.8.0.2[203.0.113.10]..."
    "198.51.100.1[198.51.100.1]",
    "2025-01-10T10:00:08+00:00 gw charon[812]: 16[IKE] IKE_SA tunnel1[5] established between 10.8.0.2...",
    "2025-01-10T10:00:09+00:00 gw charon[812]: 06[IKE] CHILD_SA tunnel1{7} established with SPIs c5a0b1c2_i",
]


def test_log_patterns_match_real_charon_messages_and_not_success_lines():
    matches = match_log_lines(CHARON_LINES)
    assert [len(matches[p]) for p in LOG_PATTERNS] == [1, 2, 2, 1]
    assert not any("established" in line for lines in matches.values() for line in lines)


def test_recent_drops_timestamped_lines_older_than_the_window():
    import datetime as dt

    now = dt.datetime(2025, 1, 10, 11, 0, 0, tzinfo=dt.UTC).timestamp()
    lines = ["2025-01-10T09:00:00+00:00 old AUTHENTICATION_FAILED", "2025-01-10T10:30:00+00:00 new",
             "no timestamp: kept"]
    assert _recent(lines, 60, now) == lines[1:]


def test_read_log_facts_from_a_file(tmp_path: Path):
    path = tmp_path / "charon.log"
    path.write_text("\n".join(["09[IKE] initiating IKE_SA tunnel1[1] to 198.51.100.1",
                               "11[IKE] received AUTHENTICATION_FAILED notify error"]) + "\n")
    facts = read_log_facts(path, 60)
    assert facts.lines_read == 2 and str(path) in facts.source
    assert facts.matches["AUTHENTICATION_FAILED"] == ("11[IKE] received AUTHENTICATION_FAILED notify error",)
    assert facts.matches["NO_PROPOSAL_CHOSEN"] == ()


# ------------------------------------------------------------------------------------------------ report formats


def test_text_line_format_and_json_report():
    results = evaluate(CFG, _sysctl("net/ipv4/ip_forward", "0")(healthy()))
    text = render_text(results)
    line = next(x for x in text.splitlines() if "ip_forward" in x)
    assert line.startswith("FAIL sysctl net.ipv4.ip_forward: expected 1; found 0. Likely: ")
    assert text.splitlines()[-1] == f"{len(results) - 1} ok, 1 FAIL, 0 skip"
    report = json.loads(render_json(results))
    assert report["ok"] is False and report["counts"] == {"ok": len(results) - 1, "FAIL": 1, "skip": 0}
    failed = [c for c in report["checks"] if c["status"] == FAIL]
    assert failed == [{"name": "sysctl net.ipv4.ip_forward", "status": "FAIL", "expected": "1", "found": "0",
                       "hint": failed[0]["hint"]}] and "reconcile" in failed[0]["hint"]
