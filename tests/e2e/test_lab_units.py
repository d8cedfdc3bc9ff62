"""The lab's pure logic, without the VM: the AWS side's proposals and routing decisions, and the file RPC."""

from __future__ import annotations

import copy
import io
import json
import re
import threading
from pathlib import Path

import pytest
import yaml

from hostconfig import gateway_paths as gp
from hostconfig.deliver.gateway import ACTIVATION_ORDER, activation_commands, activation_order, activation_steps
from hostconfig.frr_check import frr_config_problems
from lab import __main__ as lab_cli
from lab import awspeer, awsrouting, flows, frr, gateway, host_config_source, lifetimes
from lab.rpc import RpcClient, RpcServer, RpcTimeout, make_dirs

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "host_config.default.json"


def host_config() -> dict:
    """What the program exports (tests/test_program.py keeps the fixture equal to it); the lab uses the same
    addresses (lab/addresses.py)."""
    return json.loads(FIXTURE.read_text())


def test_aws_proposals_keep_aead_and_classic_apart():
    phase = {"encryption": ["AES256", "AES128-GCM-16"], "integrity": ["SHA2-256", "SHA1"], "dh_groups": [14, 19]}
    assert awspeer.aws_proposals(phase, ike=True) == ("aes256-sha256-sha1-modp2048-ecp256,"
                                                       "aes128gcm16-prfsha256-prfsha1-modp2048-ecp256")
    assert awspeer.aws_proposals(phase, ike=False) == "aes256-sha256-sha1-modp2048-ecp256,aes128gcm16-modp2048-ecp256"


def test_aws_proposals_refuse_a_non_aws_value_by_name():
    with pytest.raises(ValueError, match=r"encryption '3DES' is not an AWS value \(one of AES128"):
        awspeer.aws_proposals({"encryption": ["3DES"], "integrity": ["SHA1"], "dh_groups": [14]}, ike=True)


def test_aws_side_config_follows_the_vpn_connection_inputs():
    hc = host_config()
    conf = awspeer.render_swanctl_conf(hc)
    for t in hc["tunnels"]:
        assert f"local_addrs = {t['outside_ip']}" in conf
        assert f"mark_in = {t['mark']}" in conf
        assert t["psk"] in conf
    assert "remote_addrs = 203.0.113.10" in conf  # the customer gateway IP is the NAT's public address
    assert "start_action = none" in conf  # startup_action "add": the gateway initiates, AWS only answers
    started = copy.deepcopy(hc)
    started["crypto"]["startup_action"] = "start"
    assert "start_action = start" in awspeer.render_swanctl_conf(started)


def test_the_lab_plays_every_step_of_deliverys_activation_order(monkeypatch):
    # One order for both: delivery's commands are ACTIVATION_ORDER, and the lab runs the same steps for the same files.
    assert [(c.argv, c.when_changed) for c in activation_commands()] == [(s.argv, s.when_changed)
                                                                        for s in ACTIVATION_ORDER]
    assert set(gateway.LAB_STEPS) == {s.name for s in activation_order(bgp=True)}
    done = []
    monkeypatch.setattr(gateway, "LAB_STEPS", {name: (lambda n=name: done.append(n), "") for name in gateway.LAB_STEPS})
    everything = [path for s in ACTIVATION_ORDER for path in s.when_changed]
    assert gateway.activate(everything, lambda _line: None) == [s.name for s in ACTIVATION_ORDER] == done
    # the agent is running before charon loads the tunnels (its daemon answers their updown hooks)
    assert done.index("restart-agent") < done.index("restart-charon") < done.index("load-swanctl")
    done.clear()
    swanctl = [path for path in everything if path.startswith("/etc/swanctl/")][:1]
    assert gateway.activate(swanctl, lambda _line: None) == [s.name for s in activation_steps(swanctl)] == done
    assert done == ["restart-agent", "load-swanctl"]
    done.clear()
    # routing.mode bgp: FRR's steps too, after the tunnels are loaded (bgpd's sessions run over them)
    everything = [path for s in activation_order(bgp=True) for path in s.when_changed]
    assert gateway.activate(everything, lambda _line: None, bgp=True) == [s.name for s in activation_order(bgp=True)]
    assert done.index("load-swanctl") < done.index("restart-frr") < done.index("reload-frr")
    done.clear()
    assert gateway.activate([gp.FRR_CONF.path], lambda _line: None) == []  # a static stack has no frr to reload


