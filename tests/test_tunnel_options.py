"""A tunnel option is one row of hostconfig/contract/crypto.py TUNNEL_OPTIONS: the row gives the stack config its
default, every reader (stack config, host_config) its check, host_config's crypto object its key and the AWS
VpnConnection its argument, and (its ``applies``) the lines the gateway renders into swanctl.conf and ipsec.conf.
Before (i17-rest) an option was written in about 12 files (issue 17)."""

from __future__ import annotations

import dataclasses
import inspect
import json
from pathlib import Path

import pulumi_aws as aws
import pytest

from hostconfig import gateway_paths as gp
from hostconfig.contract import charon
from hostconfig.contract import crypto as crypto_module
from hostconfig.contract.charon import Section, rendered
from hostconfig.contract.crypto import TUNNEL_OPTIONS, CryptoProfile
from hostconfig.plan import GatewayPlan
from hostconfig.render import render_gateway_files, render_legacy_files
from infra.aws import tunnel_options
from infra.config import DEFAULTS, ConfigError, parse_stack_config
from infra.outputs import crypto_dict

REPO = Path(__file__).resolve().parents[1]
STACK = {
    "aws": {"region": "us-east-1", "vpc_cidr": "10.0.0.0/16"},
    "linode": {"region": "us-ord", "vlan_label": "hybrid-vpn-dev", "vlan_cidrs": ["172.16.0.0/12"],
               "gateway_vlan_address": "172.16.1.1/24"},
    "admin_cidrs": ["198.51.100.7/32"],
}


def with_crypto(**crypto):
    return parse_stack_config({**STACK, "crypto": crypto})


def test_the_table_is_the_profiles_fields_the_defaults_host_configs_keys_and_the_aws_arguments():
    fields = [f.name for f in dataclasses.fields(CryptoProfile)]
    assert fields[3:] == [o.key for o in TUNNEL_OPTIONS]
    assert {k: DEFAULTS["crypto"][k] for k in fields[3:]} == {o.key: o.default for o in TUNNEL_OPTIONS}
    config = with_crypto()
    assert {k: v for k, v in crypto_dict(config).items() if k in fields[3:]} == \
        {o.key: o.default for o in TUNNEL_OPTIONS if o.gateway}
    arguments = set(inspect.signature(aws.ec2.VpnConnection._internal_init).parameters)
    for n in (1, 2):
        options = tunnel_options(config.crypto, n)
        for o in TUNNEL_OPTIONS:
            assert options[f"tunnel{n}_{o.aws}"] == o.default and f"tunnel{n}_{o.aws}" in arguments


@pytest.mark.parametrize("option", TUNNEL_OPTIONS, ids=lambda o: o.key)
def test_every_option_is_checked_by_the_stack_reader_and_the_plan_if_host_config_carries_it(option):
    wrong = "not-a-value" if not isinstance(option.default, str) else 12
    with pytest.raises(ConfigError, match=rf"hybrid-vpn:crypto.{option.key}: "):
        with_crypto(**{option.key: wrong})
    if option.gateway:
        host_config = json.loads((REPO / "tests" / "golden" / "inputs" / "default.json").read_text())
        host_config["crypto"][option.key] = wrong
        with pytest.raises(ValueError, match=rf"host_config.crypto.{option.key}: "):
            GatewayPlan.from_host_config(host_config)


# i17-rest: a new option, tunnel endpoint lifecycle control (AWS only), is one table row and a CryptoProfile field
# (crypto.py), its line in stacks/Pulumi.dev.yaml and this test; host_config and the goldens do not change.
def test_tunnel_endpoint_lifecycle_control_reaches_both_tunnels_and_stays_out_of_host_config():
    assert with_crypto().crypto.enable_tunnel_lifecycle_control is False
    config = with_crypto(enable_tunnel_lifecycle_control=True)
    assert [tunnel_options(config.crypto, n)[f"tunnel{n}_enable_tunnel_lifecycle_control"] for n in (1, 2)] == \
        [True, True]
    assert "enable_tunnel_lifecycle_control" not in crypto_dict(config)  # AWS only: the gateway never sees it
    with pytest.raises(ConfigError, match=r"hybrid-vpn:crypto.enable_tunnel_lifecycle_control: 'yes' is not true or "
                                          r"false; example: false"):
        with_crypto(enable_tunnel_lifecycle_control="yes")
    host_config = json.loads((REPO / "tests" / "golden" / "inputs" / "default.json").read_text())
    assert GatewayPlan.from_host_config(host_config).crypto.enable_tunnel_lifecycle_control is False


# ---------------------------------------------------------------- how the gateway applies an option: its row's lines
# The templates print each section's lines from the table with a loop (hostconfig/contract/charon.py); the indentation
# names the section: swanctl connection (IKE_SA) 8 spaces, its child (CHILD_SA) 16, ipsec.conf conn 4.
INDENT = {Section.IKE: 8, Section.CHILD: 16, Section.LEGACY: 4}


def rendered_configs(host_config: dict) -> dict[Section, str]:
    plan = GatewayPlan.from_host_config(host_config)
    swanctl = next(f for f in render_gateway_files(plan) if f.path == gp.SWANCTL_CONF.path).content.decode()
    ipsec = next(f for f in render_legacy_files(plan) if f.path == gp.LEGACY_IPSEC_CONF.path).content.decode()
    return {Section.IKE: swanctl, Section.CHILD: swanctl, Section.LEGACY: ipsec}


