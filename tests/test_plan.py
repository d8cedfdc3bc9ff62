"""GatewayPlan: validation of the host_config object, the strongSwan mapping, and the view models (no I/O)."""

from __future__ import annotations

import copy
import json
import logging
import re
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from hostconfig import plan as planmod
from hostconfig.contract import charon as charon_contract
from hostconfig.contract import crypto as crypto_contract
from hostconfig.contract import rules
from hostconfig.plan import GatewayPlan, PlanError

REPO = Path(__file__).resolve().parent.parent
INPUTS = Path(__file__).resolve().parent / "golden" / "inputs"
CONTRACTS = REPO / "docs" / "contracts.md"


def load_input(name: str = "default") -> dict:
    return json.loads((INPUTS / f"{name}.json").read_text())


def problems_of(obj: dict) -> list[str]:
    with pytest.raises(PlanError) as info:
        GatewayPlan.from_host_config(obj)
    return info.value.problems


def contract_block(section: str) -> str:
    """The first ```json block after the heading that starts with `section` in docs/contracts.md."""
    text = CONTRACTS.read_text()
    start = text.index(f"## {section}")
    block = re.search(r"```json\n(.*?)```", text[start:], re.S)
    assert block, f"no json block in contracts section {section}"
    return block.group(1)


# ------------------------------------------------------------------------------------------------- accepted input


def test_default_input_becomes_a_plan():
    plan = GatewayPlan.from_host_config(load_input())
    assert plan.gateway.public_ip == IPv4Address("203.0.113.10")
    assert plan.gateway.private_ip == IPv4Address("10.8.0.2")
    assert [t.name for t in plan.tunnels] == ["tunnel1", "tunnel2"]
    assert [t.mark for t in plan.tunnels] == [100, 200]
    assert plan.aws_cidrs == (IPv4Network("10.0.0.0/16"),)
    assert plan.crypto.phase2.dh_groups == (14,)
    assert plan.failover.primary == "tunnel1"


def test_the_documented_example_of_contracts_section_1_is_accepted():
    # The contract's example has // comments and placeholders ("<secret>", "AAAA..."): strip and fill them only.
    # (The key must parse: type string + 32 bytes, as the one OpenSSH key rule checks.)
    key = "AAAAC3NzaC1lZDI1NTE5AAAAIEVYQU1QTEUtaG9zdC1rZXktbm90LWEtcmVhbC1rZXkh"  # type + 32 bytes: it parses
    text = re.sub(r"\s//[^\n]*", "", contract_block("1.")).replace("AAAA...", key)
    text = re.sub(r"\s//[^\n]*", "", contract_block("1.")).replace("AAAA...", key)
    obj = json.loads(text)
    for i, tunnel in enumerate(obj["tunnels"]):
        assert tunnel["psk"] == "<secret>"
        tunnel["psk"] = f"Documented_example_psk_{i}"
    plan = GatewayPlan.from_host_config(obj)
    assert plan.stack == "dev"


FIXTURES = sorted((REPO / "tests" / "fixtures").glob("host_config*.json"))


@pytest.mark.parametrize("fixture", FIXTURES or [None], ids=lambda f: f.name if f else "none")
def test_committed_host_config_fixtures_are_accepted(fixture):
    """Fixtures written by the Pulumi program engineer (tests/fixtures/host_config.*.json), when present."""
    if fixture is None:
        pytest.skip("no tests/fixtures/host_config*.json committed (the Pulumi program writes it)")
    data = json.loads(fixture.read_text())
    GatewayPlan.from_host_config(data.get("host_config", data))


def test_the_plan_never_shows_a_psk():
    obj = load_input()
    plan = GatewayPlan.from_host_config(obj)
    shown = repr(plan) + str(plan.tunnels) + repr(plan.tunnels[0].psk) + f"{plan.tunnels[0].psk}"
    for tunnel in obj["tunnels"]:
        assert tunnel["psk"] not in shown
    assert plan.secrets() == tuple(t["psk"] for t in obj["tunnels"])


def test_unknown_keys_are_tolerated_but_logged(caplog):
    obj = load_input()
    obj["crypto"]["phase_1"] = {}
    with caplog.at_level(logging.WARNING, logger="hostconfig.plan"):
        GatewayPlan.from_host_config(obj)
    assert "host_config.crypto: ignoring unknown keys phase_1" in caplog.text


def test_admin_cidrs_are_read_and_their_absence_is_a_warning(caplog):
    assert GatewayPlan.from_host_config(load_input()).admin_cidrs == (IPv4Network("192.0.2.0/24"),
                                                                      IPv4Network("198.51.100.7/32"))
    obj = load_input()
    del obj["admin_cidrs"]
    with caplog.at_level(logging.WARNING, logger="hostconfig.plan"):
        assert GatewayPlan.from_host_config(obj).admin_cidrs is None
    assert "no admin_cidrs" in caplog.text