def test_a_gateway_boot_in_bgp_mode_starts_frr_after_charon():
    charon = gateway.Unit(gp.STRONGSWAN_UNIT)
    frr_unit = gateway.Unit(gp.FRR_UNIT, after=(gp.STRONGSWAN_UNIT,))
    agent = gateway.Unit(gp.FAILOVER_UNIT, before=(gp.STRONGSWAN_UNIT,))
    assert gateway.start_order([frr_unit, charon, agent]) == [gp.FAILOVER_UNIT, gp.STRONGSWAN_UNIT, gp.FRR_UNIT]


def test_frr_starts_zebra_and_the_daemons_the_daemons_file_enables():
    assert frr.enabled_daemons("bgpd=yes\nospfd=no\nvtysh_enable=yes\nbgpd_options=\"-A 127.0.0.1\"\n") == [
        "zebra", "bgpd"]
    assert frr.daemon_argv("bgpd")[-2:] == ["-P", "0"]  # FRR's default sockets (/run/frr), as frr.service has them


def test_lab_up_takes_a_routing_mode_and_refuses_others():
    assert lab_cli.parse_up_args([]) == "static"
    assert lab_cli.parse_up_args(["--routing", "bgp"]) == lab_cli.parse_up_args(["--routing=bgp"]) == "bgp"
    with pytest.raises(ValueError, match="--routing bgp"):
        lab_cli.parse_up_args(["--routing", "ospf"])
    bgp = host_config_source.stack_config("bgp")["hybrid-vpn:routing"]
    assert bgp == {"mode": "bgp", "customer_asn": 65000}
    assert "hybrid-vpn:routing" not in host_config_source.stack_config("static")


def bgp_host_config() -> dict:
    hc = host_config()
    hc["routing"] = {"mode": "bgp", "customer_asn": 65000, "amazon_side_asn": 64512}
    return hc


def test_the_aws_sides_bgpd_is_awss_asn_timers_route_limit_and_no_ecmp(tmp_path):
    conf = awspeer.render_bgpd_conf(bgp_host_config())
    hc = host_config()
    assert "router bgp 64512\n" in conf
    for t in hc["tunnels"]:
        gw = t["gateway_inside_ip"]
        assert f" neighbor {gw} remote-as 65000\n" in conf
        assert f" neighbor {gw} timers 10 30\n" in conf
        assert f"  neighbor {gw} maximum-prefix 100\n" in conf
    assert "  maximum-paths 1\n" in conf
    assert all(f"  network {c}\n" in conf for c in hc["aws"]["cidrs"])
    missing = frr.FRR_DAEMONS_DIR / "bgpd"
    if not missing.exists():
        pytest.skip(f"FRR's own check needs Debian's frr ({missing} missing)")
    path = tmp_path / "bgpd.conf"
    path.write_text(conf)
    assert frr_config_problems(path) == []


def test_aws_reports_the_vlan_route_from_inside_the_lower_more_specific_half():
    assert awsrouting.probe_address("172.16.0.0/12") == "172.16.0.1"  # in 172.16.0.0/13, the lower half


def test_aws_sends_on_one_tunnel_sticky_and_moves_only_when_it_is_down():
    choose = awsrouting.choose_sending_tunnel
    assert choose(None, [], "tunnel1") == awsrouting.Choice(None, "tunnel1")  # nothing UP yet: the request waits
    assert choose(None, ["tunnel2"], "tunnel1") == awsrouting.Choice("tunnel2", "tunnel1")
    assert choose("tunnel2", ["tunnel1", "tunnel2"], "tunnel1") == awsrouting.Choice("tunnel1", None)  # applied, spent
    assert choose("tunnel1", ["tunnel2"], None) == awsrouting.Choice("tunnel2", None)  # DOWN by IKE: moves
    # sticky: the tunnel AWS left comes back UP, AWS stays where it is
    assert choose("tunnel2", ["tunnel1", "tunnel2"], None) == awsrouting.Choice("tunnel2", None)
    assert choose("tunnel2", [], None) == awsrouting.Choice(None, None)


def test_aws_sides_vtis_follow_ike_so_a_down_tunnels_bgp_routes_go_at_once():
    vti_of = {"tunnel1": "vti1", "tunnel2": "vti2"}
    links = awsrouting.vti_link_commands
    assert links(vti_of, {"tunnel1": False, "tunnel2": False}, {}) == ["link set vti1 down", "link set vti2 down"]
    assert links(vti_of, {"tunnel1": True, "tunnel2": False}, {"tunnel1": False, "tunnel2": False}) \
        == ["link set vti1 up"]
    assert links(vti_of, {"tunnel1": True, "tunnel2": True}, {"tunnel1": True, "tunnel2": True}) == []  # no change
    assert links(vti_of, {"tunnel1": False, "tunnel2": True}, {"tunnel1": True, "tunnel2": True}) \
        == ["link set vti1 down"]


