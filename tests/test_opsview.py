"""`python -m hostconfig status`: the pure comparison of AWS's and the gateway's views, the EC2 calls against botocore's
Stubber (no network), the CLI with a fake gateway JSON, and (root) the real SSH path to an sshd in a namespace where
the real `vpnctl status --json` runs on a reconciled namespace gateway."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime as dt
import json
import os
import sys
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from testlib import contract_example

from hostconfig.agent.status_contract import ProbeView, StatusReport, TunnelStatus
from hostconfig.opsview import (
    AwsTunnel,
    AwsView,
    Unreachable,
    cmd_status,
    compare,
    gather,
    load_plan,
    read_aws_view,
    render_json,
    render_text,
)
from hostconfig.plan import GatewayPlan

REPO = Path(__file__).resolve().parents[1]
FIXTURE = json.loads((REPO / "tests" / "fixtures" / "host_config.default.json").read_text())
PSKS = [t["psk"] for t in FIXTURE["tunnels"]]
VPN_ID = FIXTURE["aws"]["vpn_connection_id"]
CHANGED = dt.datetime(2025, 1, 10, 10, 0, 0, tzinfo=dt.UTC)


def plan(data: dict | None = None) -> GatewayPlan:
    return GatewayPlan.from_host_config(copy.deepcopy(data or FIXTURE))


def aws_tunnel(i: int, status: str = "UP", routes: int | None = 1, message: str = "") -> AwsTunnel:
    return AwsTunnel(FIXTURE["tunnels"][i]["outside_ip"], status, message, routes, "2025-01-10T10:00:00Z")


def aws_view(*tunnels: AwsTunnel, routes: dict[str, str] | None = None, cgw: str | None = None) -> AwsView:
    return AwsView("available", tunnels or (aws_tunnel(0), aws_tunnel(1)),
                   routes if routes is not None else {c: "available" for c in FIXTURE["linode"]["vlan_cidrs"]},
                   cgw or FIXTURE["gateway"]["public_ip"])


STATUS = StatusReport.from_json(contract_example("status"))  # docs/contracts.md §3a, what `vpnctl status --json` prints


def gw_tunnel(name: str, child: str = "INSTALLED", ike: str = "ESTABLISHED", role: str = "active",
              probe_up: bool | None = True) -> TunnelStatus:
    base = STATUS.tunnels[0 if name == "tunnel1" else 1]
    probe = None if probe_up is None else ProbeView(up=probe_up, rtt_seconds=0.01, since=1.0, reason="x")
    return dataclasses.replace(base, name=name, interface=name.replace("tunnel", "vti-aws"), role=role,
                               primary=name == "tunnel1", ike_sa=ike, child_sa=child, probe=probe)


def gw_view(*tunnels: TunnelStatus, running: bool = True) -> StatusReport:
    return dataclasses.replace(STATUS, tunnels=list(tunnels or (gw_tunnel("tunnel1"),
                                                                gw_tunnel("tunnel2", role="standby"))),
                               daemon=dataclasses.replace(STATUS.daemon, running=running))


# ------------------------------------------------------------------------------------------------ pure comparison


def test_both_sides_agree_no_flags_and_side_by_side_table():
    report = compare(plan(), aws_view(), gw_view())
    assert report.all_flags == []
    text = render_text(report)
    assert "AWS and the gateway agree." in text
    row = next(line for line in text.splitlines() if line.startswith("tunnel1 "))
    assert "198.51.100.1" in row and "UP" in row and "2025-01-10T10:00:00Z" in row
    assert "ESTABLISHED" in row and "INSTALLED" in row and "active" in row


CASES = [
    ("AWS UP, gateway CHILD_SA missing", aws_view(), gw_view(gw_tunnel("tunnel1"), gw_tunnel("tunnel2", "NONE")),
     "tunnel2: AWS says UP but the gateway's CHILD_SA is NONE"),
    ("gateway INSTALLED, AWS DOWN", aws_view(aws_tunnel(0, "DOWN", message="IPSEC IS DOWN"), aws_tunnel(1)),
     gw_view(), "tunnel1: the gateway has an installed CHILD_SA but AWS says DOWN (IPSEC IS DOWN)"),
    ("outside IP unknown to AWS", aws_view(aws_tunnel(0), AwsTunnel("198.51.100.77", "UP", "", 1, None)), gw_view(),
     "tunnel2: outside IP mismatch: AWS reports no tunnel with outside IP 198.51.100.2"),
    ("AWS tunnel unknown to host_config", aws_view(aws_tunnel(0), AwsTunnel("198.51.100.77", "UP", "", 1, None)),
     gw_view(), "AWS has a tunnel with outside IP 198.51.100.77 that host_config does not know"),
    ("customer gateway IP differs", aws_view(cgw="203.0.113.99"), gw_view(),
     "outside IP mismatch: the customer gateway is 203.0.113.99 but the gateway's public IP is 203.0.113.10"),
    ("route count mismatch", aws_view(aws_tunnel(0, routes=3), aws_tunnel(1)), gw_view(),
     "tunnel1: route count mismatch: AWS accepted 3 route(s), host_config has 1 VLAN CIDR(s)"),
    ("static route missing", aws_view(routes={}), gw_view(),
     "static route 172.16.0.0/12 (a VLAN CIDR) is missing on the VPN connection"),
    ("static route not available", aws_view(routes={"172.16.0.0/12": "pending"}), gw_view(),
     "static route 172.16.0.0/12 is pending, not available"),
    ("extra static route", aws_view(routes={"172.16.0.0/12": "available", "192.168.0.0/16": "available"}),
     gw_view(), "static route 192.168.0.0/16 on the VPN connection is not a VLAN CIDR"),
    ("probes fail over an installed SA", aws_view(), gw_view(gw_tunnel("tunnel1", probe_up=False),
                                                             gw_tunnel("tunnel2")),
     "tunnel1: CHILD_SA installed but the gateway's probes through it are unanswered"),
    ("daemon down", aws_view(), gw_view(running=False), "the failover daemon is not running on the gateway"),
    ("gateway does not know a tunnel", aws_view(), gw_view(gw_tunnel("tunnel1")),
     "tunnel2: the gateway's agent does not know this tunnel"),
    ("AWS unreachable", Unreachable("NoCredentialsError: Unable to locate credentials"), gw_view(),
     "AWS view unavailable: NoCredentialsError"),
    ("gateway unreachable", aws_view(), Unreachable("HostKeyMismatch: host key of 203.0.113.10:22 does not match"),
     "gateway view unavailable: HostKeyMismatch"),
]


@pytest.mark.parametrize("aws,gateway,flag", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_disagreement_is_flagged(aws, gateway, flag):
    report = compare(plan(), aws, gateway)
    assert any(f.startswith(flag) for f in report.all_flags), report.all_flags
    text = render_text(report)
    assert f"! {flag}" in text
    assert flag in json.dumps(json.loads(render_json(report))["disagreements"])


def test_aws_up_with_accepted_zero_routes_is_not_a_mismatch():
    # Static VPN connections may report 0 accepted routes: only a different non-zero count is flagged.
    assert compare(plan(), aws_view(aws_tunnel(0, routes=0), aws_tunnel(1, routes=None)), gw_view()).all_flags == []


# ------------------------------------------------------------------------------------------------ EC2 via Stubber


@pytest.fixture
def ec2(monkeypatch):
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": "/dev/null",
                       "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"}.items():
        monkeypatch.setenv(key, value)
    client = boto3.client("ec2", region_name=FIXTURE["aws"]["region"])
    with Stubber(client) as stubber:
        yield client, stubber


def vpn_response(status1: str = "UP", status2: str = "DOWN") -> dict[str, Any]:
    telemetry = []
    options = []
    for t, status in zip(FIXTURE["tunnels"], (status1, status2), strict=True):
        telemetry.append({"OutsideIpAddress": t["outside_ip"], "Status": status, "LastStatusChange": CHANGED,
                          "StatusMessage": "" if status == "UP" else "IPSEC IS DOWN", "AcceptedRouteCount": 0})
        # The real response carries the PSKs in the tunnel options: they must never reach the report.
        options.append({"OutsideIpAddress": t["outside_ip"], "TunnelInsideCidr": t["inside_cidr"],
                        "PreSharedKey": t["psk"]})
    return {"VpnConnections": [{
        "VpnConnectionId": VPN_ID, "State": "available", "Type": "ipsec.1",
        "CustomerGatewayId": "cgw-0123456789abcdef0",
        "VpnGatewayId": FIXTURE["aws"]["vgw_id"], "Options": {"StaticRoutesOnly": True, "TunnelOptions": options},
        "Routes": [{"DestinationCidrBlock": c, "Source": "Static", "State": "available"}
                   for c in FIXTURE["linode"]["vlan_cidrs"]],
        "VgwTelemetry": telemetry,
        "CustomerGatewayConfiguration": "<vpn_connection>...<pre_shared_key>" + PSKS[0] + "</pre_shared_key>",
    }]}


def stub_aws(stubber: Stubber, response: dict[str, Any] | None = None) -> None:
    stubber.add_response("describe_vpn_connections", response or vpn_response(),
                         {"VpnConnectionIds": [VPN_ID]})
    stubber.add_response("describe_customer_gateways",
                         {"CustomerGateways": [{"CustomerGatewayId": "cgw-0123456789abcdef0",
                                                "IpAddress": FIXTURE["gateway"]["public_ip"], "State": "available",
                                                "Type": "ipsec.1", "BgpAsn": "65000"}]},
                         {"CustomerGatewayIds": ["cgw-0123456789abcdef0"]})


def test_read_aws_view_from_the_ec2_api(ec2):
    client, stubber = ec2
    stub_aws(stubber)
    view = read_aws_view(plan(), client)
    stubber.assert_no_pending_responses()
    assert view.state == "available" and view.customer_gateway_ip == "203.0.113.10"
    assert [(t.outside_ip, t.status, t.last_status_change) for t in view.tunnels] == [
        ("198.51.100.1", "UP", "2025-01-10T10:00:00Z"), ("198.51.100.2", "DOWN", "2025-01-10T10:00:00Z")]
    assert view.static_routes == {"172.16.0.0/12": "available"}
    assert not any(psk in repr(view) for psk in PSKS)


def test_vpn_connection_not_found_is_a_flag_not_a_crash(ec2):
    client, stubber = ec2
    stubber.add_client_error("describe_vpn_connections", "InvalidVpnConnectionID.NotFound",
                             f"The vpnConnection ID '{VPN_ID}' does not exist", expected_params={
                                 "VpnConnectionIds": [VPN_ID]})
    report = gather(plan(), client, None, "vpnctl", gateway_reader=lambda target, vpnctl: gw_view())
    assert any("InvalidVpnConnectionID.NotFound" in f for f in report.all_flags)


def test_cli_with_stubbed_ec2_and_fake_gateway_json_never_prints_a_psk(ec2, tmp_path, capsys):
    client, stubber = ec2
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps({"host_config": FIXTURE, "tunnels": "[secret]"}))
    calls = []

    def fake_gateway(target, vpnctl):
        calls.append((target.host, target.port, target.host_public_key, vpnctl))
        return gw_view(gw_tunnel("tunnel1"), gw_tunnel("tunnel2", "NONE", "CONNECTING", role="unused",
                                                       probe_up=False))

    for as_json in (False, True):
        stub_aws(stubber)
        args = argparse.Namespace(outputs=str(outputs), stack=None, cwd=None, json=as_json, ssh_user="root",
                                  ssh_key=None, ssh_port=22, ssh_host=None, ssh_deadline=5.0,
                                  vpnctl="/usr/local/sbin/vpnctl")
        rc = cmd_status(args, ec2=client, gateway_reader=fake_gateway)
        out = capsys.readouterr()
        # tunnel2 is DOWN at AWS and not installed on the gateway: they agree; nothing to flag there.
        assert rc == 0, out.out
        assert not any(psk in out.out + out.err for psk in PSKS)
    assert calls[0] == ("203.0.113.10", 22, FIXTURE["gateway"]["ssh_host_public_key"], "/usr/local/sbin/vpnctl")
    report = json.loads(out.out)
    assert report["disagreements"] == []
    assert [r["aws"]["status"] for r in report["rows"]] == ["UP", "DOWN"]
    assert [r["gateway"]["child_sa"] for r in report["rows"]] == ["INSTALLED", "NONE"]


def test_cli_bad_outputs_file_is_exit_2_naming_the_problem(tmp_path, capsys):
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps({"host_config": "[secret]"}))
    args = argparse.Namespace(outputs=str(outputs), stack=None, cwd=None, json=False, ssh_user="root", ssh_key=None,
                              ssh_port=22, ssh_host=None, ssh_deadline=5.0, vpnctl="vpnctl")
    assert cmd_status(args, ec2=object()) == 2
    assert "--show-secrets" in capsys.readouterr().err


def test_stack_flag_without_pulumi_cli_explains(monkeypatch, capsys):
    monkeypatch.setenv("PATH", "/nonexistent")
    args = argparse.Namespace(outputs=None, stack="dev", cwd=None, json=False, ssh_user="root", ssh_key=None,
                              ssh_port=22, ssh_host=None, ssh_deadline=5.0, vpnctl="vpnctl")
    assert cmd_status(args, ec2=object()) == 2
    assert "pulumi CLI is not installed" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ real sshd (root)


@pytest.mark.root
def test_over_real_ssh_to_a_namespace_gateway_running_vpnctl_status(netns, tmp_path, ec2, capsys):
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, sshd)")
    import shutil

    for tool in ("/usr/sbin/sshd", "ssh-keygen", "nft"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (Debian packages openssh-server, nftables)")
    sys.path.insert(0, str(REPO / "tests" / "agent"))
    from agent_testlib import config_dict, run_in_netns, wire_gateway, write_config

    from hostconfig.deliver.sshd_lab import prepare_sshd

    gw, aws = netns("hvogw"), netns("hvoaws")
    data = config_dict(tmp_path)
    config = write_config(tmp_path, data)
    wire_gateway(gw, aws, data)
    assert run_in_netns(gw, _reconcile, str(config)) == []
    vpnctl = tmp_path / "vpnctl"
    vpnctl.write_text(f'#!/bin/sh\nexec env PYTHONPATH={REPO} {sys.executable} -m hostconfig.agent.cli "$@" '
                      f'--config {config}\n')
    vpnctl.chmod(0o755)
    lab = prepare_sshd(gw, tmp_path / "sshd")
    try:
        lab.start()
        host_config = copy.deepcopy(FIXTURE)
        host_config["gateway"]["public_ip"] = lab.link.ns_ip  # 192.0.2.x on the test's own veth pair
        host_config["gateway"]["ssh_host_public_key"] = lab.host_public_key
        outputs = tmp_path / "outputs.json"
        outputs.write_text(json.dumps({"host_config": host_config}))
        key = tmp_path / "client_key"
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(lab.client_private_key)
        client, stubber = ec2
        response = vpn_response("UP", "DOWN")
        stub_aws(stubber, response)
        args = argparse.Namespace(outputs=str(outputs), stack=None, cwd=None, json=True, ssh_user="root",
                                  ssh_key=str(key), ssh_port=lab.port, ssh_host=None, ssh_deadline=30.0,
                                  vpnctl=str(vpnctl))
        rc = cmd_status(args, ec2=client)
        out = capsys.readouterr().out
        report = json.loads(out)
        assert rc == 1
        # the real agent's status: routes reconciled, no charon here (VICI unreachable), no daemon
        roles = {r["name"]: r["gateway"]["role"] for r in report["rows"]}
        assert roles == {"tunnel1": "active", "tunnel2": "standby"}
        flags = report["disagreements"]
        assert any(f.startswith("tunnel1: AWS says UP but the gateway's CHILD_SA is unknown") for f in flags), flags
        assert "the failover daemon is not running on the gateway (`vpnctl doctor` there says why)" in flags
        assert not any(f.startswith("tunnel2: AWS says") for f in flags)  # DOWN at AWS, nothing on the gateway

        # a different pinned host key: refused, reported, nothing read from the impostor
        host_config["gateway"]["ssh_host_public_key"] = FIXTURE["gateway"]["ssh_host_public_key"]
        outputs.write_text(json.dumps({"host_config": host_config}))
        stub_aws(stubber, response)
        rc = cmd_status(args, ec2=client)
        report = json.loads(capsys.readouterr().out)
        assert rc == 1
        assert any(f.startswith("gateway view unavailable: HostKeyMismatch") for f in report["disagreements"])
        assert all(r["gateway"] is None for r in report["rows"])
    finally:
        lab.stop()


def _reconcile(config: str) -> list[str]:
    from hostconfig.agent.config import load_config
    from hostconfig.agent.desired import TunnelView
    from hostconfig.agent.kernel import Kernel
    from hostconfig.agent.reconcile import Reconciler

    with Kernel() as kernel:
        result = Reconciler(load_config(config), kernel, "given").run(
            TunnelView(frozenset({"tunnel1", "tunnel2"}), "tunnel1"))
    return result.problems


def test_status_pins_the_host_key_delivery_installed_not_the_bootstrap_key(tmp_path):
    """After the first push the gateway presents the delivered host key (never in user data); host_config still holds
    the user-data bootstrap key. `hostconfig status` must pin the delivered one, or it refuses every healthy gateway."""
    delivered = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKx2CXzp0xowL6/LgEeiGwIWHDIfLAG4aZBddpti4SFg gateway"
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps({"host_config": FIXTURE, "gateway_ssh_host_public_key": delivered}))
    assert load_plan(str(outputs), None).gateway.ssh_host_public_key == delivered
    outputs.write_text(json.dumps({"host_config": FIXTURE}))  # a stack without delivery: the bootstrap key stays
    assert load_plan(str(outputs), None).gateway.ssh_host_public_key == FIXTURE["gateway"]["ssh_host_public_key"]