@pytest.mark.parametrize("scenario", ["default", "custom-crypto", "multi-cidr"])
def test_every_line_a_row_declares_is_rendered_in_its_section_of_both_tunnels(scenario):
    host_config = json.loads((REPO / "tests" / "golden" / "inputs" / f"{scenario}.json").read_text())
    crypto = GatewayPlan.from_host_config(host_config).crypto
    files = rendered_configs(host_config)
    declared = [(o, s) for o in TUNNEL_OPTIONS for s in o.applies]
    assert {s.section for _, s in declared} == set(Section)
    for option, setting in declared:
        line = rendered(setting, getattr(crypto, option.key), crypto)
        text = f"\n{' ' * INDENT[setting.section]}{setting.key} = {line['value']}\n"
        assert files[setting.section].count(text) == 2, (option.key, text)


def test_a_row_alone_puts_a_line_into_the_gateways_files_without_template_or_plan_code(monkeypatch):
    """What a new gateway-applied option costs: its row. Here a row is given one more line (a setting no template
    names) and it reaches swanctl.conf and ipsec.conf of both tunnels, with its value, in its section."""
    host_config = json.loads((REPO / "tests" / "golden" / "inputs" / "custom-crypto.json").read_text())
    row = next(o for o in TUNNEL_OPTIONS if o.key == "replay_window")
    extra = (charon.child("x_probe_key", None, "", "from the row: {aws}"), charon.legacy("x_probe_key"))
    table = tuple(dataclasses.replace(o, applies=o.applies + extra) if o is row else o for o in TUNNEL_OPTIONS)
    monkeypatch.setattr(crypto_module, "TUNNEL_OPTIONS", table)
    files = rendered_configs(host_config)
    value = host_config["crypto"]["replay_window"]
    assert files[Section.CHILD].count(f"\n{' ' * 16}# from the row: {value}\n{' ' * 16}x_probe_key = {value}\n") == 2
    assert files[Section.LEGACY].count(f"\n    x_probe_key = {value}\n") == 2


def test_a_rendered_value_is_one_plain_token():
    setting = charon.child("start_action")
    assert rendered(setting, "start", None) == {"key": "start_action", "value": "start", "comment": []}
    assert rendered(charon.legacy("rekeyfuzz", None, "%"), 100, None)["value"] == "100%"
    for bad in ("a b", "x\ny", "", 'q"uote'):
        with pytest.raises(ValueError, match=r"start_action: .* is not a plain number or keyword"):
            rendered(setting, bad, None)


# i17-option: replay_window moved onto the table (its row's `applies`): the stack key is checked at preview, sets
# tunnel<n>_replay_window_size, and its row alone writes charon's replay_window into both gateway files.
def test_the_replay_window_is_checked_at_preview_set_on_aws_and_rendered_from_its_row():
    with pytest.raises(ConfigError, match=r"hybrid-vpn:crypto.replay_window: 32 is out of range: 64..2048 packets; "
                                          r"example: 1024"):
        with_crypto(replay_window=32)
    config = with_crypto(replay_window=256)
    assert [tunnel_options(config.crypto, n)[f"tunnel{n}_replay_window_size"] for n in (1, 2)] == [256, 256]
    assert crypto_dict(config)["replay_window"] == 256
    host_config = json.loads((REPO / "tests" / "golden" / "inputs" / "default.json").read_text())
    host_config["crypto"]["replay_window"] = 256
    files = rendered_configs(host_config)
    assert files[Section.CHILD].count(f"\n{' ' * 16}replay_window = 256\n") == 2
    assert files[Section.LEGACY].count("\n    replay_window = 256\n") == 2
    assert "replay_window = 1024" not in files[Section.CHILD] + files[Section.LEGACY]


# What a NEW gateway-applied row sets, shown on a stand-in of the replay_window row (the table's last gateway row):
# host_config written before the option existed lacks the key and still renders (AWS then has the row's default),
# and a line whose default is also charon's is written only when set, so neither the committed host_config examples
# (golden inputs, docs/contracts.md) nor the goldens change when such a row is added.
def with_replay_row(monkeypatch, **changes):
    table = tuple(dataclasses.replace(o, **changes) if o.key == "replay_window" else o for o in TUNNEL_OPTIONS)
    monkeypatch.setattr(crypto_module, "TUNNEL_OPTIONS", table)


def default_host_config() -> dict:
    return json.loads((REPO / "tests" / "golden" / "inputs" / "default.json").read_text())


def test_a_row_added_after_host_config_v1_may_be_absent_from_host_config_and_takes_its_default(monkeypatch):
    host_config = default_host_config()
    del host_config["crypto"]["replay_window"]
    with pytest.raises(ValueError, match=r"host_config.crypto.replay_window: is required"):
        GatewayPlan.from_host_config(host_config)  # a row of host_config v1: every host_config has it
    with_replay_row(monkeypatch, optional_in_host_config=True)
    assert GatewayPlan.from_host_config(host_config).crypto.replay_window == 1024
    host_config["crypto"]["replay_window"] = 32
    with pytest.raises(ValueError, match=r"host_config.crypto.replay_window: 32 is out of range: 64..2048"):
        GatewayPlan.from_host_config(host_config)  # present: checked as before


def test_a_line_only_when_set_is_left_out_at_the_rows_default(monkeypatch):
    with_replay_row(monkeypatch, applies=(charon.child("replay_window", only_when_set=True),))
    host_config = default_host_config()
    assert "replay_window" not in rendered_configs(host_config)[Section.CHILD]
    host_config["crypto"]["replay_window"] = 256
    assert rendered_configs(host_config)[Section.CHILD].count(f"\n{' ' * 16}replay_window = 256\n") == 2


def test_an_aws_only_row_cannot_set_gateway_lines():
    with pytest.raises(ValueError, match="enable_tunnel_lifecycle_control: the gateway applies it"):
        dataclasses.replace(next(o for o in TUNNEL_OPTIONS if not o.gateway), applies=(charon.child("x"),))