def test_a_tunnel_on_a_nic_names_the_key_the_rule_and_a_right_value():
    obj = load_input()
    obj["tunnels"][0]["interface"] = obj["gateway"]["public_interface"]
    [problem] = problems_of(obj)
    assert problem == (
        "host_config.tunnels[0].interface: 'eth0' is gateway.public_interface; the agent owns, recreates and "
        "re-addresses the tunnel interfaces, so a tunnel may not take a name the gateway already uses; example: "
        "vti-aws1"
    )


# ------------------------------------------------------------------------------------------------- refused input


def test_missing_field_names_the_path_and_an_example():
    obj = load_input()
    del obj["tunnels"][1]["outside_ip"]
    assert problems_of(obj) == [
        "host_config.tunnels[1].outside_ip: is required; example: 198.51.100.2"
    ]


def test_wrong_type_names_the_path_the_value_and_the_rule():
    obj = load_input()
    obj["tunnels"][0]["mark"] = "100"
    obj["tcp_mss"] = True
    problems = problems_of(obj)
    assert ("host_config.tunnels[0].mark: must be an integer 1..4294967295 (a VTI key/mark per tunnel), got '100'; "
            "example: 100") in problems
    assert any(p.startswith("host_config.tcp_mss: must be an integer 536..1406 bytes") for p in problems)


def test_every_problem_is_reported_at_once():
    obj = load_input()
    del obj["gateway"]["public_ip"]
    obj["aws"]["cidrs"] = ["10.0.0.1/16"]
    obj["crypto"]["phase1"]["encryption"] = ["3DES"]
    obj["failover"]["down_after"] = 0
    problems = problems_of(obj)
    assert [p.split(":")[0] for p in problems] == [
        "host_config.gateway.public_ip",
        "host_config.aws.cidrs[0]",
        "host_config.crypto.phase1.encryption[0]",
        "host_config.failover.down_after",
    ]
    assert "'3DES' is not offered by AWS (allowed: AES128, AES256, AES128-GCM-16, AES256-GCM-16)" in problems[2]


def test_a_bad_psk_is_refused_without_showing_it():
    obj = load_input()
    obj["tunnels"][0]["psk"] = "0secret-with-dash"
    problems = problems_of(obj)
    assert problems == [
        "host_config.tunnels[0].psk: (value hidden, 17 characters) breaks AWS's pre-shared key rule: starts with "
        "'0'; rule: 8 to 64 characters, only letters, digits, '.' and '_', not starting with '0'; example: "
        "Example_psk.0123456789abcdef"
    ]
    assert "0secret-with-dash" not in str(PlanError(problems))


