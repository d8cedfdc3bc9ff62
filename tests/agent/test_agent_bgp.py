"""BGP steering (routing.mode bgp, issue 16): the pure decision, with the agent's own hysteresis and failback hold
driving it on a fake clock, and the vtysh effect layer against a recording runner (the real bgpd: test_bgp_netns)."""

from __future__ import annotations

import json
import sys
import time

import pytest

from hostconfig.agent.bgp import Advertisement, changes, steer
from hostconfig.agent.desired import TunnelView
from hostconfig.agent.frr import BgpdVty, FrrError, Vtysh, apply_steering, outbound_route_maps
from hostconfig.agent.health import TunnelHealth, choose_active
from hostconfig.contract import rules

TUNNELS = ("tunnel1", "tunnel2")
NEIGHBORS = {"tunnel1": "169.254.10.1", "tunnel2": "169.254.11.1"}
P, S, M = Advertisement.PRIMARY, Advertisement.STANDBY, Advertisement.PRIMARY_MORE_SPECIFIC


def view(up: set[str], active: str | None) -> TunnelView:
    return TunnelView(frozenset(up), active)


@pytest.mark.parametrize(("up", "active", "expected"), [
    ({"tunnel1", "tunnel2"}, "tunnel1", {"tunnel1": P, "tunnel2": S}),  # steady: standby prepended
    ({"tunnel1"}, "tunnel1", {"tunnel1": P, "tunnel2": S}),  # standby dead: AWS already prefers the primary
    ({"tunnel2"}, "tunnel2", {"tunnel1": S, "tunnel2": M}),  # primary dead: halves over the healthy tunnel
    ({"tunnel1", "tunnel2"}, "tunnel2", {"tunnel1": S, "tunnel2": M}),  # primary back, within its failback hold
    (set(), None, {"tunnel1": P, "tunnel2": S}),  # nothing up: the rendered steady state
])
def test_steer(up, active, expected):
    steering = steer(TUNNELS, "tunnel1", view(up, active))
    assert dict(steering.advertise) == expected and steering.reason


def test_steer_follows_the_configured_primary():
    assert dict(steer(TUNNELS, "tunnel2", view(set(TUNNELS), "tunnel2")).advertise) == {"tunnel1": S, "tunnel2": P}
    with pytest.raises(ValueError):
        steer(TUNNELS, "tunnel3", view(set(TUNNELS), "tunnel1"))


def test_route_maps_are_the_rendered_ones():
    assert {a.route_map for a in Advertisement} == {rules.ROUTE_MAP_PRIMARY, rules.ROUTE_MAP_STANDBY,
                                                    rules.ROUTE_MAP_PRIMARY_MORE_SPECIFIC}


def test_the_halves_go_only_after_the_failback_hold():
    """The agent's own hysteresis (3 lost / 5 good probes) and a 20 s failback hold on a fake clock, 0.1 s a probe."""
    health = {name: TunnelHealth(name, down_after=3, up_after=5) for name in TUNNELS}
    for h in health.values():
        h.presume_up(0.0, "test start")
    active, now, seen = "tunnel1", 0.0, []

    def tick(results: dict[str, bool]) -> None:
        nonlocal active, now
        now += 0.1
        for name, ok in results.items():
            health[name].record(ok, now)
        active = choose_active(TUNNELS, "tunnel1", health, active, now, failback_hold=20.0).active
        advertise = dict(steer(TUNNELS, "tunnel1", TunnelView(frozenset(n for n in TUNNELS if health[n].up),
                                                               active)).advertise)
        if not seen or seen[-1][1] != advertise:
            seen.append((round(now, 1), advertise))

    tick({"tunnel1": True, "tunnel2": True})
    for _ in range(3):  # tunnel1's data path dies
        tick({"tunnel1": False, "tunnel2": True})
    for _ in range(250):  # it comes back for 25 s
        tick({"tunnel1": True, "tunnel2": True})
    assert seen == [
        (0.1, {"tunnel1": P, "tunnel2": S}),
        (0.4, {"tunnel1": S, "tunnel2": M}),  # the third lost probe: halves on tunnel2
        # tunnel1 is up again after 5 good probes (0.9 s), then healthy 20 s: failback, halves withdrawn
        (20.9, {"tunnel1": P, "tunnel2": S}),
    ]


