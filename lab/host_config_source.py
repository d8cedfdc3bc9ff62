"""Where the lab's `host_config` comes from: the Pulumi program evaluated against the emulated cloud (lab/cloud.py)
when it is in the tree, else a lab-local object of the same schema (docs/contracts.md §1) with the lab's addresses."""

from __future__ import annotations

import copy
import importlib.util
import json
import logging
import secrets
import string
from dataclasses import dataclass

from lab import paths
from lab.addresses import LabAddressPlan

log = logging.getLogger(__name__)

FIXTURE = paths.REPO / "tests" / "fixtures" / "host_config.default.json"
STACK_CONFIG = paths.REPO / "stacks" / "Pulumi.lab.yaml"

DEFAULT_CRYPTO = {
    "ike_version": 2,
    "phase1": {"encryption": ["AES256"], "integrity": ["SHA2-256"], "dh_groups": [14], "lifetime_seconds": 28800},
    "phase2": {"encryption": ["AES256"], "integrity": ["SHA2-256"], "dh_groups": [14], "lifetime_seconds": 3600},
    "rekey_margin_seconds": 270, "rekey_fuzz_percent": 100, "replay_window": 1024, "dpd_timeout_seconds": 30,
    "dpd_timeout_action": "restart", "startup_action": "add",
}
DEFAULT_FAILOVER = {"primary": "tunnel1", "probe_interval_ms": 100, "probe_timeout_ms": 300, "down_after": 3,
                    "up_after": 5, "failback_hold_seconds": 20, "extra_probe_targets": []}


def generate_psk() -> str:
    """AWS's rule: 8-64 of letters, digits, '.', '_', not starting with '0'; AWS itself generates 32 alphanumerics."""
    alphabet = string.ascii_letters + string.digits
    first = secrets.choice(string.ascii_letters)
    return first + "".join(secrets.choice(alphabet) for _ in range(31))


def real_chain_available() -> bool:
    return importlib.util.find_spec("lab.cloud") is not None and STACK_CONFIG.exists()


@dataclass(frozen=True)
class ProgramResult:
    host_config: dict
    ssh_host_private_key: str  # what cloud-init installs on the gateway (the program generates the host key)
    ssh_host_public_key: str


def program_host_config(plan: LabAddressPlan) -> ProgramResult:
    """Evaluate the Pulumi program with stacks/Pulumi.lab.yaml against the emulated cloud (lab/cloud.py)."""
    from lab import cloud

    run = cloud.run_program(cloud.stack_config_from_file(STACK_CONFIG), stack="lab", address_plan=plan)
    if "host_config" not in run.outputs:
        raise RuntimeError(f"the program exported no host_config (outputs: {', '.join(sorted(run.outputs))})")
    keys = [k for k in run.of_type("tls:index/privateKey:PrivateKey") if k.name == "gateway-ssh-host-key"]
    if len(keys) != 1 or "privateKeyOpenssh" not in keys[0].state:
        raise RuntimeError("expected one tls PrivateKey (the gateway's SSH host key) with privateKeyOpenssh state")
    state = keys[0].state
    return ProgramResult(run.outputs["host_config"], state["privateKeyOpenssh"], state["publicKeyOpenssh"].strip())


def lab_local_host_config(plan: LabAddressPlan, ssh_host_public_key: str) -> dict:
    base = json.loads(FIXTURE.read_text()) if FIXTURE.exists() else {}
    hc = {
        "kind": "hybrid-vpn/host-config", "version": 1, "stack": "lab",
        "gateway": {"label": "hybrid-vpn-lab-gw", "public_ip": plan.gateway_public_ip,
                    "private_ip": plan.gateway_private_ip, "public_interface": "eth0", "vlan_interface": "eth1",
                    "vlan_address": plan.vlan_gateway_cidr, "ssh_host_public_key": ssh_host_public_key},
        "aws": {"region": "us-east-1", "vpn_connection_id": "vpn-0lab00000000000a", "vgw_id": "vgw-0lab00000000000a",
                "cidrs": [plan.vpc_cidr]},
        "linode": {"region": "us-ord", "vlan_label": "hybrid-vpn-lab", "vlan_cidrs": list(plan.vlan_cidrs),
                   "subnet_cidr": plan.gateway_private_cidr},
        "crypto": copy.deepcopy(base.get("crypto", DEFAULT_CRYPTO)),
        "tunnels": [],
        "tunnel_mtu": base.get("tunnel_mtu", 1419),
        "tcp_mss": base.get("tcp_mss", 1379),
        "failover": copy.deepcopy(base.get("failover", DEFAULT_FAILOVER)),
    }
    for i, (outside, inside) in enumerate(zip(plan.aws_outside_ips, plan.inside_cidrs, strict=True), start=1):
        net = inside.split("/")[0].rsplit(".", 1)
        hc["tunnels"].append({
            "name": f"tunnel{i}", "interface": f"vti-aws{i}", "outside_ip": outside, "inside_cidr": inside,
            "aws_inside_ip": f"{net[0]}.{int(net[1]) + 1}", "gateway_inside_ip": f"{net[0]}.{int(net[1]) + 2}",
            "psk": generate_psk(), "mark": 100 * i,
        })
    return hc

