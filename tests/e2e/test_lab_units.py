"""The lab's pure logic, without the VM: the AWS side's proposals and routing decisions, and the file RPC."""

from __future__ import annotations

import copy
import io
import re
import threading
from pathlib import Path

import pytest

from lab import awspeer, host_config_source, lifetimes
from lab.addresses import LAB_PLAN
from lab.rpc import RpcClient, RpcServer, RpcTimeout, make_dirs


def host_config() -> dict:
    return host_config_source.lab_local_host_config(LAB_PLAN, "ssh-ed25519 AAAA lab")


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


def test_lab_psks_follow_aws_rules():
    for _ in range(50):
        psk = host_config_source.generate_psk()
        assert 8 <= len(psk) <= 64 and psk.isalnum() and not psk.startswith("0")


def test_route_monitor_prefers_the_chosen_healthy_tunnel_and_withdraws_dead_ones():
    tunnels = [{"name": "tunnel1", "vti": "vti1"}, {"name": "tunnel2", "vti": "vti2"}]
    up, down = awspeer.TunnelHealth(up=True), awspeer.TunnelHealth(up=False)
    assert awspeer.desired_routes(tunnels, {"tunnel1": up, "tunnel2": up}, "tunnel1") == {"vti1": 100, "vti2": 200}
    assert awspeer.desired_routes(tunnels, {"tunnel1": up, "tunnel2": up}, "tunnel2") == {"vti2": 100, "vti1": 200}
    assert awspeer.desired_routes(tunnels, {"tunnel1": down, "tunnel2": up}, "tunnel1") == {"vti2": 100}
    assert awspeer.desired_routes(tunnels, {"tunnel1": down, "tunnel2": down}, "tunnel1") == {}


def test_tunnel_health_hysteresis():
    h = awspeer.TunnelHealth()
    changes = [h.record(True) for _ in range(awspeer.UP_AFTER)]
    assert changes[-1] and not any(changes[:-1]) and h.up
    assert not h.record(False) or awspeer.DOWN_AFTER == 1
    h.record(True)  # a success resets the miss count
    changes = [h.record(False) for _ in range(awspeer.DOWN_AFTER)]
    assert changes[-1] and not h.up


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
