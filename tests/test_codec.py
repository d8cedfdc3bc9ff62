"""One codec (hostconfig/contract/codec.py) between the contracts' dataclasses and JSON: the agent configuration's
reader takes its key tables and version rule from it, the agent's output documents (daemon state, status JSON) are
decoded and encoded by it, and the host_config reader shares the version rule. Before (i17-rest), agent.json, the
status Record and host_config each had their own key lists and version check, with three different messages."""

from __future__ import annotations

import copy
import dataclasses
import json
import sys
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
from testlib import contract_example

from hostconfig.agent import config as agent_config
from hostconfig.agent.config import ConfigError, parse_config
from hostconfig.agent.status_contract import ContractError, DaemonState, StatusReport
from hostconfig.contract.codec import Unknown, decode, encode, field_table, json_key
from hostconfig.plan import GatewayPlan, PlanError

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "agent"))
from agent_testlib import BASE_CONFIG  # noqa: E402


def test_every_reader_refuses_another_version_with_the_one_rule():
    messages = []
    for document in (DaemonState, StatusReport):
        with pytest.raises(ContractError) as info:
            document.from_json({**contract_example({DaemonState: "daemon-state"}.get(document, "status")),
                                "version": 2})
        messages.append(str(info.value))
    with pytest.raises(ConfigError) as agent:
        parse_config({**copy.deepcopy(BASE_CONFIG), "version": 2})
    messages.append(str(agent.value))
    host_config = json.loads((REPO / "tests" / "golden" / "inputs" / "default.json").read_text())
    with pytest.raises(PlanError) as plan:
        GatewayPlan.from_host_config({**host_config, "version": 2})
    messages.append(str(plan.value))
    for message, reader in zip(messages, ("this reader", "this reader", "this agent", "this renderer"), strict=True):
        assert f"version 2 is not the version {reader} knows (1); install the same hybrid-vpn release" in message


def test_the_agent_configurations_keys_are_its_dataclasses_fields():
    for table, cls in ((agent_config._FIELDS, agent_config.AgentConfig),
                       (agent_config._TUNNEL_FIELDS, agent_config.TunnelConfig),
                       (agent_config._PROBE_FIELDS, agent_config.ProbeConfig),
                       (agent_config._OWNERSHIP_FIELDS, agent_config.Ownership),
                       (agent_config._PATHS_FIELDS, agent_config.Paths)):
        assert list(table) == [json_key(f) for f in dataclasses.fields(cls)]
        assert table == field_table(cls, {k: v for k, v in table.items() if k == "repair_hold_seconds"})


@dataclasses.dataclass(frozen=True)
class _Hop:
    address: IPv4Address
    nets: tuple[IPv4Network, ...]
    via: str | None = dataclasses.field(metadata={"key": "from"})


def test_decode_and_encode_round_trip_with_the_unknown_key_policy_as_a_parameter():
    data = {"address": "10.0.0.1", "nets": ["10.0.0.0/24"], "from": None}
    hop = decode(_Hop, data, "hop", ValueError)
    assert hop == _Hop(IPv4Address("10.0.0.1"), (IPv4Network("10.0.0.0/24"),), None)
    assert encode(hop) == data
    assert decode(_Hop, {**data, "colour": "blue"}, "hop", ValueError, Unknown.IGNORE) == hop
    with pytest.raises(ValueError, match=r"^hop.colour: unknown key; known keys: address, nets, from$"):
        decode(_Hop, {**data, "colour": "blue"}, "hop", ValueError, Unknown.REFUSE)
    with pytest.raises(ValueError, match=r"^hop.nets\[0\]: "):
        decode(_Hop, {**data, "nets": ["10.0.0.1/24"]}, "hop", ValueError)


def test_the_status_record_encodes_and_decodes_through_the_codec():
    state = DaemonState.from_json(contract_example("daemon-state"))
    assert state.to_json() == encode(state)
    assert decode(DaemonState, state.to_json(), "daemon state", ContractError) == state


def test_host_configs_object_keys_are_the_plans_spec_fields():
    import hostconfig.plan as plan

    for table, cls in ((plan._GATEWAY_FIELDS, plan.GatewaySpec), (plan._TUNNEL_FIELDS, plan.TunnelSpec),
                       (plan._FAILOVER_FIELDS, plan.FailoverSpec)):
        assert table == field_table(cls) and list(table) == [f.name for f in dataclasses.fields(cls)]


@pytest.mark.parametrize("scenario", ["default", "custom-crypto", "multi-cidr", "bgp"])
def test_agent_json_is_written_and_read_through_one_definition(scenario):
    """The renderer writes agent.json from the agent's own dataclasses through the codec: what the agent reads back
    writes the same JSON again (before, a hand-written dict: failback_hold_seconds was 20 on disk and 20.0 read)."""
    from hostconfig import plan as planmod

    name = "default" if scenario == "bgp" else scenario
    host_config = json.loads((REPO / "tests" / "golden" / "inputs" / f"{name}.json").read_text())
    if scenario == "bgp":
        host_config["routing"] = {"mode": "bgp", "customer_asn": 65010, "amazon_side_asn": 64512}
    written = planmod.agent_config(GatewayPlan.from_host_config(host_config))
    read = parse_config(json.loads(json.dumps(written)))
    assert agent_config.to_json(read) == written
    assert type(read.probe.failback_hold_seconds) is type(written["probe"]["failback_hold_seconds"]) is int
    assert ("bgp" in written) is (scenario == "bgp") and "repair_hold_seconds" not in written["probe"]
    changed = dataclasses.replace(read, probe=dataclasses.replace(read.probe, repair_hold_seconds=9))
    assert agent_config.to_json(changed)["probe"]["repair_hold_seconds"] == 9  # written when not the default
    assert parse_config(agent_config.to_json(changed)).probe.repair_hold_seconds == 9