def test_changes_are_ordered_make_before_break_and_empty_when_frr_matches():
    failover = steer(TUNNELS, "tunnel1", view({"tunnel2"}, "tunnel2"))
    steady_now = {"169.254.10.1": rules.ROUTE_MAP_PRIMARY, "169.254.11.1": rules.ROUTE_MAP_STANDBY}
    assert [(c.tunnel, c.new) for c in changes(failover, NEIGHBORS, steady_now)] == [("tunnel2", M), ("tunnel1", S)]
    failback = steer(TUNNELS, "tunnel1", view(set(TUNNELS), "tunnel1"))
    failed_now = {"169.254.10.1": rules.ROUTE_MAP_STANDBY, "169.254.11.1": rules.ROUTE_MAP_PRIMARY_MORE_SPECIFIC}
    assert [(c.tunnel, c.new) for c in changes(failback, NEIGHBORS, failed_now)] == [("tunnel1", P), ("tunnel2", S)]
    assert changes(failback, NEIGHBORS, steady_now) == []


class FakeBgpd:
    """Records vtysh command lines; answers the neighbors query from its own route-map table."""

    def __init__(self, maps: dict[str, str | None]):
        self.maps = maps
        self.calls: list[list[str]] = []

    def __call__(self, args):
        args = list(args)
        self.calls.append(args)
        commands = args[1::2]
        if commands == ["show bgp neighbors json"]:
            return json.dumps({a: {"bgpState": "Established", "addressFamilyInfo": {"ipv4Unicast": (
                {"routeMapForOutgoingAdvertisements": m} if m else {})}} for a, m in self.maps.items()})
        for command in commands:
            if command.startswith("neighbor "):
                _, address, _, name, _ = command.split()
                self.maps[address] = name
        return ""


def test_apply_steering_twice_changes_nothing_the_second_time():
    bgpd = FakeBgpd({"169.254.10.1": rules.ROUTE_MAP_PRIMARY, "169.254.11.1": rules.ROUTE_MAP_STANDBY})
    failover = steer(TUNNELS, "tunnel1", view({"tunnel2"}, "tunnel2"))
    done = apply_steering(failover, asn=65000, neighbors=NEIGHBORS, run=bgpd)
    assert [c.tunnel for c in done] == ["tunnel2", "tunnel1"]
    assert bgpd.calls[-1][1::2] == ["configure terminal", "router bgp 65000", "address-family ipv4 unicast",
                                    f"neighbor 169.254.11.1 route-map {rules.ROUTE_MAP_PRIMARY_MORE_SPECIFIC} out",
                                    f"neighbor 169.254.10.1 route-map {rules.ROUTE_MAP_STANDBY} out"]
    calls = len(bgpd.calls)
    assert apply_steering(failover, asn=65000, neighbors=NEIGHBORS, run=bgpd) == []
    assert len(bgpd.calls) == calls + 1  # only the read


def test_outbound_route_maps_reads_none_for_a_neighbor_without_one():
    bgpd = FakeBgpd({"169.254.10.1": None})
    assert outbound_route_maps(bgpd) == {"169.254.10.1": None}
    with pytest.raises(FrrError):
        outbound_route_maps(lambda args: "not json")


def test_vtysh_refusals_are_errors(tmp_path):
    fake = tmp_path / "vtysh"
    fake.write_text("#!/bin/sh\necho '% Unknown command: bogus'\nexit 0\n")
    fake.chmod(0o755)
    with pytest.raises(FrrError, match="Unknown command"):
        Vtysh(binary=str(fake))(["-c", "bogus"])
    with pytest.raises(FrrError):
        Vtysh(binary=str(tmp_path / "missing"))(["-c", "show version"])



