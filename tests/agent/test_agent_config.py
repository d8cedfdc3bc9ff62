"""agent.json validation: every bad value is an error naming the key; corrupt files apply nothing."""

from __future__ import annotations

import copy
import dataclasses
import json
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

import pytest
from agent_testlib import BASE_CONFIG
from testlib import DELETE as _DELETE
from testlib import set_path

from hostconfig.agent.config import ConfigError, load_config, parse_config


def test_contract_example_parses_into_typed_values():
    cfg = parse_config(copy.deepcopy(BASE_CONFIG))
    assert cfg.gateway_vlan_address == IPv4Interface("172.16.1.1/24")
    assert cfg.aws_cidrs == (IPv4Network("10.0.0.0/16"),)
    assert cfg.tunnels[1].gateway_inside_ip == IPv4Address("169.254.11.2")
    assert cfg.ownership.route_table == 1519 and cfg.probe.failback_hold_seconds == 20.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.mtu = 1  # type: ignore[misc]




@pytest.mark.parametrize(
    "path, value, expected",
    [
        (("version",), 2, "version: version 2 is not the version this agent knows (1)"),
        (("colour",), "blue", "colour: unknown key"),
        (("probe", "interval",), 200, "probe.interval: unknown key"),
        (("tunnels", 0, "psk"), "secret", "tunnels[0].psk: unknown key"),
        (("mtu",), _DELETE, "mtu: is required; example: 1419"),
        (("mtu",), "1419", "mtu: must be an integer 576..1446 bytes"),
        (("mtu",), True, "mtu: must be an integer"),
        (("public_interface",), "eth0; rm -rf /", "public_interface: 'eth0; rm -rf /' is not valid: a Linux interface"),
        (("public_interface",), "a-very-long-interface-name", "public_interface: 'a-very-long-interface-name' is not"),
        (("gateway_vlan_address",), "172.16.1.1", "gateway_vlan_address: '172.16.1.1' needs its prefix length"),
        (("gateway_vlan_address",), "192.0.2.1/24", "gateway_vlan_address: 192.0.2.1/24 is outside every VLAN CIDR"),
        (("local_outside_ip",), "10.8.0.300", "local_outside_ip: '10.8.0.300' is not an IPv4 address; example:"),
        (("aws_cidrs",), [], "aws_cidrs: must hold 1 to 100 item(s)"),
        (("aws_cidrs",), ["10.0.0.1/16"], "aws_cidrs[0]: '10.0.0.1/16' is not an IPv4 network in CIDR"),
        (("aws_cidrs",), [f"10.{i}.0.0/16" for i in range(101)], "aws_cidrs: must hold 1 to 100 item(s)"),
        (("aws_cidrs",), ["169.254.0.0/16"], "aws_cidrs[0]: 169.254.0.0/16 overlaps 169.254.0.0/16, where"),
        (("tunnels",), [], "tunnels: must hold 1 to 2 item(s)"),
        (("tunnels", 1, "mark"), 100, "tunnels[1].mark: 100 is also tunnel1's mark; each tunnel needs its own"),
        (("tunnels", 1, "interface"), "vti-aws1", "tunnels[1].interface: vti-aws1 is also tunnel1's interface"),
        (("tunnels", 0, "interface"), "eth0", "tunnels[0].interface: 'eth0' is the public_interface; the agent owns,"
                                              " recreates and re-addresses the tunnel interfaces, so a tunnel may not"
                                              " take a name the gateway already uses; example: vti-aws1"),
        (("tunnels", 1, "interface"), "eth1", "tunnels[1].interface: 'eth1' is the vlan_interface"),
        (("tunnels", 0, "mark"), 0, "tunnels[0].mark: 0 is out of range: 1..4294967295"),
        (("tunnels", 0, "aws_inside_ip"), "169.254.99.1", "tunnels[0].aws_inside_ip: 169.254.99.1 is not the first"),
        (("tunnels", 1), dict(BASE_CONFIG["tunnels"][1], gateway_inside_cidr="169.254.11.1/30",
                              aws_inside_ip="169.254.11.2"), "tunnels[1].gateway_inside_cidr: 169.254.11.1 is not the"),
        (("tunnels", 1), dict(BASE_CONFIG["tunnels"][1], gateway_inside_cidr="169.254.10.6/29",
                              aws_inside_ip="169.254.10.5"), "tunnels[1].gateway_inside_cidr: 169.254.10.0/29 is not a"
                                                             " /30 inside 169.254.0.0/16"),
        (("primary_tunnel",), "tunnel3", "primary_tunnel: 'tunnel3' names no tunnel"),
        (("probe", "down_after"), 0, "probe.down_after: 0 is out of range: 1..1000 lost probes; example: 3"),
        (("probe", "extra_targets"), ["not-an-ip"], "probe.extra_targets[0]: 'not-an-ip' is not an IPv4 address"),
        (("probe", "extra_targets"), [f"10.0.4.{i}" for i in range(17)], "probe.extra_targets: must hold 0 to 16"),
        (("ownership", "route_table"), 254, "ownership.route_table: 254 is reserved"),
        (("ownership", "route_protocol"), 2, "ownership.route_protocol: 2 is out of range: 5..255"),
        (("ownership", "rule_priority"), 32766, "ownership.rule_priority: 32766 is out of range: 1..32765"),
        (("ownership", "nft_table"), "hybrid vpn", "ownership.nft_table: 'hybrid vpn' is not valid: an nftables table"),
        (("paths", "state_dir"), "run/hybrid-vpn", "paths.state_dir: 'run/hybrid-vpn' is not an absolute path"),
    ],
)
def test_bad_values_name_the_key(path, value, expected):
    data = copy.deepcopy(BASE_CONFIG)
    set_path(data, path, value)
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert expected in str(info.value)


def test_every_problem_is_reported_at_once():
    data = copy.deepcopy(BASE_CONFIG)
    data["mtu"] = 9000
    data["probe"]["down_after"] = 0
    data["tunnels"][0]["interface"] = "eth0"
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert [p.split(":")[0] for p in info.value.problems] == ["tunnels[0].interface", "mtu", "probe.down_after"]


def test_corrupt_or_partial_file_is_an_error(tmp_path):
    full = json.dumps(BASE_CONFIG)
    path = tmp_path / "agent.json"
    path.write_text(full[: len(full) // 2])
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(path)
    path.write_text("[]")
    with pytest.raises(ConfigError, match="must be an object"):
        load_config(path)
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "missing.json")
    path.write_text(full)
    assert load_config(path).primary_tunnel == "tunnel1"
