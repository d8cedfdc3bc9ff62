"""Everything at preview (issue 17, part 3): what the renderer or the gateway agent would refuse, the program refuses
before it registers any resource, naming the stack key. The program runs against the emulated cloud (lab/cloud.py).

Before issue 17 (main at 0539dc0) these configs passed infra/config.py and the renderer refused them inside apply(),
after 20 resources (the VPN connection and the Linode instance among them) were registered. Since the rules module
(i17-rules) most are refused by infra/config.py itself; a stack name that is no host name (``lab_eu``, ``dev.eu``) was
still refused only inside apply(), after 13-15 resources."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest

from infra.config import ConfigError, parse_stack_config
from infra.preview_check import (
    FROM_CLOUD,
    FROM_PROGRAM,
    STACK_KEYS,
    STACK_NAME,
    placeholder_host_config,
    preview_problems,
    stack_key_of,
)
from lab.cloud import run_program, stack_config_from_file

REPO = Path(__file__).resolve().parent.parent
FAKE_PSKS = ["FAKE_psk_tunnel1_not_a_secret", "FAKE_psk_tunnel2_not_a_secret"]


def stack(name: str) -> dict[str, Any]:
    return copy.deepcopy(stack_config_from_file(REPO / "stacks" / f"Pulumi.{name}.yaml"))


def bare(config: dict[str, Any]) -> dict[str, Any]:
    """The stack file's ``hybrid-vpn:`` keys as parse_stack_config takes them."""
    return {k.split(":", 1)[1]: v for k, v in config.items() if k.startswith("hybrid-vpn:")}


def _lab(section: str, **values: Any) -> dict[str, Any]:
    config = stack("lab")
    config.setdefault(f"hybrid-vpn:{section}", {}).update(values)
    return config


# (what, stack config, stack name, the stack key the message must start with, the rule (a regex))
REFUSED_ONLY_IN_APPLY_ON_MAIN = [
    ("duplicate AWS CIDRs", _lab("aws", cidrs=["10.0.0.0/16", "10.0.0.0/16"]), "lab",
     "hybrid-vpn:aws.cidrs", "duplicate|twice"),
    ("duplicate VLAN CIDRs", _lab("linode", vlan_cidrs=["172.16.0.0/12", "172.16.0.0/12"]), "lab",
     "hybrid-vpn:linode.vlan_cidrs", "duplicate|twice"),
    ("17 extra probe targets", _lab("failover", extra_probe_targets=[f"10.0.4.{i}" for i in range(1, 18)]), "lab",
     "hybrid-vpn:failover.extra_probe_targets", "0..16|0 to 16"),
    ("DPD timeout above 3600 s", _lab("crypto", dpd_timeout_seconds=3601), "lab",
     "hybrid-vpn:crypto.dpd_timeout_seconds", "30..3600|3600"),
    ("a /31 VLAN address", _lab("linode", gateway_vlan_address="172.16.1.1/31"), "lab",
     "hybrid-vpn:linode.gateway_vlan_address", "prefix length|/31"),
    ("a duplicate admin CIDR", {**stack("lab"), "hybrid-vpn:admin_cidrs": ["192.0.2.0/24", "192.0.2.0/24"]}, "lab",
     "hybrid-vpn:admin_cidrs", "duplicate|twice"),
    ("the same cipher twice", _lab("crypto", phase1={"encryption": ["AES256", "AES256"]}), "lab",
     "hybrid-vpn:crypto.phase1.encryption", "duplicate|twice"),
    ("a tunnel interface starting with '-'", _lab("tunnels", interfaces=["-vti1", "vti-aws2"]), "lab",
     "hybrid-vpn:tunnels.interfaces[0]", "interface name"),
    ("a stack name that is no host name", stack("lab"), "lab_eu", STACK_NAME, "host name"),
    ("an AWS CIDR in 169.254.0.0/16 while AWS picks the inside /30s",
     {**_lab("aws", vpc_cidr=None, vpc_id="vpc-0a1b2c3d4e5f60718", cidrs=["10.0.0.0/16", "169.254.44.0/24"]),
      "hybrid-vpn:tunnels": {}}, "lab", "hybrid-vpn:aws.cidrs[1]", "169.254.0.0/16"),
]



def _bgp(**routing: Any) -> dict[str, Any]:
    config = stack("lab")
    config["hybrid-vpn:routing"] = {"mode": "bgp", **routing}
    return config


