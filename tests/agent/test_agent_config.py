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
        (("version",), 2, "version: this agent reads version 1"),
        (("colour",), "blue", "colour: unknown key"),
        (("probe", "interval",), 200, "probe.interval: unknown key"),
        (("tunnels", 0, "psk"), "secret", "tunnels[0].psk: unknown key"),
        (("mtu",), _DELETE, "mtu: missing"),
        (("mtu",), "1419", "mtu: must be an integer 576..9000, e.g. 1419"),
        (("mtu",), True, "mtu: must be an integer"),
        (("public_interface",), "eth0; rm -rf /", "public_interface: must be an interface name"),
        (("public_interface",), "a-very-long-interface-name", "public_interface: must be an interface name"),
        (("gateway_vlan_address",), "172.16.1.1", "gateway_vlan_address: must be an IPv4 address with prefix"),
        (("gateway_vlan_address",), "192.0.2.1/24", "gateway_vlan_address: 192.0.2.1 is in none of vlan_cidrs"),
        (("local_outside_ip",), "10.8.0.300", "local_outside_ip: must be an IPv4 address, e.g. \"10.8.0.2\""),
        (("aws_cidrs",), [], "aws_cidrs: must be a list of 1..100 IPv4 networks"),
        (("aws_cidrs",), ["10.0.0.1/16"], "aws_cidrs[0]: must be an IPv4 network in CIDR form with no host bits"),
        (("aws_cidrs",), [f"10.{i}.0.0/16" for i in range(101)], "aws_cidrs: must be a list of 1..100"),
        (("aws_cidrs",), ["169.254.0.0/16"], "aws_cidrs[0]: 169.254.0.0/16 overlaps the inside network"),
        (("tunnels",), [], "tunnels: must be a list of 1 or 2 tunnels"),
        (("tunnels", 1, "mark"), 100, "tunnels[1].mark: must differ between tunnels"),
        (("tunnels", 1, "interface"), "vti-aws1", "tunnels[1].interface: must differ"),
        (("tunnels", 0, "interface"), "eth0", "tunnels[0].interface: 'eth0' is the public_interface; a tunnel needs"
                                              " its own VTI name the agent creates and owns, e.g. \"vti-aws1\""),
        (("tunnels", 1, "interface"), "eth1", "tunnels[1].interface: 'eth1' is the vlan_interface"),
        (("tunnels", 0, "mark"), 0, "tunnels[0].mark: must be an integer 1..4294967295, e.g. 100"),
        (("tunnels", 0, "aws_inside_ip"), "169.254.99.1", "tunnels[0].aws_inside_ip: must be the other address"),
        (("tunnels", 1), dict(BASE_CONFIG["tunnels"][1], gateway_inside_cidr="169.254.10.6/29",
                              aws_inside_ip="169.254.10.5"), "tunnels[1].gateway_inside_cidr: overlaps tunnels[0]"),
        (("primary_tunnel",), "tunnel3", "primary_tunnel: must be one of the tunnel names"),
        (("probe", "down_after"), 0, "probe.down_after: must be an integer 1..1000, e.g. 3"),
        (("probe", "extra_targets"), ["not-an-ip"], "probe.extra_targets[0]: must be an IPv4 address"),
        (("ownership", "route_table"), 254, "ownership.route_table: 254 is reserved"),
        (("ownership", "route_protocol"), 2, "ownership.route_protocol: must be an integer 5..255"),
        (("ownership", "rule_priority"), 32766, "ownership.rule_priority: must be an integer 1..32765"),
        (("ownership", "nft_table"), "hybrid vpn", "ownership.nft_table: must be an nftables table name"),
        (("paths", "state_dir"), "run/hybrid-vpn", "paths.state_dir: must be an absolute path"),
    ],
)
def test_bad_values_name_the_key(path, value, expected):
    data = copy.deepcopy(BASE_CONFIG)
    set_path(data, path, value)
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert expected in str(info.value)


def test_corrupt_or_partial_file_is_an_error(tmp_path):
    full = json.dumps(BASE_CONFIG)
    path = tmp_path / "agent.json"
    path.write_text(full[: len(full) // 2])
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(path)
    path.write_text("[]")
    with pytest.raises(ConfigError, match="must be a JSON object"):
        load_config(path)
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "missing.json")
    path.write_text(full)
    assert load_config(path).primary_tunnel == "tunnel1"
