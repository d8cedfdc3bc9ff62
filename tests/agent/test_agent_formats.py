"""Pure formats: ICMP packets, the nftables ownership check, Prometheus text, VICI payload mapping."""

from __future__ import annotations

import copy
import dataclasses
import struct
from ipaddress import IPv4Address

import pytest
from agent_testlib import BASE_CONFIG, RULESET
from testlib import contract_example

from hostconfig.agent.config import parse_config
from hostconfig.agent.metrics import render_metrics
from hostconfig.agent.nft import NftError, read_ruleset, transaction
from hostconfig.agent.probe import checksum, echo_request, parse_echo_reply
from hostconfig.agent.status_contract import DaemonState
from hostconfig.agent.vici_client import installed_tunnels, parse_ike_sas, tunnel_sa_states

CFG = parse_config(copy.deepcopy(BASE_CONFIG))


def test_echo_request_checksum_verifies_and_reply_parses():
    packet = echo_request(0x1234, 7)
    assert checksum(packet) == 0
    reply = bytearray(packet)
    reply[0] = 0
    ip_header = bytes([0x45]) + bytes(11) + IPv4Address("169.254.10.1").packed + IPv4Address("169.254.10.2").packed
    assert parse_echo_reply(ip_header + bytes(reply)) == (IPv4Address("169.254.10.1"), 0x1234, 7)
    assert parse_echo_reply(ip_header + packet) is None  # a request, not a reply
    assert parse_echo_reply(b"\x45" + bytes(10)) is None
    assert struct.unpack("!H", packet[4:6])[0] == 0x1234


def test_ruleset_must_only_touch_our_table(tmp_path):
    path = tmp_path / "r.nft"
    path.write_text(RULESET)
    assert read_ruleset(path, "hybrid_vpn") == RULESET
    for bad, why in [
        ("flush ruleset\n" + RULESET, "flush ruleset"),
        (RULESET + "table ip filter { }\n", "touches table ip filter"),
        (RULESET + "add rule inet other input accept\n", "touches table inet other"),
        (RULESET + 'include "/etc/x.nft"\n', "include"),
        ("table inet other { }\n", "touches table inet other"),
    ]:
        path.write_text(bad)
        with pytest.raises(NftError, match=why):
            read_ruleset(path, "hybrid_vpn")
    with pytest.raises(NftError, match="cannot read"):
        read_ruleset(tmp_path / "missing.nft", "hybrid_vpn")
    assert transaction("hybrid_vpn", "X").splitlines()[:2] == ["table inet hybrid_vpn",
                                                               "delete table inet hybrid_vpn"]


def test_metrics_text():
    example = DaemonState.from_json(contract_example("daemon-state"))
    state = dataclasses.replace(example, active="tunnel2", switches_total=3, tunnels={
        "tunnel1": dataclasses.replace(example.tunnels["tunnel1"], up=False, rtt_seconds=None),
        "tunnel2": dataclasses.replace(example.tunnels["tunnel2"], up=True, rtt_seconds=0.0123)})
    text = render_metrics(state)
    assert 'hybrid_vpn_tunnel_up{tunnel="tunnel1"} 0' in text
    assert 'hybrid_vpn_tunnel_up{tunnel="tunnel2"} 1' in text
    assert 'hybrid_vpn_active_tunnel{tunnel="tunnel2"} 1' in text
    assert 'hybrid_vpn_active_tunnel{tunnel="tunnel1"} 0' in text
    assert 'hybrid_vpn_probe_rtt_seconds{tunnel="tunnel2"} 0.012300' in text
    assert "probe_rtt_seconds{tunnel=\"tunnel1\"}" not in text
    assert "hybrid_vpn_switches_total 3" in text
    assert text.endswith("\n")


def test_vici_payload_maps_to_tunnels_by_name_remote_and_mark():
    message = {
        "tunnel1": {"state": b"ESTABLISHED", "remote-host": b"198.51.100.1", "child-sas": {
            "tunnel1-3": {"name": b"tunnel1", "state": b"INSTALLED", "mark-in": b"00000064", "bytes-in": b"10",
                          "bytes-out": b"20"}}},
        "aws-b": {"state": b"ESTABLISHED", "remote-host": b"198.51.100.2", "child-sas": {
            "aws-b-4": {"name": b"aws-b", "state": b"REKEYED", "mark-in": b"000000c8"}}},
        "unrelated": {"state": b"CONNECTING", "remote-host": b"203.0.113.50"},
    }
    sas = parse_ike_sas(message)
    states = tunnel_sa_states(CFG, sas)
    assert states["tunnel1"].child_state == "INSTALLED" and states["tunnel1"].child_bytes_out == 20
    assert states["tunnel2"].ike_state == "ESTABLISHED" and states["tunnel2"].child_state == "REKEYED"
    assert installed_tunnels(CFG, sas) == frozenset({"tunnel1"})
