"""Each rule once: the stack reader (preview), the plan (renderer) and agent.json (gateway) give the same verdict for
the same value, because they take it from the same code (hostconfig/contract/rules.py). Pure, no Pulumi runtime.

Table: one value of one fact -> accepted or refused, with where the fact lives in each layer (None: the layer does not
carry it). The cases marked ``drift`` are those where main's three readers disagreed (issue 17).
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from hostconfig.agent.config import ConfigError as AgentError
from hostconfig.agent.config import parse_config
from hostconfig.contract.reader import ContractError
from hostconfig.plan import GatewayPlan, PlanError
from infra.config import ConfigError as StackError
from infra.config import parse_stack_config

REPO = Path(__file__).resolve().parents[1]
AGENT_TESTS = REPO / "tests" / "agent"
if str(AGENT_TESTS) not in sys.path:
    sys.path.insert(0, str(AGENT_TESTS))
from agent_testlib import BASE_CONFIG  # noqa: E402

OPERATOR_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAVxIhEPKLnSJDJbSWjsXaFcd3vWoJD9a38FGX/4KgnN ops@laptop"


def stack_config() -> dict[str, Any]:
    """The dev example filled in, on an existing VPC (so aws.cidrs is a plain list, as in the plan and agent.json)."""
    raw = yaml.safe_load((REPO / "stacks" / "Pulumi.dev.yaml").read_text())["config"]
    cfg = {k.split(":", 1)[1]: v for k, v in raw.items() if k.startswith("hybrid-vpn:")}
    cfg["linode"]["authorized_keys"] = [OPERATOR_KEY]
    cfg["admin_cidrs"] = ["81.2.69.160/32"]
    cfg["aws"].pop("vpc_cidr", None)
    cfg["aws"]["vpc_id"] = "vpc-0a1b2c3d4e5f60718"
    return cfg


def host_config() -> dict[str, Any]:
    return json.loads((REPO / "tests" / "golden" / "inputs" / "default.json").read_text())


def set_path(data: Any, path: tuple, value: Any) -> None:
    for key in path[:-1]:
        data = data[key]
    data[path[-1]] = value


def key_of(path: tuple) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")


def verdict(layer: str, edits: list[tuple[tuple, Any]]) -> list[str]:
    """The problems the layer reports after the edits (empty: accepted)."""
    if layer == "stack":
        data, parse, error, prefix = stack_config(), lambda d: parse_stack_config(d), StackError, "hybrid-vpn:"
    elif layer == "plan":
        data, parse, error, prefix = host_config(), GatewayPlan.from_host_config, PlanError, "host_config."
    else:
        data, parse, error, prefix = copy.deepcopy(BASE_CONFIG), parse_config, AgentError, ""
    for path, value in edits:
        set_path(data, path, value)
    try:
        parse(data)
    except error as exc:
        assert isinstance(exc, ContractError)
        return [p.removeprefix(prefix) for p in exc.problems]
    return []


def targets(n: int) -> list[str]:
    return [f"10.0.4.{i + 1}" for i in range(n)]


# (id, accepted, drifted on main, {layer: [(path, value), ...] or None})
# Stack: failover.*, tunnels.*, crypto.*, linode.*, aws.*; plan: host_config keys; agent: agent.json keys.
FAILOVER = {"stack": ("failover",), "plan": ("failover",), "agent": ("probe",)}
PROBE_NAMES = {"probe_interval_ms": "interval_ms", "probe_timeout_ms": "timeout_ms", "down_after": "down_after",
               "up_after": "up_after", "failback_hold_seconds": "failback_hold_seconds",
               "extra_probe_targets": "extra_targets"}


def probe(name: str, value: Any) -> dict[str, list]:
    return {"stack": [(("failover", name), value)], "plan": [(("failover", name), value)],
            "agent": [(("probe", PROBE_NAMES[name]), value)]}


def asns(customer: int, amazon: int) -> dict[str, list | None]:
    return {"stack": [(("routing",), {"mode": "bgp", "customer_asn": customer}), (("aws", "amazon_side_asn"), amazon)],
            "plan": [(("routing",), {"mode": "bgp", "customer_asn": customer, "amazon_side_asn": amazon})],
            "agent": None}


def mtu(value: int) -> dict[str, list]:
    # The agent carries no MSS; the other two must keep MSS <= MTU - 40 to isolate the MTU rule.
    mss = min(1379, value - 40)
    return {"stack": [(("tunnels", "mtu"), value), (("tunnels", "tcp_mss"), max(mss, 536))],
            "plan": [(("tunnel_mtu",), value), (("tcp_mss",), max(mss, 536))],
            "agent": [(("mtu",), value)]}


def vlan_address(value: str) -> dict[str, list]:
    return {"stack": [(("linode", "gateway_vlan_address"), value)], "plan": [(("gateway", "vlan_address"), value)],
            "agent": [(("gateway_vlan_address",), value)]}


def aws_cidrs(value: list[str]) -> dict[str, list]:
    return {"stack": [(("aws", "cidrs"), value)], "plan": [(("aws", "cidrs"), value)],
            "agent": [(("aws_cidrs",), value)]}


def vlan_cidrs(value: list[str]) -> dict[str, list]:
    return {"stack": [(("linode", "vlan_cidrs"), value)], "plan": [(("linode", "vlan_cidrs"), value)],
            "agent": [(("vlan_cidrs",), value)]}


def tunnel_interface(value: str) -> dict[str, list]:
    return {"stack": [(("tunnels", "interfaces"), [value, "vti-aws2"])],
            "plan": [(("tunnels", 0, "interface"), value)], "agent": [(("tunnels", 0, "interface"), value)]}


def inside(net: str, aws_ip: str, gateway_ip: str) -> dict[str, list]:
    return {"stack": [(("tunnels", "inside_cidrs"), [net, "169.254.11.0/30"])],
            "plan": [(("tunnels", 0, "inside_cidr"), net), (("tunnels", 0, "aws_inside_ip"), aws_ip),
                     (("tunnels", 0, "gateway_inside_ip"), gateway_ip)],
            "agent": [(("tunnels", 0, "gateway_inside_cidr"), f"{gateway_ip}/30"),
                      (("tunnels", 0, "aws_inside_ip"), aws_ip)]}


def crypto(path: tuple, value: Any) -> dict[str, list | None]:
    return {"stack": [(("crypto", *path), value)], "plan": [(("crypto", *path), value)], "agent": None}


def mark(value: int) -> dict[str, list]:
    return {"stack": [(("tunnels", "marks"), [value, 200])], "plan": [(("tunnels", 0, "mark"), value)],
            "agent": [(("tunnels", 0, "mark"), value)]}


GOOD_HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEVYQU1QTEUtaG9zdC1rZXktbm90LWEtcmVhbC1rZXkh hybrid-vpn-dev-gw"


def ssh_key(value: str) -> dict[str, list | None]:
    # The same fact in two roles: an operator's key (stack) and the gateway's host key (plan); the agent has none.
    return {"stack": [(("linode", "authorized_keys"), [value])], "plan": [(("gateway", "ssh_host_public_key"), value)],
            "agent": None}


CASES: list[tuple[str, bool, bool, dict[str, list | None]]] = [
    ("probe-interval-20ms", True, True, probe("probe_interval_ms", 20)),
    ("probe-interval-19ms", False, False, probe("probe_interval_ms", 19)),
    ("probe-interval-60s", True, False, probe("probe_interval_ms", 60_000)),
    ("probe-timeout-10ms", True, True, probe("probe_timeout_ms", 10)),
    ("probe-timeout-9ms", False, False, probe("probe_timeout_ms", 9)),
    ("down-after-1000", True, True, probe("down_after", 1000)),
    ("down-after-1001", False, False, probe("down_after", 1001)),
    ("down-after-0", False, False, probe("down_after", 0)),
    ("up-after-1000", True, True, probe("up_after", 1000)),
    ("failback-hold-86400", True, True, probe("failback_hold_seconds", 86_400)),
    ("failback-hold-86401", False, False, probe("failback_hold_seconds", 86_401)),
    ("extra-targets-16", True, False, probe("extra_probe_targets", targets(16))),
    ("extra-targets-17", False, True, probe("extra_probe_targets", targets(17))),
    ("extra-targets-duplicate", False, True, probe("extra_probe_targets", ["10.0.4.1", "10.0.4.1"])),
    ("mtu-1446", True, False, mtu(1446)),
    ("mtu-1447", False, True, mtu(1447)),
    ("mtu-9000", False, True, mtu(9000)),
    ("mtu-576", True, False, mtu(576)),
    ("mtu-575", False, False, mtu(575)),
    ("dpd-timeout-3600", True, False, crypto(("dpd_timeout_seconds",), 3600)),
    ("dpd-timeout-3601", False, True, crypto(("dpd_timeout_seconds",), 3601)),
    ("dpd-timeout-29", False, False, crypto(("dpd_timeout_seconds",), 29)),
    ("phase1-gcm-and-cbc", True, True, crypto(("phase1", "encryption"), ["AES128-GCM-16", "AES256"])),
    ("phase2-gcm-without-integrity", True, True,
     {"stack": [(("crypto", "phase2"), {"encryption": ["AES256-GCM-16"], "integrity": [], "dh_groups": [14],
                                        "lifetime_seconds": 3600})],
      "plan": [(("crypto", "phase2", "encryption"), ["AES256-GCM-16"]), (("crypto", "phase2", "integrity"), [])],
      "agent": None}),
    ("phase2-cbc-without-integrity", False, False, crypto(("phase2", "integrity"), [])),
    ("vlan-address-24", True, False, vlan_address("172.16.1.1/24")),
    ("vlan-address-31", False, True, vlan_address("172.16.1.0/31")),
    ("vlan-address-32", False, True, vlan_address("172.16.1.1/32")),
    ("vlan-address-broadcast", False, True, vlan_address("172.16.1.255/24")),
    ("aws-cidrs-duplicate", False, True, aws_cidrs(["10.0.0.0/16", "10.0.0.0/16"])),
    ("vlan-cidrs-duplicate", False, True, vlan_cidrs(["172.16.0.0/12", "172.16.0.0/12"])),
    ("aws-cidr-in-link-local", False, True, aws_cidrs(["10.0.0.0/16", "169.254.0.0/16"])),
    ("vlan-cidr-overlaps-aws", False, True, vlan_cidrs(["172.16.0.0/12", "10.0.0.0/24"])),
    ("interface-vti-aws9", True, False, tunnel_interface("vti-aws9")),
    ("interface-leading-underscore", False, True, tunnel_interface("_vti")),
    ("interface-leading-dash", False, True, tunnel_interface("-vti")),
    ("interface-16-chars", False, False, tunnel_interface("vti-aws1-toolong")),
    ("interface-eth0", False, False, tunnel_interface("eth0")),
    ("interface-eth1", False, False, tunnel_interface("eth1")),
    ("interface-lo", False, True, tunnel_interface("lo")),
    ("interface-ip_vti0", False, True, tunnel_interface("ip_vti0")),
    ("inside-reserved", False, True, inside("169.254.5.0/30", "169.254.5.1", "169.254.5.2")),
    ("inside-outside-link-local", False, True, inside("10.1.0.0/30", "10.1.0.1", "10.1.0.2")),
    ("inside-good", True, False, inside("169.254.20.0/30", "169.254.20.1", "169.254.20.2")),
    ("mark-0", False, False, mark(0)),
    ("mark-max", True, False, mark(2**32 - 1)),
    # i17-rest: the RFC 1918 rule lived only in the stack reader; the plan and the agent routed a public range.
    ("vlan-cidr-public", False, True, vlan_cidrs(["172.16.0.0/12", "100.64.0.0/16"])),
    ("vlan-cidr-192-168", True, False, vlan_cidrs(["172.16.0.0/12", "192.168.0.0/16"])),
    # i17-rest: one OpenSSH key rule; the plan's own pattern took a gateway host key whose data is no key at all.
    ("ssh-key-placeholder", False, True, ssh_key("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample gw")),
    ("ssh-key-good", True, False, ssh_key(GOOD_HOST_KEY)),
    # The customer gateway's and the VGW's ASN as configured (issue 16): the stack reader refused a VGW ASN of 65000
    # whatever the customer ASN, the plan compared the two values.
    ("asns-vgw-65000-customer-65010", True, True, asns(65010, 65000)),
    ("asns-equal-65010", False, False, asns(65010, 65010)),
    ("asns-equal-65000", False, False, asns(65000, 65000)),
    ("tunnel-name-with-dot", False, True,
     {"stack": None, "plan": [(("tunnels", 0, "name"), "tunnel.1")], "agent": [(("tunnels", 0, "name"), "tunnel.1")]}),
]


@pytest.mark.parametrize(("accepted", "drift", "layers"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_the_three_readers_agree(accepted, drift, layers):
    verdicts = {}
    for layer, edits in layers.items():
        if edits is None:
            continue
        problems = verdict(layer, edits)
        verdicts[layer] = problems
        if not accepted:
            # Refused for this fact: a problem names the edited key (or an item of it), in the layer's own terms.
            key = key_of(edits[0][0])
            assert any(p.startswith(key) for p in problems), f"{layer}: nothing names {key}: {problems}"
    shown = {layer: ("accepted" if not p else "refused") for layer, p in verdicts.items()}
    assert set(shown.values()) == {"accepted" if accepted else "refused"}, (shown, verdicts)


def test_the_baselines_are_accepted_by_their_readers():
    assert verdict("stack", []) == [] and verdict("plan", []) == [] and verdict("agent", []) == []


def test_one_error_base_and_each_layer_names_its_own_keys():
    assert issubclass(StackError, ContractError) and issubclass(PlanError, ContractError)
    assert issubclass(AgentError, ContractError)
    for layer, key in (("stack", "hybrid-vpn:failover.down_after"), ("plan", "host_config.failover.down_after"),
                       ("agent", "probe.down_after")):
        data = probe("down_after", 0)[layer]
        problems = verdict(layer, data)
        assert len(problems) == 1
        full = {"stack": "hybrid-vpn:", "plan": "host_config.", "agent": ""}[layer] + problems[0]
        assert full.startswith(key + ": 0 is out of range: 1..1000 lost probes; example: 3"), full


def test_one_crypto_profile():
    import hostconfig.plan as plan
    import infra.config as config
    from hostconfig.contract.crypto import CryptoProfile

    assert config.CryptoProfile is CryptoProfile and plan.CryptoProfile is CryptoProfile


# i17-rest: the stack name makes the gateway's host name (hybrid-vpn-<stack>-gw). Only the preview check's user-data
# render refused a bad one; now the stack reader does (naming the stack name, with an example), and the plan by the
# same rule.
@pytest.mark.parametrize(("stack", "accepted"), [("dev", True), ("a" * 49, True), ("Prod-2", True), ("a" * 50, False),
                                                 ("lab_eu", False), ("dev.eu", False), ("", True)])
def test_the_stack_name_rule_is_the_stack_readers_and_the_plans(stack, accepted):
    from infra.config import STACK_NAME

    try:
        parse_stack_config(stack_config(), stack=stack)
        problems = []
    except StackError as exc:
        problems = exc.problems
    assert (problems == []) is accepted, problems
    if not accepted:
        assert len(problems) == 1 and problems[0].startswith(f"{STACK_NAME}: ") and "host name" in problems[0]
        assert "; example: dev" in problems[0]
    if stack:  # host_config always carries a stack name
        assert (verdict("plan", [(("stack",), stack)]) == []) is accepted


def test_the_stack_reader_reads_the_running_stacks_name(monkeypatch):
    """load_stack_config passes pulumi.get_stack() on: a program run as stack lab_eu is refused by the reader."""
    import pulumi

    import infra.config as config

    class Seen(Exception):
        pass

    def parse(raw: Any, **kwargs: Any) -> None:
        seen.update(kwargs)
        raise Seen

    seen: dict[str, Any] = {}
    monkeypatch.setattr(pulumi, "get_stack", lambda: "lab_eu")
    monkeypatch.setattr(config, "parse_stack_config", parse)
    monkeypatch.setattr(config, "_unknown_namespace_keys", lambda: [])
    monkeypatch.setattr(config, "_cloud_is_emulated", lambda: True)
    with pytest.raises(Seen):
        config.load_stack_config()
    assert seen["stack"] == "lab_eu"


def test_the_asn_rule_is_one_rule_over_both_configured_values():
    from hostconfig.contract.rules import customer_asn_problem, distinct_asns_problem

    assert distinct_asns_problem(65010, 65000) is None
    problem = distinct_asns_problem(64512, 64512)
    assert problem and "routing.customer_asn" in problem and "aws.amazon_side_asn" in problem
    assert customer_asn_problem(64512, 64512) == problem  # the customer ASN reader uses the same rule
