"""routing.mode bgp in the Pulumi program (issue 16): the AWS side under the SDK's mocks, and the stack reader's rules.

A static stack is covered by tests/test_program.py (and its goldens); here only what bgp changes, plus the proof that
leaving routing out is the old static program."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from hostconfig.plan import GatewayPlan, RoutingSpec
from infra.aws import customer_gateway_asn_args
from infra.config import ConfigError, parse_stack_config
from lab.cloud import run_program
from tests.test_program import T_CGW, T_ROUTE, T_VPN, stack


def bgp_stack(**routing: Any) -> dict[str, Any]:
    config = stack("lab")
    config["hybrid-vpn:routing"] = {"mode": "bgp", **routing}
    return config


@pytest.fixture(scope="module")
def bgp_run():
    return run_program(bgp_stack(customer_asn=65010))


def test_bgp_mode_makes_a_dynamic_connection_without_static_routes(bgp_run):
    assert bgp_run.one(T_VPN).inputs["staticRoutesOnly"] is False
    assert bgp_run.of_type(T_ROUTE) == []
    cgw = bgp_run.one(T_CGW).inputs
    assert cgw["bgpAsn"] == "65010" and "bgpAsnExtended" not in cgw


def test_bgp_mode_puts_the_asns_in_host_config(bgp_run):
    assert bgp_run.outputs["host_config"]["routing"] == {"mode": "bgp", "customer_asn": 65010,
                                                         "amazon_side_asn": 64512}
    plan = GatewayPlan.from_host_config(bgp_run.outputs["host_config"])
    assert plan.routing == RoutingSpec(customer_asn=65010, amazon_side_asn=64512)


def test_without_routing_the_program_is_the_static_one():
    static = run_program(stack("lab"))
    assert static.one(T_VPN).inputs["staticRoutesOnly"] is True
    assert [r.inputs["destinationCidrBlock"] for r in static.of_type(T_ROUTE)] == ["172.16.0.0/12"]
    assert static.one(T_CGW).inputs["bgpAsn"] == "65000"
    assert "routing" not in static.outputs["host_config"]


def test_a_32_bit_customer_asn_goes_in_bgp_asn_extended():
    assert customer_gateway_asn_args(2_147_483_647) == {"bgp_asn": "2147483647"}
    assert customer_gateway_asn_args(4_200_000_001) == {"bgp_asn_extended": "4200000001"}
    run = run_program(bgp_stack(customer_asn=4_200_000_001))
    cgw = run.one(T_CGW).inputs
    assert cgw["bgpAsnExtended"] == "4200000001" and "bgpAsn" not in cgw


def bare(config: dict[str, Any]) -> dict[str, Any]:
    return {k.split(":", 1)[1]: copy.deepcopy(v) for k, v in config.items() if k.startswith("hybrid-vpn:")}


def problems(routing: dict[str, Any], **linode: Any) -> str:
    raw = bare(stack("lab"))
    raw["routing"] = routing
    raw["linode"].update(linode)
    with pytest.raises(ConfigError) as err:
        parse_stack_config(raw)
    return str(err.value)


@pytest.mark.parametrize(("routing", "key", "rule"), [
    ({"mode": "ospf"}, "hybrid-vpn:routing.mode", "is not one of static, bgp"),
    ({"mode": "bgp", "customer_asn": 0}, "hybrid-vpn:routing.customer_asn", "out of range: 1..4294967294"),
    ({"mode": "bgp", "customer_asn": 4294967295}, "hybrid-vpn:routing.customer_asn", "out of range"),
    ({"mode": "bgp", "customer_asn": "65000"}, "hybrid-vpn:routing.customer_asn", "must be an integer"),
    ({"mode": "bgp", "customer_asn": 7224}, "hybrid-vpn:routing.customer_asn", "reserved by AWS"),
    ({"mode": "bgp", "customer_asn": 23456}, "hybrid-vpn:routing.customer_asn", "AS_TRANS"),
    ({"mode": "bgp", "customer_asn": 64512}, "hybrid-vpn:routing.customer_asn", "is both routing.customer_asn"),
    ({"mode": "bgp", "asn": 65001}, "hybrid-vpn:routing.asn", "unknown key"),
])
def test_bad_routing_names_the_key_the_rule_and_a_right_value(routing, key, rule):
    text = problems(routing)
    line = next(line for line in text.splitlines() if key in line)
    assert rule in line and ("example:" in line or "known keys" in line)


def test_bgp_counts_the_more_specific_halves_against_awss_100_routes():
    ok = [f"172.16.{i}.0/24" for i in range(33)]  # 33 x 3 = 99 routes
    raw = bare(stack("lab"))
    raw["routing"] = {"mode": "bgp"}
    raw["linode"].update(vlan_cidrs=ok, gateway_vlan_address="172.16.1.1/24")
    assert parse_stack_config(raw).routing.bgp
    text = problems({"mode": "bgp"}, vlan_cidrs=[*ok, "172.16.40.0/24"], gateway_vlan_address="172.16.1.1/24")
    line = next(line for line in text.splitlines() if "hybrid-vpn:linode.vlan_cidrs:" in line)
    assert "34 VLAN CIDRs make 102 BGP routes" in line and "100 routes" in line and "routing.mode" in line
    # The same 34 CIDRs are fine with static routes (34 routes, no halves).
    raw["routing"] = {"mode": "static"}
    raw["linode"]["vlan_cidrs"] = [*ok, "172.16.40.0/24"]
    assert not parse_stack_config(raw).routing.bgp


def test_bgp_refuses_a_vlan_cidr_without_halves():
    text = problems({"mode": "bgp"}, vlan_cidrs=["172.16.0.0/12", "192.168.9.9/32"])
    assert "hybrid-vpn:linode.vlan_cidrs[1]: 192.168.9.9/32: a /32 has no more-specific halves" in text


def test_the_asns_must_differ_as_configured_not_from_a_fixed_65000():
    """amazon_side_asn 65000 is fine beside another customer ASN; equal ASNs are refused naming both keys."""
    raw = bare(stack("lab"))
    raw["aws"]["amazon_side_asn"] = 65000
    raw["routing"] = {"mode": "bgp", "customer_asn": 65010}
    config = parse_stack_config(raw)
    assert (config.aws.amazon_side_asn, config.routing.customer_asn) == (65000, 65010)
    raw["routing"]["customer_asn"] = 65000
    with pytest.raises(ConfigError) as err:
        parse_stack_config(raw)
    line = next(p for p in err.value.problems if "65000" in p)
    assert line.startswith("hybrid-vpn:routing.customer_asn: 65000 is both routing.customer_asn")
    assert "aws.amazon_side_asn" in line and "example" in line
    raw["routing"] = {"mode": "bgp", "customer_asn": 4_200_000_001}
    raw["aws"]["amazon_side_asn"] = 4_200_000_001
    with pytest.raises(ConfigError, match="hybrid-vpn:routing.customer_asn: 4200000001 is both"):
        parse_stack_config(raw)


def test_a_bgp_stack_with_amazon_side_asn_65000_runs_end_to_end():
    config = bgp_stack(customer_asn=65010)
    config["hybrid-vpn:aws"]["amazon_side_asn"] = 65000
    run = run_program(config)
    assert run.outputs["host_config"]["routing"] == {"mode": "bgp", "customer_asn": 65010, "amazon_side_asn": 65000}
