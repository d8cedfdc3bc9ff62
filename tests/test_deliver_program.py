"""The program with delivery wired in, on the emulated cloud (lab/cloud.py mocks): GatewayConfig depends on the VPN
connection and the firewall, carries contents and keys only as secrets, and disappears with delivery.enabled false."""

from __future__ import annotations

import base64
import copy
import subprocess
from pathlib import Path
from typing import Any

import pytest

from hostconfig import gateway_paths as gp

cloud = pytest.importorskip("lab.cloud", reason="lab/cloud.py (the emulated cloud) not in the tree")

REPO = Path(__file__).resolve().parent.parent
T_GATEWAY_CONFIG = "pulumi-python:dynamic/hybrid-vpn:GatewayConfig"
T_VPN = "aws:ec2/vpnConnection:VpnConnection"
T_FIREWALL = "linode:index/firewall:Firewall"
T_INSTANCE = "linode:index/instance:Instance"
FAKE_PSKS = ["FAKE_psk_tunnel1_deliver_test", "FAKE_psk_tunnel2_deliver_test"]
def _private_key(tmp_path: Path) -> str:
    path = tmp_path / "operator_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True, capture_output=True)
    return path.read_text()


def _dev_config(tmp_path: Path, **delivery: Any) -> dict[str, Any]:
    config = copy.deepcopy(cloud.stack_config_from_file(REPO / "stacks" / "Pulumi.dev.yaml"))
    config["hybrid-vpn:tunnels"]["psks"] = list(FAKE_PSKS)
    config["hybrid-vpn:delivery"] = {**config.get("hybrid-vpn:delivery", {}), **delivery}
    return config


PROGRAM = REPO / "__main__.py"


def _run(config: dict[str, Any]) -> Any:
    return cloud.run_program(config, stack="dev", program=PROGRAM,
                             secret_keys=("hybrid-vpn:tunnels", "hybrid-vpn:delivery"))


def test_gateway_config_depends_on_vpn_connection_and_firewall(tmp_path):
    run = _run(_dev_config(tmp_path, ssh_private_key=_private_key(tmp_path)))

    resource = run.one(T_GATEWAY_CONFIG)
    vpn = run.one(T_VPN)
    firewall = run.one(T_FIREWALL)
    assert vpn.urn in resource.dependencies
    # depends_on the GatewayFirewall component: the SDK expands it to its children, the Cloud Firewall included.
    assert firewall.urn in resource.dependencies or firewall.parent in resource.dependencies
    order = [r.urn for r in run.resources]
    assert order.index(resource.urn) > order.index(vpn.urn) and order.index(resource.urn) > order.index(firewall.urn)


def test_gateway_config_inputs_keep_contents_and_keys_secret(tmp_path):
    key = _private_key(tmp_path)
    run = _run(_dev_config(tmp_path, ssh_private_key=key))

    resource = run.one(T_GATEWAY_CONFIG)
    inputs = resource.inputs
    secret_roots = {p.split(".")[0].split("[")[0] for p in resource.secret_inputs}
    assert {"files", "private_key", "scrub", "secret_hashes"} <= secret_roots
    assert "hashes" not in secret_roots and "host" not in secret_roots
    expected_public = {f.path for f in (gp.CHARON_CONF, gp.AGENT_CONFIG, gp.NFT_RULESET, gp.VPNCTL,
                                        gp.FAILOVER_UNIT_FILE, gp.GUARD_UNIT_FILE, gp.SSH_HOST_PUBLIC_KEY)}
    assert set(inputs["hashes"]) == expected_public
    assert set(inputs["secret_hashes"]) == {gp.SWANCTL_CONF.path, gp.SSH_HOST_KEY.path}
    assert {f["path"]: f["mode"] for f in inputs["files"]}[gp.SWANCTL_CONF.path] == 0o600
    assert inputs["host"] == run.outputs["gateway_public_ip"]
    assert inputs["host_public_key"].startswith("ssh-ed25519 ")
    assert inputs["private_key"] == key
    plain = repr({k: v for k, v in inputs.items() if k not in secret_roots})
    assert not any(psk in plain for psk in FAKE_PSKS) and "PRIVATE KEY" not in plain


def test_delivery_disabled_creates_no_gateway_config(tmp_path):
    run = _run(_dev_config(tmp_path, enabled=False))
    assert run.of_type(T_GATEWAY_CONFIG) == []
    assert run.of_type(T_VPN)  # the rest of the program is unaffected


def test_gateway_config_is_keyed_on_the_instance_id(tmp_path):
    run = _run(_dev_config(tmp_path, ssh_private_key=_private_key(tmp_path)))

    resource = run.one(T_GATEWAY_CONFIG)
    instance = run.one(T_INSTANCE)
    assert instance.id and resource.inputs["instance_id"] == str(instance.id)
    assert "instance_id" not in {p.split(".")[0] for p in resource.secret_inputs}  # shown in the diff


def test_the_pinned_host_key_is_delivered_and_never_in_user_data(tmp_path):
    run = _run(_dev_config(tmp_path, ssh_private_key=_private_key(tmp_path)))

    inputs = run.one(T_GATEWAY_CONFIG).inputs
    instance = run.one(T_INSTANCE)
    user_data = base64.b64decode(instance.inputs["metadatas"][0]["userData"]).decode()
    delivered = next(f for f in inputs["files"] if f["path"] == gp.SSH_HOST_KEY.path)
    delivered_private = base64.b64decode(delivered["content_b64"]).decode()
    assert delivered["secret"] and delivered["mode"] == 0o600
    assert inputs["host_public_key"].startswith("ssh-ed25519 ")
    assert inputs["host_public_key"] != inputs["bootstrap_host_public_key"]
    # The bootstrap key is the one in user data; the delivered one (public or private) never is.
    assert inputs["bootstrap_host_public_key"].split()[1] in user_data
    assert inputs["host_public_key"].split()[1] not in user_data
    body = "".join(delivered_private.strip().splitlines()[1:-1])
    flat_user_data = "".join(user_data.split())
    assert body[-60:] not in flat_user_data  # (the first bytes are the same header in every OpenSSH key)