def test_aws_counts_a_tunnel_up_only_with_established_ike_and_installed_child():
    def sa(name, ike, child):
        return {name: {"state": ike, "child-sas": {f"{name}-1": {"name": name, "state": child}}}}

    states = awsrouting.tunnels_up([sa("tunnel1", b"ESTABLISHED", b"INSTALLED"), sa("tunnel2", b"CONNECTING", b"")])
    assert awsrouting.is_up(states["tunnel1"]) and not awsrouting.is_up(states["tunnel2"])
    # a rekey leaves the old CHILD_SA REKEYED next to the new INSTALLED one: still UP
    rekey = {"tunnel1": {"state": b"ESTABLISHED", "child-sas": {
        "a": {"name": b"tunnel1", "state": b"REKEYED"}, "b": {"name": b"tunnel1", "state": b"INSTALLED"}}}}
    assert awsrouting.is_up(awsrouting.tunnels_up([rekey])["tunnel1"])
    assert not awsrouting.is_up(awsrouting.tunnels_up([]).get("tunnel1"))


def test_aws_route_move_adds_before_it_deletes():
    assert awsrouting.route_commands(["172.16.0.0/12"], "vti2", "vti1") == [
        "route replace 172.16.0.0/12 dev vti2 metric 100", "route del 172.16.0.0/12 dev vti1 metric 100"]
    assert awsrouting.route_commands(["172.16.0.0/12"], None, "vti1") == ["route del 172.16.0.0/12 dev vti1 metric 100"]
    assert awsrouting.route_commands(["172.16.0.0/12"], "vti1", "vti1") == []


def test_aws_dpd_gives_up_at_the_stacks_dpd_timeout():
    for timeout in (30, 40, 120):
        crypto = {"dpd_timeout_seconds": timeout, "dpd_timeout_action": "clear"}
        schedule = awspeer.dpd_schedule(crypto)
        assert schedule.delay == 10  # AWS: R-U-THERE after 10 s without inbound traffic
        assert schedule.give_up_seconds == pytest.approx(timeout)
        conf = awspeer.render_strongswan_conf(crypto)
        assert f"retransmit_timeout = {schedule.retransmit_timeout:g}\n" in conf
        assert "retransmit_base = 1\n" in conf and "retransmit_tries = 3\n" in conf
    with pytest.raises(ValueError, match=r"crypto.dpd_timeout_seconds: 10 must exceed .* e.g. 30"):
        awspeer.dpd_schedule({"dpd_timeout_seconds": 10, "dpd_timeout_action": "clear"})


@pytest.mark.parametrize(("action", "dpd_delay", "dpd_action"),
                         [("clear", "10s", "clear"), ("restart", "10s", "restart"), ("none", "0s", "none")])
def test_aws_side_runs_the_stacks_dpd_timeout_action(action, dpd_delay, dpd_action):
    hc = host_config()
    hc["crypto"]["dpd_timeout_action"] = action
    conf = awspeer.render_swanctl_conf(hc)
    assert conf.count(f"dpd_delay = {dpd_delay}\n") == 2 and conf.count(f"dpd_action = {dpd_action}\n") == 2


def test_the_lab_stack_runs_awss_minimum_dpd_timeout():
    stack = yaml.safe_load(host_config_source.STACK_CONFIG.read_text())
    assert stack["config"]["hybrid-vpn:crypto"]["dpd_timeout_seconds"] == 30


def test_maintenance_rules_drop_the_gateway_and_without_delete_silence_the_endpoint():
    t = awspeer.aws_tunnels(host_config())[0]
    with_delete = awspeer.render_maintenance_rules(t, "203.0.113.10", with_delete=True)
    assert "ip saddr 203.0.113.10 ip daddr 198.51.100.1 udp dport { 500, 4500 } drop" in with_delete
    assert "ip saddr 198.51.100.1" not in with_delete  # the DELETE goes out
    assert "esp" not in with_delete  # ESP ends with the endpoint's SAs (the forced terminate), not before it
    silent = awspeer.render_maintenance_rules(t, "203.0.113.10", with_delete=False)
    assert "ip saddr 198.51.100.1 ip daddr 203.0.113.10 udp sport { 500, 4500 } drop" in silent
    assert "ip saddr 203.0.113.10 ip daddr 198.51.100.1 ip protocol esp drop" in silent