# routing.mode bgp (issue 16): refused before any resource, under the routing (or linode) key
ROUTING_REFUSALS = [
    ("an unknown routing mode", _bgp(mode="ospf"), "lab", "hybrid-vpn:routing.mode", "static|bgp"),
    ("a customer ASN AWS reserves", _bgp(customer_asn=7224), "lab", "hybrid-vpn:routing.customer_asn", "reserved"),
    ("a customer ASN out of range", _bgp(customer_asn=0), "lab", "hybrid-vpn:routing.customer_asn", "4294967294"),
    ("the VGW's ASN as the customer's", _bgp(customer_asn=64512), "lab", "hybrid-vpn:routing.customer_asn",
     "amazon_side_asn"),
    ("a /32 VLAN CIDR in bgp mode",
     {**_bgp(), "hybrid-vpn:linode": {**stack("lab")["hybrid-vpn:linode"],
                                      "vlan_cidrs": ["172.16.0.0/12", "192.168.7.7/32"]}},
     "lab", "hybrid-vpn:linode.vlan_cidrs[1]", "more-specific"),
]


@pytest.mark.parametrize("what,config,stack_name,key,rule", REFUSED_ONLY_IN_APPLY_ON_MAIN + ROUTING_REFUSALS,
                         ids=[c[0] for c in REFUSED_ONLY_IN_APPLY_ON_MAIN + ROUTING_REFUSALS])
def test_refused_at_preview_before_any_resource_naming_the_stack_key(what, config, stack_name, key, rule):
    registered: list = []
    with pytest.raises(ConfigError) as info:
        run_program(config, stack=stack_name, record=registered)
    assert registered == [], f"{what}: {[r.name for r in registered]} registered before the refusal"
    problems = info.value.problems
    # Refused by infra/config.py or by the preview check (whichever holds the rule), under the key or one of its items.
    assert any(re.match(rf"{re.escape(key)}(\[\d+\])?: ", p) and re.search(rule, p) for p in problems), problems
    assert not any(p.startswith(("host_config", FROM_PROGRAM, FROM_CLOUD)) for p in problems), problems
    assert all("right value" in p or "example" in p for p in problems), problems  # the rule and a right value


@pytest.mark.parametrize("interface,index", [("eth0", 0), ("eth1", 1)])
def test_a_tunnel_named_like_a_nic_is_refused_before_any_resource(interface, index):
    """Refused by infra/config.py already; the renderer and the agent refuse it too, so it never reaches the gateway."""
    interfaces = ["vti-aws1", "vti-aws2"]
    interfaces[index] = interface
    registered: list = []
    with pytest.raises(ConfigError, match=rf"hybrid-vpn:tunnels.interfaces\[{index}\]: '{interface}'"):
        run_program(_lab("tunnels", interfaces=interfaces), record=registered)
    assert registered == []


def test_every_problem_is_listed_at_once():
    config = _lab("crypto", dpd_timeout_seconds=7200)
    config["hybrid-vpn:aws"]["cidrs"] = ["10.0.0.0/16", "10.0.0.0/16"]
    with pytest.raises(ConfigError) as info:
        run_program(config, record=[])
    keys = {re.sub(r"\[\d+\]$", "", p.split(": ", 1)[0]) for p in info.value.problems}
    assert {"hybrid-vpn:aws.cidrs", "hybrid-vpn:crypto.dpd_timeout_seconds"} <= keys


def test_the_shipped_stacks_pass_the_check():
    for name, secret in (("lab", {}), ("dev", {"tunnels": {"psks": FAKE_PSKS}})):
        raw = bare(stack(name))
        raw["tunnels"] = {**raw.get("tunnels", {}), **secret.get("tunnels", {})}
        config = parse_stack_config(raw, secret_keys=("tunnels",))
        assert preview_problems(config, stack=name, label=f"hybrid-vpn-{name}-gw") == []


# ------------------------------------------------------------------ the placeholder host_config is the exported one

def _leaves(value: Any, path: str = "host_config") -> dict[str, Any]:
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _leaves(item, f"{path}.{key}").items()}
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return {k: v for i, item in enumerate(value) for k, v in _leaves(item, f"{path}[{i}]").items()}
    return {path: value}