@pytest.mark.parametrize(
    "mutate, path, fragment",
    [
        (lambda o: o.update(kind="other"), "host_config.kind", "hybrid-vpn/host-config"),
        (lambda o: o.update(version=2), "host_config.version", "the version this renderer knows"),
        (lambda o: o["crypto"].update(ike_version=1), "host_config.crypto.ike_version", "only IKEv2"),
        (lambda o: o["crypto"]["phase1"].update(dh_groups=[5]), "host_config.crypto.phase1.dh_groups[0]", "14"),
        (lambda o: o["crypto"]["phase2"].update(dh_groups=[]), "host_config.crypto.phase2.dh_groups", "1 to 13"),
        (lambda o: o["crypto"]["phase1"].update(integrity=[]), "host_config.crypto.phase1.integrity", "PRF"),
        (lambda o: o["crypto"]["phase2"].update(integrity=[]), "host_config.crypto.phase2.integrity", "non-GCM"),
        (lambda o: o["crypto"]["phase2"].update(lifetime_seconds=600), "host_config.crypto.phase2.lifetime_seconds",
         "900..3600"),
        (lambda o: o["crypto"]["phase1"].update(lifetime_seconds=3600), "host_config.crypto.phase2.lifetime_seconds",
         "must be below phase1.lifetime_seconds"),
        (lambda o: (o["crypto"].update(rekey_margin_seconds=1000), o["crypto"]["phase2"].update(lifetime_seconds=1800)),
         "host_config.crypto.rekey_margin_seconds", "above half"),
        (lambda o: o["crypto"].update(dpd_timeout_action="hold"), "host_config.crypto.dpd_timeout_action",
         "clear, restart, none"),
        (lambda o: o["crypto"].update(replay_window=32), "host_config.crypto.replay_window", "64..2048"),
        (lambda o: o["tunnels"][0].update(inside_cidr="169.254.5.0/30"), "host_config.tunnels[0].inside_cidr",
         "reserved by AWS"),
        (lambda o: o["tunnels"][0].update(inside_cidr="10.1.0.0/30", aws_inside_ip="10.1.0.1",
                                          gateway_inside_ip="10.1.0.2"), "host_config.tunnels[0].inside_cidr",
         "169.254.0.0/16"),
        (lambda o: o["tunnels"][0].update(aws_inside_ip="169.254.10.2", gateway_inside_ip="169.254.10.1"),
         "host_config.tunnels[0].aws_inside_ip", "AWS takes the first"),
        (lambda o: o["tunnels"][1].update(mark=100), "host_config.tunnels[1].mark", "each tunnel needs its own"),
        (lambda o: o["tunnels"][1].update(interface="vti-aws1"), "host_config.tunnels[1].interface",
         "each tunnel needs"),
        (lambda o: o["tunnels"][0].update(interface="a-name-much-too-long"), "host_config.tunnels[0].interface",
         "1-15"),
        (lambda o: o.update(tunnels=o["tunnels"][:1]), "host_config.tunnels", "two tunnels"),
        (lambda o: o["aws"].update(cidrs=["172.16.0.0/16"]), "host_config.linode.vlan_cidrs[0]", "must not overlap"),
        (lambda o: o["aws"].update(cidrs=["10.8.0.0/16"]), "host_config.aws.cidrs[0]", "own subnet"),
        (lambda o: o["aws"].update(cidrs=[]), "host_config.aws.cidrs", "1 to 100"),
        (lambda o: o["aws"].update(cidrs=["10.0.0.0/16", "10.0.0.0/16"]), "host_config.aws.cidrs[1]", "once"),
        (lambda o: o["gateway"].update(vlan_address="192.168.1.1/24"), "host_config.gateway.vlan_address",
         "outside every VLAN CIDR"),
        (lambda o: o["gateway"].update(vlan_address="172.16.1.1"), "host_config.gateway.vlan_address",
         "prefix length"),
        (lambda o: o["gateway"].update(private_ip="10.9.0.2"), "host_config.gateway.private_ip", "10.8.0.1"),
        (lambda o: o["gateway"].update(vlan_interface="eth0"), "host_config.gateway.vlan_interface", "second NIC"),
        (lambda o: o.update(tcp_mss=1400), "host_config.tcp_mss", "MSS <= MTU - 40"),
        (lambda o: o.update(tunnel_mtu=1500), "host_config.tunnel_mtu", "1446"),
        (lambda o: o["failover"].update(primary="tunnel3"), "host_config.failover.primary", "names no tunnel"),
        (lambda o: o["failover"].update(extra_probe_targets=["10.0.0"]), "host_config.failover.extra_probe_targets[0]",
         "IPv4 address"),
        (lambda o: o.pop("linode"), "host_config.linode", "is required"),
        # issue 13 point 10: the agent creates, re-addresses and deletes a tunnel's link; eth0 is the gateway itself.
        (lambda o: o["tunnels"][0].update(interface="eth0"), "host_config.tunnels[0].interface",
         "is gateway.public_interface"),
        (lambda o: o["tunnels"][1].update(interface="eth1"), "host_config.tunnels[1].interface",
         "is gateway.vlan_interface"),
        (lambda o: o["tunnels"][1].update(interface="lo"), "host_config.tunnels[1].interface", "example: vti-aws2"),
        (lambda o: o.update(admin_cidrs=["192.0.2.7/24"]), "host_config.admin_cidrs[0]", "no host bits"),
        (lambda o: o.update(gateway=[]), "host_config.gateway", "got a list"),
    ],
)
def test_refused_with_the_field_and_the_rule(mutate, path, fragment):
    obj = load_input()
    mutate(obj)
    problems = problems_of(obj)
    hits = [p for p in problems if p.startswith(path + ":")]
    assert hits, f"no problem for {path} in {problems}"
    assert any(fragment in p for p in hits), hits


def test_not_an_object_is_refused():
    with pytest.raises(PlanError, match="host_config: got a list; expected the JSON object"):
        GatewayPlan.from_host_config([])


# --------------------------------------------------------------------------------------------- strongSwan mapping


def test_every_aws_dh_group_maps_to_a_strongswan_keyword():
    assert planmod.DH_GROUPS == {
        2: "modp1024", 5: "modp1536", 14: "modp2048", 15: "modp3072", 16: "modp4096", 17: "modp6144",
        18: "modp8192", 19: "ecp256", 20: "ecp384", 21: "ecp521", 22: "modp1024s160", 23: "modp2048s224",
        24: "modp2048s256",
    }  # fmt: skip
    assert set(planmod.DH_GROUPS) == set(rules.AWS_PHASE1_DH) | set(rules.AWS_PHASE2_DH)


def phase(enc, integ, dh, life=3600):
    return planmod.PhaseSpec(tuple(enc), tuple(integ), tuple(dh), life)


