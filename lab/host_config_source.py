"""Where the lab's `host_config` comes from: the Pulumi program evaluated with stacks/Pulumi.lab.yaml against the
emulated cloud (lab/cloud.py), as `pulumi up` would produce it (docs/contracts.md §1)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from lab import paths
from lab.addresses import LabAddressPlan

log = logging.getLogger(__name__)

STACK_CONFIG = paths.REPO / "stacks" / "Pulumi.lab.yaml"
# `lab up --routing bgp`: the lab stack plus this (hybrid-vpn:routing; the customer ASN is CreateCustomerGateway's
# default, the Amazon side's comes from the stack's aws.amazon_side_asn).
BGP_ROUTING = {"mode": "bgp", "customer_asn": 65000}


@dataclass(frozen=True)
class ProgramResult:
    host_config: dict
    ssh_host_private_key: str  # what cloud-init installs on the gateway (the program generates the host key)
    ssh_host_public_key: str


def check_routing_mode(routing: str) -> str:
    """``routing`` if the program knows it (the contract's rules.ROUTING_MODES), else ValueError."""
    from hostconfig.contract.rules import ROUTING_MODES

    if routing not in ROUTING_MODES:
        raise ValueError(f"lab up --routing: {routing!r} is not one of {', '.join(ROUTING_MODES)} (e.g. --routing bgp)")
    return routing


def stack_config(routing: str = "static") -> dict:
    """stacks/Pulumi.lab.yaml's config, with hybrid-vpn:routing in bgp mode."""
    from lab import cloud

    check_routing_mode(routing)
    config = cloud.stack_config_from_file(STACK_CONFIG)
    if routing == "bgp":
        config["hybrid-vpn:routing"] = dict(BGP_ROUTING)
    return config


def program_host_config(plan: LabAddressPlan, routing: str = "static") -> ProgramResult:
    """Evaluate the Pulumi program with stacks/Pulumi.lab.yaml (plus ``routing``) against the emulated cloud."""
    from lab import cloud

    run = cloud.run_program(stack_config(routing), stack="lab", address_plan=plan)
    if "host_config" not in run.outputs:
        raise RuntimeError(f"the program exported no host_config (outputs: {', '.join(sorted(run.outputs))})")
    keys = [k for k in run.of_type("tls:index/privateKey:PrivateKey") if k.name == "gateway-ssh-host-key"]
    if len(keys) != 1 or "privateKeyOpenssh" not in keys[0].state:
        raise RuntimeError("expected one tls PrivateKey (the gateway's SSH host key) with privateKeyOpenssh state")
    state = keys[0].state
    return ProgramResult(run.outputs["host_config"], state["privateKeyOpenssh"], state["publicKeyOpenssh"].strip())
