"""Rendering: golden files per template per scenario, errors that name what is missing, secrets kept out, the CLI.

Regenerate the golden files after an intended change with `UPDATE_GOLDEN=1 make test` (or pytest on this file),
then review them as a diff (`git diff tests/golden`).
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hostconfig import gateway_paths as gp
from hostconfig import plan as planmod
from hostconfig import render as rendermod
from hostconfig.cloudinit import UserDataError, render_user_data
from hostconfig.plan import GatewayPlan
from hostconfig.render import RenderError, render, render_gateway_files, render_legacy_files

REPO = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden"
SCENARIOS = ("default", "custom-crypto", "multi-cidr")
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"

# Test-only key material for the user data golden file: shaped like an OpenSSH key, not a key.
FAKE_PRIVATE_KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\nTEST-ONLY-NOT-A-KEY-0123456789abcdefghijklmnopqrstuvwxyz\n"
    "-----END OPENSSH PRIVATE KEY-----\n"
)
FAKE_PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEVYQU1QTEUtaG9zdC1rZXktbm90LWEtcmVhbC1rZXkh hybrid-vpn-dev-gw\n"


def load_input(scenario: str) -> dict:
    return json.loads((GOLDEN / "inputs" / f"{scenario}.json").read_text())


def rendered_tree(scenario: str) -> dict[str, rendermod.RenderedFile]:
    """Relative path (as the CLI writes it) -> file, for everything rendered from one scenario."""
    plan = GatewayPlan.from_host_config(load_input(scenario))
    tree = {f.path.lstrip("/"): f for f in render_gateway_files(plan)}
    tree.update({"legacy/" + f.path.lstrip("/"): f for f in render_legacy_files(plan)})
    return tree


def user_data() -> str:
    return render_user_data(
        hostname="hybrid-vpn-dev-gw", ssh_host_ed25519_private=FAKE_PRIVATE_KEY, ssh_host_ed25519_public=FAKE_PUBLIC_KEY
    )


GOLDEN_CASES = [(s, rel) for s in SCENARIOS for rel in sorted(rendered_tree(s))]


def compare_golden(golden: Path, content: bytes) -> None:
    if UPDATE:
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_bytes(content)
        return
    if not golden.exists():
        pytest.fail(f"{golden} missing: run with UPDATE_GOLDEN=1 and review the new file")
    expected = golden.read_bytes()
    if content != expected:
        diff = "".join(
            difflib.unified_diff(
                expected.decode().splitlines(keepends=True),
                content.decode().splitlines(keepends=True),
                fromfile=str(golden),
                tofile="rendered",
            )
        )
        pytest.fail(f"rendered output differs from {golden} (UPDATE_GOLDEN=1 to accept):\n{diff}")


# ------------------------------------------------------------------------------------------------------ golden


@pytest.mark.parametrize("scenario, rel", GOLDEN_CASES, ids=[f"{s}:{r}" for s, r in GOLDEN_CASES])
def test_golden(scenario, rel):
    compare_golden(GOLDEN / scenario / rel, rendered_tree(scenario)[rel].content)


def test_golden_user_data():
    compare_golden(GOLDEN / "user-data.yaml", user_data().encode())


@pytest.mark.skipif(UPDATE, reason="regenerating golden files")
def test_no_stale_golden_files():
    expected = {f"{s}/{rel}" for s, rel in GOLDEN_CASES} | {"user-data.yaml"}
    present = {
        str(p.relative_to(GOLDEN)) for p in GOLDEN.rglob("*") if p.is_file() and p.parts[len(GOLDEN.parts)] != "inputs"
    }
    assert present == expected


def test_scenarios_differ_where_they_should():
    default, crypto, multi = (rendered_tree(s) for s in SCENARIOS)
    swan = "etc/swanctl/conf.d/hybrid-vpn.conf"
    assert b"proposals = aes256-sha256-modp2048\n" in default[swan].content
    assert b"proposals = aes128gcm16-prfsha384-prfsha256-ecp384-ecp521,aes256-sha384-sha256-ecp384-ecp521\n" in (
        crypto[swan].content
    )
    assert b"esp_proposals = aes128gcm16-ecp384-ecp521\n" in crypto[swan].content
    assert b"start_action = trap\n" in crypto[swan].content and b"start_action = start\n" in default[swan].content
    nft = "etc/hybrid-vpn/nftables.nft"
    assert b"elements = { 10.0.0.0/16, 10.1.0.0/16, 10.20.0.0/14, 192.168.100.0/24 }" in multi[nft].content
    assert b'elements = { "Tunnel1", "Tunnel2" }' in multi[nft].content


def test_gateway_files_have_the_contract_paths_and_modes():
    plan = GatewayPlan.from_host_config(load_input("default"))
    files = {f.path: (f.mode, f.secret) for f in render_gateway_files(plan)}
    assert files == {
        "/etc/swanctl/conf.d/hybrid-vpn.conf": (0o600, True),
        "/etc/strongswan.d/charon-hybrid-vpn.conf": (0o644, False),
        "/etc/hybrid-vpn/agent.json": (0o644, False),
        "/etc/hybrid-vpn/nftables.nft": (0o644, False),
        "/etc/systemd/system/hybrid-vpn-failover.service": (0o644, False),
        "/etc/systemd/system/hybrid-vpn-guard.service": (0o644, False),
    }
    legacy = {f.path: (f.mode, f.secret) for f in render_legacy_files(plan)}
    assert legacy == {"/etc/ipsec.conf": (0o644, False), "/etc/ipsec.secrets": (0o600, True)}


def test_agent_json_is_the_plan_agent_config():
    plan = GatewayPlan.from_host_config(load_input("multi-cidr"))
    agent = next(f for f in render_gateway_files(plan) if f.path == "/etc/hybrid-vpn/agent.json")
    assert json.loads(agent.content) == planmod.agent_config(plan)


# ------------------------------------------------------------------------------------------------------ errors


def test_a_missing_variable_names_the_template_and_the_variable():
    view = planmod.swanctl_view(GatewayPlan.from_host_config(load_input("default")))
    del view["secrets"]
    with pytest.raises(RenderError, match=r"^swanctl\.conf\.j2 line \d+: undefined variable: 'secrets' is undefined"):
        render("swanctl.conf.j2", view)


def test_a_missing_nested_value_names_it_and_the_line():
    view = planmod.nftables_view(GatewayPlan.from_host_config(load_input("default")))
    del view["tcp_mss"]
    with pytest.raises(RenderError) as info:
        render("nftables.nft.j2", view)
    message = str(info.value)
    assert message.startswith("nftables.nft.j2 line ")
    line = int(message.split("line ")[1].split(":")[0])
    template_line = (rendermod.TEMPLATES_DIR / "nftables.nft.j2").read_text().splitlines()[line - 1]
    assert "tcp_mss" in template_line and "'tcp_mss' is undefined" in message


def test_an_unknown_template_is_named():
    with pytest.raises(RenderError, match="no-such.j2: no such template"):
        render("no-such.j2", {})


def test_quoting_filters_escape_or_refuse_without_showing_the_value():
    assert rendermod.swan_quote('a"b\\c') == '"a\\"b\\\\c"'
    assert rendermod.ipsec_quote("Abc.def_123") == '"Abc.def_123"'
    assert rendermod.yaml_str('x: "y"\n') == '"x: \\"y\\"\\n"'
    for bad in ("line\nbreak", "nul\x00"):
        with pytest.raises(rendermod.UnsafeValue) as info:
            rendermod.swan_quote(bad)
        assert bad not in str(info.value)
    for bad in ('quo"te', "back\\slash", "new\nline"):
        with pytest.raises(rendermod.UnsafeValue):
            rendermod.ipsec_quote(bad)
    for bad in ('eth0"; drop', "a" * 16, ""):
        with pytest.raises(rendermod.UnsafeValue):
            rendermod.nft_quote(bad)


def test_an_unsafe_secret_fails_the_render_without_showing_it():
    view = planmod.swanctl_view(GatewayPlan.from_host_config(load_input("default")))
    view["secrets"][0]["psk"] = "Leaky\nSecret_value"
    with pytest.raises(RenderError) as info:
        render("swanctl.conf.j2", view)
    assert "swanctl.conf.j2 line" in str(info.value) and "Leaky" not in str(info.value)


# ------------------------------------------------------------------------------------------------------ secrets


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_psks_only_in_the_secret_files_and_never_in_logs(scenario, caplog):
    obj = load_input(scenario)
    psks = [t["psk"] for t in obj["tunnels"]]
    with caplog.at_level(logging.DEBUG):
        plan = GatewayPlan.from_host_config(obj)
        files = render_gateway_files(plan) + render_legacy_files(plan)
        text_user_data = user_data()
    assert caplog.records, "the renderer logs what it does"
    for f in files:
        for psk in psks:
            assert (psk.encode() in f.content) == f.secret, f"{f.path}: secret={f.secret} but PSK presence differs"
        assert f.secret == (f.mode == 0o600)
    for psk in psks:
        assert psk not in text_user_data
        assert psk not in caplog.text
        assert psk not in repr(files)


# ------------------------------------------------------------------------------------------------------ user data


def test_user_data_round_trips_through_yaml():
    data = yaml.safe_load(user_data())
    assert user_data().startswith("#cloud-config\n")
    assert data["ssh_keys"] == {"ed25519_private": FAKE_PRIVATE_KEY, "ed25519_public": FAKE_PUBLIC_KEY.strip()}
    assert data["ssh_deletekeys"] is True
    files = {f["path"]: f for f in data["write_files"]}
    assert files["/etc/systemd/system/hybrid-vpn-failover.service"]["content"] == rendermod.render_failover_unit()
    assert files["/etc/sysctl.d/60-hybrid-vpn.conf"]["content"] == rendermod.render_sysctl()
    assert files["/etc/systemd/system/hybrid-vpn-guard.service"]["content"] == rendermod.render_guard_unit()
    # Forwarding is the agent's to turn on, after the guard loaded the ruleset: sysctl.d turned it on at every boot
    # before any leak guard existed (issue 13, point 4).
    assert "ip_forward" not in rendermod.render_sysctl()
    assert {"strongswan-swanctl", "charon-systemd", "nftables", "python3"} <= set(data["packages"])
    assert ["systemctl", "enable", "hybrid-vpn-failover.service"] in data["runcmd"]
    assert ["systemctl", "enable", "hybrid-vpn-guard.service"] in data["runcmd"]
    assert ["sysctl", "-p", "/etc/sysctl.d/60-hybrid-vpn.conf"] in data["runcmd"]


@pytest.mark.parametrize("unit", ["hybrid-vpn-failover.service", "hybrid-vpn-guard.service"])
def test_user_data_is_the_same_unit_the_delivery_pushes(unit):
    plan = GatewayPlan.from_host_config(load_input("default"))
    pushed = next(f for f in render_gateway_files(plan) if f.path.endswith(unit))
    data = yaml.safe_load(user_data())
    written = next(f for f in data["write_files"] if f["path"] == f"/etc/systemd/system/{unit}")
    assert written["content"].encode() == pushed.content


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"hostname": "bad_name!"}, "hostname:"),
        ({"ssh_host_ed25519_private": "not a key"}, "ssh_host_ed25519_private: not an OpenSSH private key"),
        ({"ssh_host_ed25519_public": "ssh-rsa AAAA x"}, "ssh_host_ed25519_public:"),
        # i17-rest: the one OpenSSH key rule parses the key data (the old pattern took this placeholder).
        ({"ssh_host_ed25519_public": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAITESTONLYNOTAKEY gw"},
         "ssh_host_ed25519_public: the key data"),
        ({"hostname": "a" * 64}, "hostname: .* host name label"),
    ],
)
def test_user_data_arguments_are_checked(kwargs, fragment):
    args = {
        "hostname": "gw",
        "ssh_host_ed25519_private": FAKE_PRIVATE_KEY,
        "ssh_host_ed25519_public": FAKE_PUBLIC_KEY,
    } | kwargs
    with pytest.raises(UserDataError, match=fragment) as info:
        render_user_data(**args)
    assert "not a key" not in str(info.value)


# ------------------------------------------------------------------------------------------------------ CLI


def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hostconfig", *args],
        cwd=REPO,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_cli_renders_the_golden_tree_with_modes(tmp_path):
    obj = load_input("default")
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps({"host_config": obj, "tunnels": []}))
    out = tmp_path / "out"
    result = run_cli("render", "--outputs", str(outputs), "--out", str(out), "--legacy")
    assert result.returncode == 0, result.stderr
    written = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert written == set(rendered_tree("default"))
    for rel in written:
        assert (out / rel).read_bytes() == (GOLDEN / "default" / rel).read_bytes()
        mode = stat.S_IMODE((out / rel).stat().st_mode)
        assert mode == rendered_tree("default")[rel].mode, rel
    assert f"wrote {out}/etc/swanctl/conf.d/hybrid-vpn.conf (0600, secret," in result.stdout
    for tunnel in obj["tunnels"]:
        assert tunnel["psk"] not in result.stdout + result.stderr


def test_cli_reads_standard_input_and_skips_legacy_by_default(tmp_path):
    out = tmp_path / "out"
    result = run_cli("render", "--outputs", "-", "--out", str(out), stdin=json.dumps(load_input("multi-cidr")))
    assert result.returncode == 0, result.stderr
    assert (out / "etc/hybrid-vpn/nftables.nft").exists()
    assert not (out / "legacy").exists()


def test_cli_bad_input_lists_every_problem_and_writes_nothing(tmp_path):
    obj = load_input("default")
    del obj["tunnels"][1]["outside_ip"]
    obj["tunnels"][0]["psk"] = "0-invalid-secret"
    out = tmp_path / "out"
    result = run_cli("render", "--outputs", "-", "--out", str(out), stdin=json.dumps({"host_config": obj}))
    assert result.returncode == 2
    assert "host_config.tunnels[1].outside_ip: is required" in result.stderr
    assert "host_config.tunnels[0].psk: (value hidden, 16 characters) breaks AWS's pre-shared key rule" in result.stderr
    assert "0-invalid-secret" not in result.stderr + result.stdout
    assert not out.exists()


@pytest.mark.parametrize(
    "stdin, fragment",
    [
        ("{not json", "not JSON (line 1, column 2)"),
        ('{"tunnels": []}', "no 'host_config' key (found: tunnels)"),
        ('{"host_config": "[secret]"}', "--show-secrets"),
    ],
)
def test_cli_explains_unusable_outputs(tmp_path, stdin, fragment):
    result = run_cli("render", "--outputs", "-", "--out", str(tmp_path / "o"), stdin=stdin)
    assert result.returncode == 2
    assert fragment in result.stderr


def test_the_rendered_units_start_the_guard_then_the_agent_then_charon():
    # Issue 13 point 4: the ruleset before forwarding (the agent turns it on) and before charon loads the tunnels.
    # The order comes from the units' own Before=/After= (the lab's reboot uses the same start_order).
    from lab.gateway import Unit, parse_unit, start_order

    plan = GatewayPlan.from_host_config(load_input("default"))
    files = {f.path.rsplit("/", 1)[1]: f.content.decode() for f in render_gateway_files(plan)}
    rendered = (gp.FAILOVER_UNIT, gp.GUARD_UNIT)
    units = [parse_unit(gp.STRONGSWAN_UNIT, ""), *(parse_unit(n, files[n]) for n in rendered)]
    assert start_order(units) == [gp.GUARD_UNIT, gp.FAILOVER_UNIT, gp.STRONGSWAN_UNIT]
    guard = parse_unit(gp.GUARD_UNIT, files[gp.GUARD_UNIT])
    assert guard.exec_start == (f"{gp.NFT} -f {gp.NFT_RULESET.path}",)
    assert guard.path_conditions == (gp.NFT_RULESET.path,)
    # control: main's failover unit (After=strongswan) put charon first
    old = Unit(gp.FAILOVER_UNIT, after=("network-online.target", gp.STRONGSWAN_UNIT))
    assert start_order([old, Unit(gp.STRONGSWAN_UNIT)]) == [gp.STRONGSWAN_UNIT, gp.FAILOVER_UNIT]
