"""The seam for several VPN connections (hostconfig/contract/connection.py): the program, the plan and the agent
configuration hold a tuple of ``Connection(name, tunnels)``; their ``tunnels`` are read from it. With the single
connection a version 1 stack config allows, a plan round-trips: program -> host_config -> plan -> agent.json -> agent
config, the same one connection with the same two tunnels, and the rendered files stay the goldens (test_render.py)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from hostconfig.agent.config import parse_config
from hostconfig.contract.connection import SINGLE, Connection, tunnels_of
from hostconfig.deliver.program import render_for_delivery
from hostconfig.gateway_paths import AGENT_CONFIG
from hostconfig.plan import GatewayPlan, agent_config
from infra.config import parse_stack_config
from infra.outputs import build_host_config
from infra.preview_check import PLACEHOLDER_VPN_CONNECTION_ID, placeholder_host_config
from lab.cloud import stack_config_from_file

REPO = Path(__file__).resolve().parents[1]


def lab_config():
    raw = stack_config_from_file(REPO / "stacks" / "Pulumi.lab.yaml")
    return parse_stack_config({k.split(":", 1)[1]: v for k, v in raw.items() if k.startswith("hybrid-vpn:")})


def test_a_plan_with_the_single_connection_round_trips():
    host_config = placeholder_host_config(lab_config(), stack="lab", label="hybrid-vpn-lab-gw")
    plan = GatewayPlan.from_host_config(host_config)
    (connection,) = plan.connections
    assert connection.name == PLACEHOLDER_VPN_CONNECTION_ID == plan.vpn_connection_id
    assert [t.name for t in connection.tunnels] == ["tunnel1", "tunnel2"] and plan.tunnels == connection.tunnels

    agent = parse_config(json.loads(json.dumps(agent_config(plan))))  # written and read as the gateway does
    (agent_connection,) = agent.connections
    assert agent_connection.name == SINGLE and agent.tunnels == agent_connection.tunnels
    assert [(t.name, t.interface, t.mark, t.remote_outside_ip, t.aws_inside_ip) for t in agent.tunnels] == \
        [(t.name, t.interface, t.mark, t.outside_ip, t.aws_inside_ip) for t in plan.tunnels]

    # The delivered agent.json is that same document.
    files = render_for_delivery(host_config, None)
    delivered = next(f for f in files if f["path"] == AGENT_CONFIG.path)
    assert parse_config(json.loads(base64.b64decode(delivered["content_b64"]))) == agent


def test_the_program_builds_host_config_from_its_connections_and_version_1_carries_one():
    host_config = placeholder_host_config(lab_config(), stack="lab", label="hybrid-vpn-lab-gw")
    plan = GatewayPlan.from_host_config(host_config)
    assert host_config["aws"]["vpn_connection_id"] == plan.connections[0].name
    with pytest.raises(ValueError, match="exactly one VPN connection, got 2"):
        build_host_config(stack="lab", config=lab_config(), gateway=None, vgw_id="vgw-0",  # type: ignore[arg-type]
                          connections=(Connection("vpn-a", ()), Connection("vpn-b", ())))


def test_tunnels_of_several_connections_are_connection_by_connection():
    assert tunnels_of((Connection("a", (1, 2)), Connection("b", (3, 4)))) == (1, 2, 3, 4)


def test_the_program_refuses_inside_addresses_that_break_awss_rule_with_the_rules_message():
    """infra/outputs.py had its own copy of the inside-address rule; it now takes rules.inside_address_problems."""
    from infra.outputs import TunnelFacts, tunnel_entries

    good = TunnelFacts("198.51.100.1", "169.254.10.0/30", "169.254.10.1", "169.254.10.2", "Example_psk.0123456789")
    swapped = TunnelFacts("198.51.100.2", "169.254.11.0/30", "169.254.11.2", "169.254.11.1", "Example_psk.0123456789")
    with pytest.raises(ValueError, match=r"^tunnel2: 169.254.11.2 is not the first usable address of 169.254.11.0/30 "
                                         r"\(AWS takes the first\); 169.254.11.1 is not the second"):
        tunnel_entries(lab_config(), (good, swapped))