# ------------------------------------------------------------------------------- the daemon's side (agent.json, retry)
def test_agent_json_bgp_section_is_optional_and_checked(tmp_path):
    from agent_testlib import config_dict

    from hostconfig.agent.config import ConfigError, parse_config
    from hostconfig.agent.daemon import bgp_steerer

    static = parse_config(config_dict(tmp_path))
    assert static.bgp is None and bgp_steerer(static) is None
    cfg = parse_config(config_dict(tmp_path, bgp={"customer_asn": 65010, "vty_socket": "/run/frr-test"}))
    assert (cfg.bgp.customer_asn, str(cfg.bgp.vty_socket)) == (65010, "/run/frr-test")
    steerer = bgp_steerer(cfg)
    assert steerer.neighbors == NEIGHBORS and steerer.asn == 65010 and steerer.run.vty_socket == "/run/frr-test"
    # bgpd's own socket, never a vtysh process (2.2 s per call in the lab's TCG VM: most of a cut's blackout)
    assert isinstance(steerer.run, BgpdVty) and steerer.run.path == "/run/frr-test/bgpd.vty"
    assert bgp_steerer(parse_config(config_dict(tmp_path, bgp={"customer_asn": 65010}))).run.path \
        == "/run/frr/bgpd.vty"  # frr.service's
    for bad, key in (({"customer_asn": 0}, "bgp.customer_asn"), ({}, "bgp.customer_asn"),
                     ({"customer_asn": 65000, "vty_socket": "run/frr"}, "bgp.vty_socket"),
                     ({"customer_asn": 65000, "asn": 1}, "bgp.asn")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            parse_config(config_dict(tmp_path, bgp=bad))


def test_agent_json_carries_bgp_only_in_bgp_mode():
    import json as _json
    from pathlib import Path

    from hostconfig.agent.config import parse_config
    from hostconfig.plan import GatewayPlan, agent_config

    obj = _json.loads((Path(__file__).resolve().parents[1] / "fixtures" / "host_config.default.json").read_text())
    assert "bgp" not in agent_config(GatewayPlan.from_host_config(obj))
    obj["routing"] = {"mode": "bgp", "customer_asn": 65010, "amazon_side_asn": 64512}
    rendered = agent_config(GatewayPlan.from_host_config(obj))
    assert rendered["bgp"] == {"customer_asn": 65010}
    assert parse_config(rendered).bgp.customer_asn == 65010  # the agent reads what the renderer writes


def steered(steerer, view_: TunnelView, now: float, force: bool = False) -> list:
    """One loop round's on_view, then (as later rounds do) the outcome of the vtysh calls it started."""
    made = steerer.on_view(view_, now, force=force)
    assert steerer.worker.wait(20), "the steering's vtysh calls did not return"
    return made + steerer.take_in(now)


def test_steerer_applies_each_view_once_retries_failures_and_reapplies_when_forced():
    from hostconfig.agent.frr import BgpSteerer

    bgpd = FakeBgpd({"169.254.10.1": rules.ROUTE_MAP_PRIMARY, "169.254.11.1": rules.ROUTE_MAP_STANDBY})
    broken = {"on": False}

    def run(args):
        if broken["on"]:
            raise FrrError("vtysh: bgpd is not running")
        return bgpd(args)

    steerer = BgpSteerer(TUNNELS, "tunnel1", NEIGHBORS, 65000, run, retry_seconds=1.0)
    steady, failed_over = view(set(TUNNELS), "tunnel1"), view({"tunnel2"}, "tunnel2")
    assert steered(steerer, steady, 0.0) == []  # FRR already steady: nothing to change
    calls = len(bgpd.calls)
    assert len(steered(steerer, failed_over, 0.1)) == 2 and steerer.changes_total == 2
    assert len(bgpd.calls) == calls + 1  # bgpd's route-maps known from the first read: one call for the change
    calls = len(bgpd.calls)
    assert steered(steerer, failed_over, 0.2) == [] and len(bgpd.calls) == calls  # same view: not even a read
    broken["on"] = True
    assert steered(steerer, steady, 0.3) == [] and steerer.failures_total == 1 and "not running" in steerer.last_error
    broken["on"] = False
    assert steered(steerer, steady, 0.5) == []  # before the retry time
    assert bgpd.maps["169.254.10.1"] == rules.ROUTE_MAP_STANDBY
    assert len(steered(steerer, steady, 1.4)) == 2 and steerer.last_error is None
    bgpd.maps = {"169.254.10.1": rules.ROUTE_MAP_PRIMARY, "169.254.11.1": rules.ROUTE_MAP_PRIMARY}  # by hand / restart
    assert [c.tunnel for c in steered(steerer, steady, 2.0, force=True)] == ["tunnel2"]


def test_a_slow_vtysh_never_holds_up_the_loop_and_a_steering_change_is_one_vtysh_call(tmp_path):
    """Issue 16: under the lab's TCG every vtysh (a process connecting to every FRR daemon) costs seconds, and the
    daemon ran them on its loop (a read, then the change): probes and switching stopped for as long. Here vtysh
    (a real process) takes 3 s per call: each loop round's on_view stays far under 0.5 s, and a steering change once
    bgpd's route-maps are known is one call."""
    from hostconfig.agent.frr import BgpSteerer

    maps = tmp_path / "maps.json"
    maps.write_text(json.dumps({"169.254.10.1": rules.ROUTE_MAP_PRIMARY, "169.254.11.1": rules.ROUTE_MAP_STANDBY}))
    calls = tmp_path / "calls"
    fake = tmp_path / "vtysh"
    fake.write_text(f"""#!{sys.executable}
import json, sys, time
open({str(calls)!r}, "a").write(" ".join(sys.argv[1:]) + "\\n")
time.sleep(3)
maps = json.load(open({str(maps)!r}))
if sys.argv[-1] == "show bgp neighbors json":
    print(json.dumps({{a: {{"bgpState": "Established", "addressFamilyInfo": {{"ipv4Unicast": (
        {{"routeMapForOutgoingAdvertisements": m}})}}}} for a, m in maps.items()}}))
for arg in sys.argv[1:]:
    if arg.startswith("neighbor "):
        maps[arg.split()[1]] = arg.split()[3]
json.dump(maps, open({str(maps)!r}, "w"))
""")
    fake.chmod(0o755)
    steerer = BgpSteerer(TUNNELS, "tunnel1", NEIGHBORS, 65000, Vtysh(binary=str(fake)), retry_seconds=1.0)
    steady, failed_over = view(set(TUNNELS), "tunnel1"), view({"tunnel2"}, "tunnel2")

    def one_round(view_: TunnelView, now: float) -> float:
        t0 = time.monotonic()
        steerer.on_view(view_, now)
        return time.monotonic() - t0

    def rounds_until_applied(view_: TunnelView, now: float) -> list[float]:
        rounds, deadline = [], time.monotonic() + 60
        while steerer.applied != view_ and time.monotonic() < deadline:
            rounds.append(one_round(view_, now))
            time.sleep(0.05)
        return rounds

    rounds = rounds_until_applied(failed_over, 0.0)  # the primary died: read (bgpd unknown at start), the change
    assert max(rounds) < 0.5, f"a loop round waited for vtysh: {max(rounds):.2f} s"
    assert steerer.applied == failed_over and steerer.changes_total == 2, steerer.last_error
    assert json.loads(maps.read_text())["169.254.11.1"] == rules.ROUTE_MAP_PRIMARY_MORE_SPECIFIC
    assert len(calls.read_text().splitlines()) == 2
    rounds = rounds_until_applied(steady, 10.0)  # failback: bgpd's route-maps known, one call
    assert max(rounds) < 0.5, f"a loop round waited for vtysh: {max(rounds):.2f} s"
    assert steerer.applied == steady and len(calls.read_text().splitlines()) == 3
    assert "show bgp neighbors json" not in calls.read_text().splitlines()[2]


def test_daemon_state_carries_bgp_only_when_set_and_metrics_show_it():
    from hostconfig.agent.metrics import render_metrics
    from hostconfig.agent.status_contract import BgpSteeringState, DaemonState

    plain = DaemonState(pid=1, updated_at=1.0, active="tunnel1", reason="r", up=["tunnel1"], switches_total=0,
                        repairs_total=0, last_switch=None, tunnels={}, extra_targets={}, vici="connected",
                        last_reconcile=None, link_mode="given")
    assert "bgp" not in plain.to_json()  # a static daemon's state file is what it was
    assert DaemonState.loads(plain.dumps()) == plain
    assert "hybrid_vpn_bgp" not in render_metrics(plain)
    bgp = BgpSteeringState(customer_asn=65000, advertise={"tunnel1": rules.ROUTE_MAP_STANDBY,
                                                          "tunnel2": rules.ROUTE_MAP_PRIMARY_MORE_SPECIFIC},
                           reason="tunnel2 is active", changes_total=2, failures_total=1, last_error=None)
    state = DaemonState(**{**plain.__dict__, "bgp": bgp})
    assert DaemonState.loads(state.dumps()) == state
    text = render_metrics(state)
    assert f'hybrid_vpn_bgp_advertisement{{tunnel="tunnel2",route_map="{rules.ROUTE_MAP_PRIMARY_MORE_SPECIFIC}"}} 1' \
        in text
    assert "hybrid_vpn_bgp_steering_changes_total 2" in text and "hybrid_vpn_bgp_steering_failures_total 1" in text


def test_status_says_when_bgpd_is_unreachable(tmp_path):
    import shutil

    from agent_testlib import config_dict

    from hostconfig import gateway_paths
    from hostconfig.agent.config import parse_config
    from hostconfig.agent.status import bgp_status, render_bgp

    if shutil.which(gateway_paths.VTYSH) is None:
        pytest.skip("needs vtysh (Debian package frr)")
    assert bgp_status(parse_config(config_dict(tmp_path)), None) is None  # static: no bgp section at all
    cfg = parse_config(config_dict(tmp_path, bgp={"customer_asn": 65000, "vty_socket": str(tmp_path / "none")}))
    status = bgp_status(cfg, None)
    assert status.sessions == {} and status.error
    assert render_bgp(status) == [f"bgp: bgpd unreachable ({status.error})", "bgp steering: no daemon data"]


def test_doctor_checks_each_tunnels_bgp_session(tmp_path):
    from agent_testlib import config_dict

    from hostconfig.agent.config import parse_config
    from hostconfig.agent.doctor_checks import check_bgp
    from hostconfig.agent.doctor_facts import BgpFacts, DoctorFacts, Unavailable

    def facts(bgp):
        none = Unavailable("not read in this test")
        return DoctorFacts(link_mode="given", links=none, addresses=none, sysctls=none, routes=none, rules=none,
                           nft=none, xfrm_states=none, xfrm_policies=none, sas=none, log=None, probes=None, bgp=bgp)

    static = parse_config(config_dict(tmp_path))
    assert check_bgp(static, facts(None)) == []
    cfg = parse_config(config_dict(tmp_path, bgp={"customer_asn": 65000}))
    found = check_bgp(cfg, facts(BgpFacts(
        states={"169.254.10.1": "Established", "169.254.11.1": "Active"},
        route_maps={"169.254.10.1": rules.ROUTE_MAP_PRIMARY, "169.254.11.1": rules.ROUTE_MAP_STANDBY})))
    assert [(c.name, c.status) for c in found] == [("bgp tunnel1", "ok"), ("bgp tunnel2", "FAIL")]
    assert found[1].found == "session Active" and found[1].hint
    by_hand = check_bgp(cfg, facts(BgpFacts(states={"169.254.10.1": "Established"},
                                            route_maps={"169.254.10.1": "someone-elses"})))
    assert [c.found for c in by_hand] == ["Established, outbound route-map someone-elses",
                                          "bgpd has no neighbor 169.254.11.1"]
    unreachable = check_bgp(cfg, facts(Unavailable("vtysh: failed to connect")))
    assert all(c.status == "FAIL" and "failed to connect" in c.found for c in unreachable)