# What only the clouds know (or the program generates); every other value must be the exported one.
CLOUD_PATHS = re.compile(r"^host_config\.(gateway\.(public_ip|private_ip|ssh_host_public_key)|aws\.(vpn_connection_id"
                         r"|vgw_id)|tunnels\[\d\]\.(outside_ip|psk|inside_cidr|aws_inside_ip|gateway_inside_ip))$")


@pytest.mark.parametrize("name,psks,inside", [("lab", None, True), ("dev", FAKE_PSKS, True), ("lab", None, False)])
def test_placeholder_host_config_differs_from_the_exported_one_only_where_the_clouds_decide(name, psks, inside):
    config = stack(name)
    if psks:
        config["hybrid-vpn:tunnels"]["psks"] = list(psks)
    if not inside:
        del config["hybrid-vpn:tunnels"]["inside_cidrs"]
    run = run_program(config, stack=name, secret_keys=("hybrid-vpn:tunnels",))
    exported = run.outputs["host_config"]
    placeholder = placeholder_host_config(parse_stack_config(bare(config), secret_keys=("tunnels",)), stack=name,
                                          label=exported["gateway"]["label"])
    got, want = _leaves(placeholder), _leaves(exported)
    assert set(got) == set(want)  # the same shape: one builder
    differing = {p for p in want if got[p] != want[p]}
    assert all(CLOUD_PATHS.match(p) for p in differing), sorted(p for p in differing if not CLOUD_PATHS.match(p))
    if psks or inside:
        # Configured values are used as they are, never replaced by a placeholder.
        assert not {p for p in differing if p.endswith(".psk")} or not psks
        assert not {p for p in differing if "inside" in p} or not inside
    # The placeholders themselves pass the renderer's rules for the cloud-decided fields.
    assert preview_problems(parse_stack_config(bare(config), secret_keys=("tunnels",)), stack=name,
                            label=exported["gateway"]["label"]) == []


# ------------------------------------------------------------------------------------- the one table of stack keys

def test_every_host_config_value_maps_to_its_own_row_of_the_table():
    config = parse_stack_config(bare(stack("lab")))
    host_config = placeholder_host_config(config, stack="lab", label="hybrid-vpn-lab-gw")
    unmapped = [p for p in _leaves(host_config) if stack_key_of(p)[1] is STACK_KEYS[-1]]
    assert unmapped == ["host_config.kind", "host_config.version"]  # the program's own constants


def test_every_host_config_value_of_a_bgp_stack_maps_to_its_own_row_of_the_table():
    config = parse_stack_config(bare(_bgp(customer_asn=65010)))
    host_config = placeholder_host_config(config, stack="lab", label="hybrid-vpn-lab-gw")
    assert {p: stack_key_of(p)[0] for p in _leaves(host_config) if p.startswith("host_config.routing")} == {
        "host_config.routing.mode": "hybrid-vpn:routing.mode",
        "host_config.routing.customer_asn": "hybrid-vpn:routing.customer_asn",
        "host_config.routing.amazon_side_asn": "hybrid-vpn:aws.amazon_side_asn",
    }
    unmapped = [p for p in _leaves(host_config) if stack_key_of(p)[1] is STACK_KEYS[-1]]
    assert unmapped == ["host_config.kind", "host_config.version"]


def test_a_routing_refusal_of_the_renderer_names_the_routing_key():
    """A routing the stack reader let through (built here by hand) that the renderer refuses: named by stack key."""
    import dataclasses

    from infra.config import RoutingConfig

    config = parse_stack_config(bare(_bgp(customer_asn=65010)))
    bad = dataclasses.replace(config, routing=RoutingConfig("bgp", 23456))
    problems = preview_problems(bad, stack="lab", label="hybrid-vpn-lab-gw")
    assert problems and all(p.startswith("hybrid-vpn:routing.customer_asn: 23456 is AS_TRANS") for p in problems), \
        problems
    assert "example" in problems[0] and "host_config.routing.customer_asn" in problems[0]