def test_file_rpc_streams_output_and_returns_the_exit_code(tmp_path):
    def handler(verb, args, out, err):
        out.write(f"{verb} {' '.join(args)}\n".encode())
        err.write(b"to stderr\n")
        return 7

    make_dirs(tmp_path)
    server = RpcServer(tmp_path, handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    out, err = io.BytesIO(), io.BytesIO()
    try:
        assert RpcClient(tmp_path).call("exec", ["gw", "ip", "route"], timeout=30, stdout=out, stderr=err) == 7
    finally:
        server.stopping.set()
        thread.join(timeout=10)
    assert out.getvalue() == b"exec gw ip route\n" and err.getvalue() == b"to stderr\n"
    assert not list((tmp_path / "res").iterdir()) and not list((tmp_path / "out").iterdir())


def test_file_rpc_times_out_without_a_server(tmp_path):
    make_dirs(tmp_path)
    with pytest.raises(RpcTimeout, match="did not answer 'status'"):
        RpcClient(tmp_path).call("status", [], timeout=0.3, stdout=io.BytesIO(), stderr=io.BytesIO())


TIMER_LINE = re.compile(r"(?m)^( +)(rekey_time|over_time|rand_time|life_time) = (\d+)s$")


def timers(conf: str) -> set[tuple[int, str, int]]:
    return {(len(indent), key, int(value)) for indent, key, value in TIMER_LINE.findall(conf)}


def test_short_lifetimes_rewrite_every_timer_line_of_both_ends():
    rendered = (Path(__file__).resolve().parents[1] / "golden/default/etc/swanctl/conf.d/hybrid-vpn.conf").read_text()
    assert timers(lifetimes.shorten(rendered, lifetimes.GATEWAY_SHORT, "gw")) == {
        (8, "rekey_time", 60), (8, "over_time", 20), (8, "rand_time", 5),
        (16, "rekey_time", 25), (16, "life_time", 45), (16, "rand_time", 5)}
    aws = lifetimes.shorten(awspeer.render_swanctl_conf(host_config()), lifetimes.AWS_SHORT, "aws")
    assert timers(aws) == {(8, "rekey_time", 75), (8, "over_time", 20),
                           (16, "rekey_time", 32), (16, "life_time", 50), (16, "rand_time", 0)}
    with pytest.raises(RuntimeError, match="AWS side swanctl.conf has no child-level 'life_time"):
        lifetimes.shorten("        rekey_time = 1s\n", {"child": {"life_time": 1}}, "AWS side swanctl.conf")


def test_one_way_flow_gaps_are_timed_at_the_receiver():
    arrivals = {0: 100.0, 1: 100.1, 2: 100.2, 9: 131.5, 10: 131.6, 11: 140.0}
    d = flows.summarize(12, arrivals)
    assert (d.sent, d.received) == (12, 6)
    assert d.gaps == [(100.2, 131.5), (131.6, 140.0)]  # longest first
    assert d.longest_gap == pytest.approx(31.3)
    assert flows.outage_around(d, 100.5) == pytest.approx(31.3)  # the cut at 100.5: the blackout that covers it
    assert flows.outage_around(d, 135.0) == pytest.approx(8.4)
    assert flows.outage_around(d, 98.0) is None  # nothing was out then


def test_a_blackout_that_lasts_to_the_end_of_the_stream_is_an_outage_not_none():
    """ESP dead and AWS never moved: the last datagrams arrive at 103 s, the sender goes on until 160 s."""
    arrivals = {i: 100.0 + i * 0.02 for i in range(150)}
    d = flows.summarize(3000, arrivals, sent_span=(100.0, 160.0))
    assert d.gaps == [(pytest.approx(102.98), 160.0)]
    assert flows.outage_around(d, 103.5, slack=2.0) == pytest.approx(57.02)
    nothing = flows.summarize(3000, {}, sent_span=(100.0, 160.0))
    assert nothing.gaps == [(100.0, 160.0)] and flows.outage_around(nothing, 101.0) == pytest.approx(60.0)
    steady = flows.summarize(10, {i: 100.0 + i * 0.02 for i in range(10)}, sent_span=(99.99, 100.17))
    assert steady.gaps == []
