"""Pure pieces of the program: argument names against the installed SDKs, PSK rules, output builders, labels."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pulumi_aws as aws
import pulumi_linode as linode
import pytest

from hostconfig.contract.crypto import TUNNEL_OPTIONS
from infra.aws import tunnel_options
from infra.config import DEFAULTS, PSK_PATTERN, parse_stack_config
from infra.linode import firewall_inbound_rules, linode_label, linode_tags
from infra.outputs import TunnelFacts, ssh_host_public_key_line, tunnel_entries
from infra.psk import PSK_LENGTH, PSK_SPECIALS, aws_safe_psk

REPO = Path(__file__).resolve().parent.parent


def example_config():
    return parse_stack_config({
        "aws": {"region": "us-east-1", "vpc_cidr": "10.0.0.0/16"},
        "linode": {"region": "us-ord", "vlan_label": "hybrid-vpn-dev", "vlan_cidrs": ["172.16.0.0/12"],
                   "gateway_vlan_address": "172.16.1.1/24"},
        "admin_cidrs": ["198.51.100.7/32"],
    })


def test_tunnel_options_are_real_vpn_connection_arguments():
    params = set(inspect.signature(aws.ec2.VpnConnection._internal_init).parameters)
    config = example_config()
    for n in (1, 2):
        options = tunnel_options(config.crypto, n)
        assert len(options) == 9 + len(TUNNEL_OPTIONS)  # the proposals and lifetimes, then the table
        unknown = set(options) - params
        assert not unknown, f"not VpnConnection arguments in pulumi-aws: {unknown}"


def test_linode_instance_arguments_exist_in_the_sdk():
    params = set(inspect.signature(linode.Instance._internal_init).parameters)
    assert {"interface_generation", "linode_interfaces", "metadatas", "authorized_keys"} <= params
    vpc_addr = set(inspect.signature(linode.InstanceLinodeInterfaceVpcIpv4AddressArgs.__init__).parameters)
    assert {"address", "primary", "nat11_address"} <= vpc_addr
    assert "interfaces" in inspect.signature(linode.Firewall._internal_init).parameters
    # The firewall attached at creation, per interface (current generation).
    assert "firewall_id" in inspect.signature(linode.InstanceLinodeInterfaceArgs.__init__).parameters


def test_ignore_changes_name_real_instance_arguments():
    """The engine silently ignores an ignore_changes entry that names no input: a typo would bring replacements back."""
    from infra.linode import INSTANCE_IGNORE_CHANGES

    params = set(inspect.signature(linode.Instance._internal_init).parameters)
    assert {name.split("[")[0] for name in INSTANCE_IGNORE_CHANGES} <= params | {"linodeInterfaces"}
    firewall_params = set(inspect.signature(linode.Firewall._internal_init).parameters)
    assert {"inbounds", "interfaces", "linodes"} <= firewall_params


def test_dynamic_provider_configure_sees_the_stack_config():
    """FirewallRules reads linode:token through ResourceProvider.configure (pulumi >= 3.1xx)."""
    from pulumi.dynamic import ConfigureRequest, ResourceProvider

    assert "configure" in vars(ResourceProvider) and "config" in inspect.signature(ConfigureRequest).parameters


def test_aws_safe_psk():
    assert aws_safe_psk("0abcdefgh_1234") == "Zabcdefgh_1234"
    assert aws_safe_psk("Abcdefgh.1234") == "Abcdefgh.1234"
    with pytest.raises(ValueError) as info:
        aws_safe_psk("bad-dash-psk-value")
    assert "bad-dash-psk-value" not in str(info.value)
    assert 8 <= PSK_LENGTH <= 64 and set(PSK_SPECIALS) <= {".", "_"}
    assert PSK_PATTERN.match("Z" + "a" * (PSK_LENGTH - 1))


def facts(cidr: str, aws_ip: str, gw_ip: str) -> TunnelFacts:
    return TunnelFacts(outside_ip="198.51.100.1", inside_cidr=cidr, aws_inside_ip=aws_ip, gateway_inside_ip=gw_ip,
                       psk="FAKE_psk_value")


def test_tunnel_entries_follow_aws_order_and_refuse_swapped_inside_addresses():
    config = example_config()
    good = (facts("169.254.10.0/30", "169.254.10.1", "169.254.10.2"),
            facts("169.254.11.0/30", "169.254.11.1", "169.254.11.2"))
    entries = tunnel_entries(config, good)
    assert [(e["name"], e["interface"], e["mark"]) for e in entries] == [("tunnel1", "vti-aws1", 100),
                                                                         ("tunnel2", "vti-aws2", 200)]
    swapped = (facts("169.254.10.0/30", "169.254.10.2", "169.254.10.1"), good[1])
    with pytest.raises(ValueError, match="expected 169.254.10.1 for AWS"):
        tunnel_entries(config, swapped)


def test_labels_and_tags_follow_linode_rules():
    assert linode_label("hybrid-vpn-my_stack.v2-gw") == "hybrid-vpn-my-stack-v2-gw"
    assert linode_label("x" * 40 + "--gw") == "x" * 32
    assert not re.search(r"--", linode_label("a--b__c"))
    assert linode_tags({"team": "network", "env": "dev"}) == ["env=dev", "team=network"]


def test_no_ssh_rule_without_admin_networks():
    rules = firewall_inbound_rules(["198.51.100.1", "198.51.100.2"], [])
    assert [r.label for r in rules] == ["ike-from-aws", "natt-from-aws"]
    with_ssh = firewall_inbound_rules(["198.51.100.1", "198.51.100.2"], ["192.0.2.0/24"])
    assert [(r.protocol, r.ports) for r in with_ssh] == [("UDP", "500"), ("UDP", "4500"), ("TCP", "22")]


def test_ssh_host_public_key_line():
    line = ssh_host_public_key_line("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE\n", "hybrid-vpn-dev-gw")
    assert line == "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE hybrid-vpn-dev-gw"


def test_only_infra_config_reads_pulumi_config():
    readers = [p.relative_to(REPO) for p in [REPO / "__main__.py", *(REPO / "infra").glob("*.py")]
               if re.search(r"\bpulumi\.Config\(|\bfrom pulumi import .*\bConfig\b", p.read_text())]
    assert readers == [Path("infra/config.py")]


def test_defaults_live_in_one_table():
    # Every optional section the model reads has its defaults in DEFAULTS (the stack file documents the same values).
    assert set(DEFAULTS) == {"aws", "linode", "tunnels", "crypto", "failover", "admin_cidrs", "tags", "delivery",
                             "routing"}