@pytest.mark.parametrize("name", ["lab", "bgp"])
def test_every_agent_json_key_maps_to_a_stack_key_or_the_program(name):
    from hostconfig.plan import GatewayPlan, agent_view

    config = parse_stack_config(bare(stack("lab") if name == "lab" else _bgp(customer_asn=65010)))
    agent = agent_view(GatewayPlan.from_host_config(placeholder_host_config(config, stack="lab",
                                                                            label="hybrid-vpn-lab-gw")))["agent"]
    leaves = _leaves(json.loads(json.dumps(agent)), "")
    mapped = {p.lstrip("."): stack_key_of(p.lstrip("."), agent_json=True)[0] for p in leaves}
    program_owned = {p for p, key in mapped.items() if key == FROM_PROGRAM}
    owned_by_program = re.compile(
        r"^(version|ownership\..*|paths\..*|public_interface|vlan_interface|tunnels\[\d\]\.name)$")
    assert all(owned_by_program.match(p) for p in program_owned), program_owned
    assert mapped["probe.extra_targets"] == "hybrid-vpn:failover.extra_probe_targets"
    assert mapped["tunnels[1].gateway_inside_cidr"] == "hybrid-vpn:tunnels.inside_cidrs[1]"
    assert mapped["mtu"] == "hybrid-vpn:tunnels.mtu"
    if name == "bgp":
        assert mapped["bgp.customer_asn"] == "hybrid-vpn:routing.customer_asn"


@pytest.mark.parametrize("path,agent_json,key", [
    ("host_config.gateway.vlan_address", False, "hybrid-vpn:linode.gateway_vlan_address"),
    ("host_config.tunnels[1].interface", False, "hybrid-vpn:tunnels.interfaces[1]"),
    ("host_config.aws.cidrs[3]", False, "hybrid-vpn:aws.cidrs[3]"),
    ("host_config.crypto.phase2.dh_groups[0]", False, "hybrid-vpn:crypto.phase2.dh_groups[0]"),
    ("host_config.failover.extra_probe_targets", False, "hybrid-vpn:failover.extra_probe_targets"),
    ("host_config.tunnels[0].outside_ip", False, FROM_CLOUD),
    ("tunnels[0].interface", True, "hybrid-vpn:tunnels.interfaces[0]"),
    ("aws_cidrs[2]", True, "hybrid-vpn:aws.cidrs[2]"),
    ("primary_tunnel", True, "hybrid-vpn:failover.primary"),
    ("ownership.route_table", True, FROM_PROGRAM),
    ("host_config.routing.customer_asn", False, "hybrid-vpn:routing.customer_asn"),
    ("host_config.routing.amazon_side_asn", False, "hybrid-vpn:aws.amazon_side_asn"),
    ("host_config.routing.mode", False, "hybrid-vpn:routing.mode"),
    ("host_config.routing", False, "hybrid-vpn:routing"),
    ("host_config.linode.vlan_cidrs[1]", False, "hybrid-vpn:linode.vlan_cidrs[1]"),
    ("bgp.customer_asn", True, "hybrid-vpn:routing.customer_asn"),
    ("bgp", True, "hybrid-vpn:routing"),
])
def test_stack_key_of(path, agent_json, key):
    assert stack_key_of(path, agent_json=agent_json)[0] == key


# ---------------------------------------------------------------------------------------- under `pulumi preview`

def _preview(stack_config: dict[str, Any], registered: list) -> None:
    """The program as `pulumi preview` runs it (preview=True) against the emulated cloud."""
    import runpy

    import pulumi
    from pulumi.runtime import settings
    from pulumi.runtime.config import set_all_config
    from pulumi.runtime.stack import run_in_stack
    from pulumi.runtime.sync_await import _sync_await

    from lab.cloud import PROGRAM, CloudMocks, SecretMarkingMonitor

    mocks = CloudMocks()
    monitor = SecretMarkingMonitor(mocks)
    monitor.registrations = registered
    settings.set_root_resource(None)
    pulumi.runtime.set_mocks(mocks, project="hybrid-vpn", stack="lab", preview=True, monitor=monitor)
    settings.set_root_resource(None)
    set_all_config({k: v if isinstance(v, str) else json.dumps(v) for k, v in stack_config.items()}, [])
    try:
        _sync_await(run_in_stack(lambda: runpy.run_path(str(PROGRAM), run_name="__main__")))
    finally:
        settings.set_root_resource(None)
        set_all_config({}, [])


def test_pulumi_preview_itself_refuses_what_the_renderer_would():
    registered: list = []
    _preview(stack("lab"), registered)  # the good stack previews
    assert registered
    registered.clear()
    with pytest.raises(ConfigError, match=r"hybrid-vpn:crypto.dpd_timeout_seconds: .*30..3600"):
        _preview(_lab("crypto", dpd_timeout_seconds=7200), registered)
    assert registered == []
