"""Bad stack outputs at `python -m hostconfig render` (no root): exit 2, a message naming the field path, the rule
and an example, never the PSK, and nothing written under --out (an existing directory is left byte for byte as it
was, a missing one is not created). Every host_config the renderer accepts gives an agent.json the agent accepts."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hardening_lib import REPO, tree_fingerprint
from testlib import DELETE as _DELETE
from testlib import set_path

from hostconfig.agent.config import parse_config
from hostconfig.plan import GatewayPlan, agent_config

FIXTURE = REPO / "tests" / "fixtures" / "host_config.default.json"
PSK1 = "Hardening_psk.tunnel1_0123456789"
PSK2 = "Hardening_psk.tunnel2_0123456789"


def host_config() -> dict:
    data = json.loads(FIXTURE.read_text())
    data["tunnels"][0]["psk"], data["tunnels"][1]["psk"] = PSK1, PSK2
    return data


def edit(path: tuple, value: object):
    def apply(data: dict) -> dict:
        set_path(data, path, value)
        return data
    return apply


P = "host_config"

# (id, edit of the host_config, fragments the message must hold: field path, rule, example)
CASES = [
    ("missing-top-field", edit(("tunnel_mtu",), _DELETE), [f"{P}.tunnel_mtu: is required", "example: 1419"]),
    ("missing-nested-field", edit(("gateway", "private_ip"), _DELETE),
     [f"{P}.gateway.private_ip: is required", "example: 10.8.0.2"]),
    ("missing-tunnel-field", edit(("tunnels", 1, "outside_ip"), _DELETE),
     [f"{P}.tunnels[1].outside_ip: is required", "example: 198.51.100.2"]),
    ("missing-section", edit(("failover",), _DELETE), [f"{P}.failover: is required", "example: {"]),
    ("wrong-type-string-for-int", edit(("tunnel_mtu",), "1419"),
     [f"{P}.tunnel_mtu: must be an integer", "got '1419'", "example: 1419"]),
    ("wrong-type-string-for-list", edit(("aws", "cidrs"), "10.0.0.0/16"),
     [f"{P}.aws.cidrs: must be a list, got a string", '["10.0.0.0/16"]']),
    ("wrong-type-int-for-ip", edit(("gateway", "public_ip"), 3405803786),
     [f"{P}.gateway.public_ip: 3405803786 is not an IPv4 address", "example: 203.0.113.10"]),
    ("wrong-type-object-for-list", edit(("tunnels",), {"tunnel1": {}}),
     [f"{P}.tunnels: must be a list, got an object", "example:"]),
    ("wrong-type-bool-for-int", edit(("tunnels", 0, "mark"), True), [f"{P}.tunnels[0].mark: must be an integer",
                                                                      "got True", "example: 100"]),
    ("wrong-kind", edit(("kind",), "hybrid-vpn/agent-config"), [f"{P}.kind", '"hybrid-vpn/host-config"']),
    ("wrong-version", edit(("version",), 2), [f"{P}.version", "the version this renderer knows"]),
    ("version-as-string", edit(("version",), "1"),
     [f"{P}.version: version '1' is not the version", "this renderer knows (1)"]),
    ("psk-starts-with-zero", edit(("tunnels", 0, "psk"), "0" + PSK1[1:]),
     [f"{P}.tunnels[0].psk", "AWS's pre-shared key rule: starts with '0'"]),
    ("psk-too-short", edit(("tunnels", 0, "psk"), "short12"), [f"{P}.tunnels[0].psk", "8 to 64"]),
    ("psk-too-long", edit(("tunnels", 1, "psk"), "a" * 65), [f"{P}.tunnels[1].psk", "8 to 64"]),
    ("psk-forbidden-character", edit(("tunnels", 0, "psk"), "Hardening-psk-with-dash"),
     [f"{P}.tunnels[0].psk", "other than letters, digits, '.' and '_'"]),
    ("psk-quote", edit(("tunnels", 0, "psk"), 'Hardening"psk'), [f"{P}.tunnels[0].psk", "AWS's pre-shared key rule"]),
    ("psk-trailing-newline", edit(("tunnels", 0, "psk"), PSK1 + "\n"),
     [f"{P}.tunnels[0].psk", "AWS's pre-shared key rule"]),
    ("psk-not-a-string", edit(("tunnels", 0, "psk"), 12345678), [f"{P}.tunnels[0].psk: must be a string"]),
    ("interface-trailing-newline", edit(("gateway", "public_interface"), "eth0\n"),
     [f"{P}.gateway.public_interface", "a Linux interface name", "example: eth0"]),
    ("tunnel-interface-shell", edit(("tunnels", 0, "interface"), "$(touch /tmp/x)"),
     [f"{P}.tunnels[0].interface", "example: vti-aws1"]),
    ("stack-trailing-newline", edit(("stack",), "dev\n"), [f"{P}.stack", "example: dev"]),
    # Values the renderer used to accept and the agent on the gateway then refused (the push succeeded, the agent
    # did not start): refused here, at render time.
    ("probe-interval-below-agent-minimum", edit(("failover", "probe_interval_ms"), 10),
     [f"{P}.failover.probe_interval_ms", "10 is out of range: 20..60000 ms", "example: 200"]),
    ("failback-hold-fraction", edit(("failover", "failback_hold_seconds"), 2.5),
     [f"{P}.failover.failback_hold_seconds", "must be an integer", "example: 20"]),
]


def render(tmp_path: Path, outputs: str | bytes, out: Path) -> subprocess.CompletedProcess[str]:
    source = tmp_path / "outputs.json"
    source.write_bytes(outputs if isinstance(outputs, bytes) else outputs.encode())
    return subprocess.run([sys.executable, "-m", "hostconfig", "render", "--outputs", str(source), "--out", str(out),
                           "--legacy"], capture_output=True, text=True, cwd=REPO, timeout=120)


def existing_out(tmp_path: Path) -> Path:
    """An --out directory that already holds an older rendering (what a re-render must not half-overwrite)."""
    out = tmp_path / "out"
    (out / "etc" / "hybrid-vpn").mkdir(parents=True)
    (out / "etc" / "hybrid-vpn" / "agent.json").write_text('{"older": true}\n')
    return out


@pytest.mark.parametrize("case, change, expected", CASES, ids=[c[0] for c in CASES])
def test_bad_host_config_is_refused_and_nothing_is_written(tmp_path, case, change, expected):
    outputs = json.dumps({"host_config": change(host_config()), "vpn_connection_id": "vpn-0"})
    out = existing_out(tmp_path)
    before = tree_fingerprint(out)
    proc = render(tmp_path, outputs, out)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    for fragment in expected:
        assert fragment in proc.stderr, f"{fragment!r} not in {proc.stderr!r}"
    assert "example:" in proc.stderr
    assert PSK1 not in proc.stderr + proc.stdout and PSK2 not in proc.stderr + proc.stdout
    assert proc.stdout == ""
    assert tree_fingerprint(out) == before
    missing = tmp_path / "never-created"
    assert render(tmp_path, outputs, missing).returncode == 2
    assert not missing.exists()


FILE_CASES = [
    ("empty-file", "", ["not JSON", "pulumi stack output --json --show-secrets"]),
    ("truncated", json.dumps({"host_config": host_config()})[:300], ["not JSON", "line 1"]),
    ("masked-secret", json.dumps({"host_config": "[secret]"}), ["masked as [secret]", "--show-secrets"]),
    ("no-host-config-key", json.dumps({"tunnels": []}), ["no 'host_config' key", "found: tunnels"]),
    ("not-an-object", json.dumps([1, 2]), ["no 'host_config' key"]),
    ("host-config-not-an-object", json.dumps({"host_config": "x"}), [f"{P}: got a string", "expected"]),
    ("non-utf8", b'{"host_config": "\xff"}', ["--outputs", "UTF-8"]),
]


@pytest.mark.parametrize("case, text, expected", FILE_CASES)
def test_unusable_outputs_file_is_refused(tmp_path, case, text, expected):
    out = existing_out(tmp_path)
    before = tree_fingerprint(out)
    proc = render(tmp_path, text, out)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    for fragment in expected:
        assert fragment in proc.stderr, f"{fragment!r} not in {proc.stderr!r}"
    assert PSK1 not in proc.stderr
    assert tree_fingerprint(out) == before


def test_control_good_outputs_are_written(tmp_path):
    """The same invocation with good outputs writes every file (so the refusals above are not a broken harness)."""
    out = tmp_path / "out"
    proc = render(tmp_path, json.dumps({"host_config": host_config()}), out)
    assert proc.returncode == 0, proc.stderr
    written = tree_fingerprint(out)
    assert "etc/swanctl/conf.d/hybrid-vpn.conf" in written and "legacy/etc/ipsec.secrets" in written
    assert PSK1 not in proc.stdout + proc.stderr


EDGES = [
    ("failover", "probe_interval_ms", 20), ("failover", "probe_interval_ms", 60000),
    ("failover", "probe_timeout_ms", 10), ("failover", "failback_hold_seconds", 0),
    ("failover", "failback_hold_seconds", 86400), ("failover", "down_after", 1000), ("tunnel_mtu", None, 576),
]


@pytest.mark.parametrize("section, key, value", EDGES)
def test_every_accepted_host_config_gives_an_agent_config_the_agent_accepts(section, key, value):
    data = host_config()
    if key is None:
        data[section] = value
    else:
        data[section][key] = value
    if section == "tunnel_mtu":
        data["tcp_mss"] = value - 40
    rendered = json.loads(json.dumps(agent_config(GatewayPlan.from_host_config(data))))
    parse_config(rendered)  # raises ConfigError if the renderer let through what the agent refuses


def test_one_hundred_aws_cidrs_render_an_agent_config_the_agent_accepts():
    data = copy.deepcopy(host_config())
    data["aws"]["cidrs"] = [f"10.{2 * i + 1}.0.0/16" for i in range(100)]
    data["linode"]["vlan_cidrs"] = [f"172.16.{32 * i}.0/20" for i in range(8)] + ["192.168.0.0/24",
                                                                                 "192.168.2.0/24"]
    cfg = parse_config(json.loads(json.dumps(agent_config(GatewayPlan.from_host_config(data)))))
    assert len(cfg.aws_cidrs) == 100 and len(cfg.vlan_cidrs) == 10