def test_classic_proposals_carry_integrity_and_dh_groups():
    p = phase(["AES256", "AES128"], ["SHA2-256", "SHA1"], [14, 19])
    assert planmod.ike_proposals(p) == ["aes256-aes128-sha256-sha1-modp2048-ecp256"]
    assert planmod.esp_proposals(p) == ["aes256-aes128-sha256-sha1-modp2048-ecp256"]


def test_aead_ike_proposals_name_a_prf_and_esp_has_pfs_without_integrity():
    p = phase(["AES128-GCM-16"], ["SHA2-384"], [20, 21])
    assert planmod.ike_proposals(p) == ["aes128gcm16-prfsha384-ecp384-ecp521"]
    assert planmod.esp_proposals(p) == ["aes128gcm16-ecp384-ecp521"]


def test_mixed_aead_and_classic_become_two_proposals_in_aws_order():
    p = phase(["AES128-GCM-16", "AES256"], ["SHA2-256"], [14])
    assert planmod.ike_proposals(p) == ["aes128gcm16-prfsha256-modp2048", "aes256-sha256-modp2048"]
    p = phase(["AES256", "AES256-GCM-16"], ["SHA2-256"], [14])
    assert planmod.esp_proposals(p) == ["aes256-sha256-modp2048", "aes256gcm16-modp2048"]


def test_lifetimes_follow_aws_rekey_semantics():
    crypto = GatewayPlan.from_host_config(load_input()).crypto
    assert crypto_contract.lifetimes(crypto) == crypto_contract.Lifetimes(
        ike_rekey_time=28800 - 270, ike_over_time=270, ike_rand_time=270,
        child_rekey_time=3600 - 270, child_life_time=3600, child_rand_time=270,
    )  # fmt: skip
    obj = load_input("custom-crypto")
    times = crypto_contract.lifetimes(GatewayPlan.from_host_config(obj).crypto)
    assert (times.child_rekey_time, times.child_life_time, times.child_rand_time) == (1800 - 120, 1800, 60)
    # Rekeying never starts before the margin window AWS itself uses, nor after the hard lifetime.
    assert times.child_rekey_time - times.child_rand_time >= 1800 - 2 * 120
    assert times.ike_rekey_time + times.ike_over_time == 14400


@pytest.mark.parametrize("dpd_timeout", [30, 40, 120, 3600])
def test_a_dead_peer_is_noticed_within_the_aws_dpd_timeout(dpd_timeout):
    obj = load_input()
    obj["crypto"]["dpd_timeout_seconds"] = dpd_timeout
    crypto = GatewayPlan.from_host_config(obj).crypto
    assert crypto_contract.dpd_delay_seconds(crypto) + planmod.retransmit_total_seconds() <= dpd_timeout


def test_actions_the_gateway_takes_for_each_aws_setting():
    assert charon_contract.GATEWAY_START_ACTION == {"add": "start", "start": "trap"}
    assert set(charon_contract.GATEWAY_DPD_ACTION.values()) == {"restart"}
    assert set(charon_contract.GATEWAY_DPD_ACTION) == set(rules.AWS_DPD_ACTIONS)


# --------------------------------------------------------------------------------------------------- view models


def test_agent_config_is_exactly_the_documented_example_of_contracts_section_2():
    documented = json.loads(contract_block("2."))
    assert planmod.agent_config(GatewayPlan.from_host_config(load_input())) == documented


def test_agent_config_carries_no_secret_and_follows_the_plan():
    obj = load_input("multi-cidr")
    agent = planmod.agent_config(GatewayPlan.from_host_config(obj))
    text = json.dumps(agent)
    assert all(t["psk"] not in text for t in obj["tunnels"])
    assert agent["aws_cidrs"] == obj["aws"]["cidrs"]
    assert [t["gateway_inside_cidr"] for t in agent["tunnels"]] == ["169.254.211.190/30", "169.254.91.58/30"]
    assert agent["probe"]["extra_targets"] == ["10.0.4.85", "10.1.0.10"]


def test_swanctl_view_uses_nat_identities_and_marks():
    view = planmod.swanctl_view(GatewayPlan.from_host_config(load_input()))
    first = view["connections"][0]
    assert (first["local_addrs"], first["local_id"], first["remote_addrs"], first["remote_id"]) == (
        "10.8.0.2", "203.0.113.10", "198.51.100.1", "198.51.100.1")  # fmt: skip
    assert [c["mark"] for c in view["connections"]] == [100, 200]
    assert [s["remote_id"] for s in view["secrets"]] == ["198.51.100.1", "198.51.100.2"]


def test_views_are_independent_of_the_input_object():
    obj = load_input()
    plan = GatewayPlan.from_host_config(copy.deepcopy(obj))
    obj["aws"]["cidrs"].append("10.9.0.0/16")
    assert planmod.nftables_view(plan)["aws_cidrs"] == ["10.0.0.0/16"]
