"""FirewallRules: the gateway firewall's complete rule set, PUT once the tunnel endpoints are known (issue 13 point 5,
issue 14 point 7). The provider's HTTP call is injected: no test reaches the Linode API."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from pulumi.dynamic import ConfigureRequest
from pulumi.dynamic.config import Config

from infra.linode import FirewallRulesProvider, rules_body
from lab.cloud import FIREWALL_RULES_TYPE, run_program, stack_config_from_file

REPO = Path(__file__).resolve().parent.parent


class RecordingApi:
    def __init__(self):
        self.calls: list[tuple[str, str, str, Any]] = []

    def __call__(self, method: str, path: str, token: str, body: Any = None) -> dict:
        self.calls.append((method, path, token, copy.deepcopy(body)))
        return {}


def provider(token: str | None = "FAKE_linode_token") -> tuple[FirewallRulesProvider, RecordingApi]:
    api = RecordingApi()
    p = FirewallRulesProvider(request=api)
    p.configure(ConfigureRequest(Config({"linode:token": token} if token else {}, "hybrid-vpn")))
    return p, api


@pytest.fixture(scope="module")
def program_props() -> dict[str, Any]:
    run = run_program(stack_config_from_file(REPO / "stacks" / "Pulumi.lab.yaml"))
    return dict(run.one(FIREWALL_RULES_TYPE).inputs)


def test_create_puts_the_complete_rule_set_of_the_program(program_props):
    p, api = provider()
    result = p.create(dict(program_props))
    assert result.id == str(program_props["firewall_id"])
    [(method, path, token, body)] = api.calls
    assert (method, path, token) == ("PUT", f"/networking/firewalls/{program_props['firewall_id']}/rules",
                                     "FAKE_linode_token")
    assert body["inbound_policy"] == "DROP" and body["outbound_policy"] == "ACCEPT" and body["outbound"] == []
    by_port = {(r["protocol"], r["ports"]): r["addresses"]["ipv4"] for r in body["inbound"]}
    assert by_port == {("UDP", "500"): ["198.51.100.1/32", "198.51.100.2/32"],
                       ("UDP", "4500"): ["198.51.100.1/32", "198.51.100.2/32"],
                       ("TCP", "22"): ["192.0.2.0/24"]}
    assert all(r["action"] == "ACCEPT" and r["label"] for r in body["inbound"])
    assert "FAKE_linode_token" not in str(result.outs)  # the token never lands in the state


def test_diff_updates_rules_in_place_and_replaces_only_for_another_firewall(program_props):
    p, _ = provider()
    assert not p.diff("1", program_props, dict(program_props)).changes
    wider = copy.deepcopy(program_props)
    wider["inbounds"][-1]["ipv4s"] = ["192.0.2.0/24", "203.0.113.0/24"]  # an admin network added
    diff = p.diff("1", program_props, wider)
    assert diff.changes and not diff.replaces
    moved = {**program_props, "firewall_id": program_props["firewall_id"] + 1}
    assert p.diff("1", program_props, moved).replaces == ["firewall_id"]


def test_update_puts_the_new_set(program_props):
    p, api = provider()
    wider = copy.deepcopy(program_props)
    wider["inbounds"][-1]["ipv4s"] = ["192.0.2.0/24", "203.0.113.0/24"]
    p.update("1", program_props, wider)
    assert api.calls[-1][3] == rules_body(wider)
    assert api.calls[-1][3]["inbound"][-1]["addresses"]["ipv4"] == ["192.0.2.0/24", "203.0.113.0/24"]


def test_refresh_reads_the_live_rules_so_a_manual_edit_shows_as_a_diff(program_props):
    p, api = provider()
    live = rules_body(program_props)
    live["inbound"].append({"label": "oops-any-ssh", "action": "ACCEPT", "protocol": "TCP", "ports": "22",
                            "addresses": {"ipv4": ["0.0.0.0/0"]}, "description": "added by hand"})
    api_with_live = RecordingApi()
    p._request = lambda method, path, token, body=None: (api_with_live(method, path, token, body), live)[1]
    result = p.read(str(program_props["firewall_id"]), dict(program_props))
    assert api_with_live.calls[0][:2] == ("GET", f"/networking/firewalls/{program_props['firewall_id']}/rules")
    assert result.outs["inbounds"][-1]["ipv4s"] == ["0.0.0.0/0"]
    assert p.diff(result.id, result.outs, dict(program_props)).changes  # the next `up` removes the stray rule
    # Unedited, read gives back exactly what create stored: a refresh alone changes nothing.
    p._request = lambda method, path, token, body=None: rules_body(program_props)
    clean = p.read(str(program_props["firewall_id"]), dict(program_props))
    assert not p.diff(clean.id, clean.outs, dict(program_props)).changes
    assert api.calls == []


def test_token_from_the_environment_when_the_stack_has_none(program_props, monkeypatch):
    monkeypatch.setenv("LINODE_TOKEN", "FAKE_env_token")
    p, api = provider(token=None)
    p.create(dict(program_props))
    assert api.calls[0][2] == "FAKE_env_token"


def test_no_token_is_a_clear_error(program_props, monkeypatch):
    monkeypatch.delenv("LINODE_TOKEN", raising=False)
    monkeypatch.delenv("LINODE_API_TOKEN", raising=False)
    p, api = provider(token=None)
    with pytest.raises(ValueError, match=r"linode:token .*LINODE_TOKEN"):
        p.create(dict(program_props))
    assert api.calls == []


def test_linode_refusals_are_reported_by_field_and_reason():
    from infra.linode import linode_error_reasons

    body = b'{"errors": [{"field": "rules.inbound[0].protocol", "reason": "Must be one of TCP, UDP, ICMP, IPENCAP"}]}'
    assert linode_error_reasons(body) == "rules.inbound[0].protocol: Must be one of TCP, UDP, ICMP, IPENCAP"
    assert linode_error_reasons(b"<html>bad gateway</html>") == "<html>bad gateway</html>"


def test_without_admin_networks_only_the_tunnel_rules_remain():
    config = copy.deepcopy(stack_config_from_file(REPO / "stacks" / "Pulumi.lab.yaml"))
    config["hybrid-vpn:admin_cidrs"] = []
    config["hybrid-vpn:delivery"] = {"enabled": False}  # delivery needs SSH from an admin network
    run = run_program(config)
    firewall = run.one("linode:index/firewall:Firewall")
    assert firewall.inputs.get("inbounds", []) == []  # at creation: nothing inbound at all
    assert [r["ports"] for r in run.one(FIREWALL_RULES_TYPE).inputs["inbounds"]] == ["500", "4500"]
