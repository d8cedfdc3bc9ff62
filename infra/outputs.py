"""Stack outputs built from plain values: the ``tunnels`` list and ``host_config`` (docs/contracts.md §1).

Pure functions (no Pulumi types) so the schema is unit-tested without the runtime; ``__main__.py`` calls them inside
one ``Output.all(...).apply(...)`` and exports the result as a secret.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from hostconfig.contract import rules
from hostconfig.contract.connection import Connection
from hostconfig.contract.crypto import gateway_option_values
from infra.config import TUNNEL_NAMES, StackConfig

HOST_CONFIG_KIND = "hybrid-vpn/host-config"
HOST_CONFIG_VERSION = 1


@dataclass(frozen=True)
class TunnelFacts:
    """What AWS reports for one tunnel of the VPN connection (plain values)."""

    outside_ip: str
    inside_cidr: str
    aws_inside_ip: str
    gateway_inside_ip: str
    psk: str


@dataclass(frozen=True)
class GatewayFacts:
    label: str
    public_ip: str
    private_ip: str
    public_interface: str
    vlan_interface: str
    ssh_host_public_key: str


def tunnel_entries(config: StackConfig, tunnels: tuple[TunnelFacts, TunnelFacts]) -> list[dict[str, Any]]:
    """Per tunnel: name, interface, outside IP, inside CIDR, both inside addresses, PSK, mark (AWS's order)."""
    entries = []
    for name, interface, mark, facts in zip(TUNNEL_NAMES, config.tunnels.interfaces, config.tunnels.marks, tunnels,
                                            strict=True):
        _check_inside(name, facts)
        entries.append({
            "name": name,
            "interface": interface,
            "outside_ip": facts.outside_ip,
            "inside_cidr": facts.inside_cidr,
            "aws_inside_ip": facts.aws_inside_ip,
            "gateway_inside_ip": facts.gateway_inside_ip,
            "psk": facts.psk,
            "mark": mark,
        })
    return entries


def _check_inside(name: str, facts: TunnelFacts) -> None:
    """What AWS reports must follow AWS's own inside-address rule (rules.inside_address_problems): refuse anything
    else rather than export a host_config the renderer refuses."""
    net = ipaddress.IPv4Network(facts.inside_cidr)
    wrong = rules.inside_address_problems(net, ipaddress.IPv4Address(facts.aws_inside_ip),
                                          ipaddress.IPv4Address(facts.gateway_inside_ip))
    if wrong:
        aws_ip, gateway_ip = rules.inside_addresses(net)
        raise ValueError(f"{name}: " + "; ".join(wrong.values())
                         + f" (expected {aws_ip} for AWS, {gateway_ip} for the gateway)")


def crypto_dict(config: StackConfig) -> dict[str, Any]:
    c = config.crypto

    def phase(p) -> dict[str, Any]:
        return {"encryption": list(p.encryption), "integrity": list(p.integrity), "dh_groups": list(p.dh_groups),
                "lifetime_seconds": p.lifetime_seconds}

    return {
        "ike_version": c.ike_version,
        "phase1": phase(c.phase1),
        "phase2": phase(c.phase2),
        **gateway_option_values(c),  # hostconfig/contract/crypto.py TUNNEL_OPTIONS (those the gateway needs)
    }


def build_host_config(*, stack: str, config: StackConfig, gateway: GatewayFacts, vgw_id: str,
                      connections: tuple[Connection[TunnelFacts], ...]) -> dict[str, Any]:
    """The ``host_config`` object of docs/contracts.md §1 (schema hybrid-vpn/host-config, version 1). ``connections``:
    the VPN connections (name: the AWS id) with AWS's facts of their tunnels; version 1 carries exactly one."""
    if len(connections) != 1:
        raise ValueError(f"host_config version {HOST_CONFIG_VERSION} carries exactly one VPN connection, got "
                         f"{len(connections)}")
    (connection,) = connections
    f = config.failover
    host_config = {
        "kind": HOST_CONFIG_KIND,
        "version": HOST_CONFIG_VERSION,
        "stack": stack,
        "gateway": {
            "label": gateway.label,
            "public_ip": gateway.public_ip,
            "private_ip": gateway.private_ip,
            "public_interface": gateway.public_interface,
            "vlan_interface": gateway.vlan_interface,
            "vlan_address": config.linode.gateway_vlan_address,
            "ssh_host_public_key": gateway.ssh_host_public_key,
        },
        "aws": {
            "region": config.aws.region,
            "vpn_connection_id": connection.name,
            "vgw_id": vgw_id,
            "cidrs": list(config.aws.cidrs),
        },
        "linode": {
            "region": config.linode.region,
            "vlan_label": config.linode.vlan_label,
            "vlan_cidrs": list(config.linode.vlan_cidrs),
            "subnet_cidr": config.linode.subnet_cidr,
        },
        "crypto": crypto_dict(config),
        "tunnels": tunnel_entries(config, connection.tunnels),  # type: ignore[arg-type]
        "tunnel_mtu": config.tunnels.mtu,
        "tcp_mss": config.tunnels.tcp_mss,
        "failover": {
            "primary": f.primary,
            "probe_interval_ms": f.probe_interval_ms,
            "probe_timeout_ms": f.probe_timeout_ms,
            "down_after": f.down_after,
            "up_after": f.up_after,
            "failback_hold_seconds": f.failback_hold_seconds,
            "extra_probe_targets": list(f.extra_probe_targets),
        },
        "admin_cidrs": list(config.admin_cidrs),  # the gateway's own input policy admits SSH only from these
    }
    if config.routing.bgp:  # only then: a static stack's host_config (and every file rendered from it) is unchanged
        host_config["routing"] = {"mode": "bgp", "customer_asn": config.routing.customer_asn,
                                  "amazon_side_asn": config.aws.amazon_side_asn}
    return host_config


def ssh_host_public_key_line(public_key_openssh: str, label: str) -> str:
    """``ssh-ed25519 AAAA...`` from pulumi_tls (trailing newline, no comment) with the gateway label as comment."""
    parts = public_key_openssh.strip().split()
    return f"{parts[0]} {parts[1]} {label}"
