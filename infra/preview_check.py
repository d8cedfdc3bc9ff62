"""Everything the gateway would refuse, refused at preview: the stack config run through the renderer and the agent.

``infra/config.py`` validates the stack config, but the renderer (``hostconfig/plan.py`` and the templates) and the
agent (``hostconfig/agent/config.py``) have rules of their own, and under ``pulumi up`` they only see the host_config
inside ``apply()``, after the VPN connection and the Linode instance exist. So before any resource is registered the
program builds the host_config it will export, with ``build_host_config`` itself (the same function, so the two cannot
drift), from the stack config and placeholders for what only the clouds know; renders it as delivery does; and parses
the rendered agent.json with the agent's own reader. Any refusal becomes a ``ConfigError`` naming the stack key.

Placeholders are chosen to pass every rule whenever some value the cloud could return would: documentation ranges for
the outside addresses, AWS's /30 layout for the inside addresses, two unreserved link-local /30s when AWS picks them. A
refusal therefore means the real deploy would be refused too.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import logging
import re
import struct
from dataclasses import dataclass
from typing import Any

from hostconfig.contract.connection import Connection
from infra.config import NAMESPACE, STACK_NAME, ConfigError, StackConfig
from infra.outputs import GatewayFacts, TunnelFacts, build_host_config, ssh_host_public_key_line

log = logging.getLogger(__name__)

FROM_CLOUD = "a value the clouds choose (placeholder at preview)"
FROM_PROGRAM = "a value the program sets (not the stack config: a bug, please report it)"


@dataclass(frozen=True)
class KeyRow:
    """One host_config path and where its value comes from. ``[i]`` stands for any list index."""

    host_config: str
    stack_key: str
    example: str
    agent_json: str | None = None  # the agent.json key the renderer writes it to


def _k(key: str) -> str:
    return f"{NAMESPACE}:{key}"


# THE table: host_config path -> stack key (and agent.json key). build_host_config (infra/outputs.py) writes these
# paths; a refusal at any path below a row's is reported under that row's stack key, the rest of the path appended.
STACK_KEYS: tuple[KeyRow, ...] = (
    KeyRow("host_config.stack", STACK_NAME, "dev"),
    KeyRow("host_config.gateway.label", STACK_NAME, "dev (label hybrid-vpn-dev-gw)"),
    KeyRow("host_config.gateway.public_ip", FROM_CLOUD, "203.0.113.10"),
    KeyRow("host_config.gateway.private_ip", _k("linode.subnet_cidr"), "10.8.0.0/24", "local_outside_ip"),
    KeyRow("host_config.gateway.public_interface", FROM_PROGRAM, "eth0", "public_interface"),
    KeyRow("host_config.gateway.vlan_interface", FROM_PROGRAM, "eth1", "vlan_interface"),
    KeyRow("host_config.gateway.vlan_address", _k("linode.gateway_vlan_address"), "172.16.1.1/24",
           "gateway_vlan_address"),
    KeyRow("host_config.gateway.ssh_host_public_key", FROM_PROGRAM, "ssh-ed25519 AAAA... hybrid-vpn-dev-gw"),
    KeyRow("host_config.aws.region", _k("aws.region"), "us-east-1"),
    KeyRow("host_config.aws.vpn_connection_id", FROM_CLOUD, "vpn-0123456789abcdef0"),
    KeyRow("host_config.aws.vgw_id", FROM_CLOUD, "vgw-0123456789abcdef0"),
    KeyRow("host_config.aws.cidrs", _k("aws.cidrs"), "[10.0.0.0/16] (absent: [aws.vpc_cidr])", "aws_cidrs"),
    KeyRow("host_config.linode.region", _k("linode.region"), "us-ord"),
    KeyRow("host_config.linode.vlan_label", _k("linode.vlan_label"), "hybrid-vpn-dev"),
    KeyRow("host_config.linode.vlan_cidrs", _k("linode.vlan_cidrs"), "[172.16.0.0/12]", "vlan_cidrs"),
    KeyRow("host_config.linode.subnet_cidr", _k("linode.subnet_cidr"), "10.8.0.0/24"),
    KeyRow("host_config.crypto", _k("crypto"), "see stacks/Pulumi.dev.yaml"),  # same key names below
    KeyRow("host_config.tunnels[i].name", FROM_PROGRAM, "tunnel1", "tunnels[i].name"),
    KeyRow("host_config.tunnels[i].interface", _k("tunnels.interfaces[i]"), "vti-aws1", "tunnels[i].interface"),
    KeyRow("host_config.tunnels[i].mark", _k("tunnels.marks[i]"), "100", "tunnels[i].mark"),
    KeyRow("host_config.tunnels[i].outside_ip", FROM_CLOUD, "198.51.100.1", "tunnels[i].remote_outside_ip"),
    KeyRow("host_config.tunnels[i].inside_cidr", _k("tunnels.inside_cidrs[i]"), "169.254.10.0/30",
           "tunnels[i].gateway_inside_cidr"),
    KeyRow("host_config.tunnels[i].aws_inside_ip", _k("tunnels.inside_cidrs[i]"), "169.254.10.0/30",
           "tunnels[i].aws_inside_ip"),
    KeyRow("host_config.tunnels[i].gateway_inside_ip", _k("tunnels.inside_cidrs[i]"), "169.254.10.0/30"),
    KeyRow("host_config.tunnels[i].psk", _k("tunnels.psks[i]"), "(a secret) Example_psk.8to64chars"),
    KeyRow("host_config.tunnels", _k("tunnels"), "see stacks/Pulumi.dev.yaml", "tunnels"),
    KeyRow("host_config.tunnel_mtu", _k("tunnels.mtu"), "1419", "mtu"),
    KeyRow("host_config.tcp_mss", _k("tunnels.tcp_mss"), "1379"),
    KeyRow("host_config.failover.primary", _k("failover.primary"), "tunnel1", "primary_tunnel"),
    KeyRow("host_config.failover.probe_interval_ms", _k("failover.probe_interval_ms"), "200", "probe.interval_ms"),
    KeyRow("host_config.failover.probe_timeout_ms", _k("failover.probe_timeout_ms"), "600", "probe.timeout_ms"),
    KeyRow("host_config.failover.down_after", _k("failover.down_after"), "3", "probe.down_after"),
    KeyRow("host_config.failover.up_after", _k("failover.up_after"), "5", "probe.up_after"),
    KeyRow("host_config.failover.failback_hold_seconds", _k("failover.failback_hold_seconds"), "20",
           "probe.failback_hold_seconds"),
    KeyRow("host_config.failover.extra_probe_targets", _k("failover.extra_probe_targets"), "[10.0.4.85]",
           "probe.extra_targets"),
    KeyRow("host_config.failover", _k("failover"), "see stacks/Pulumi.dev.yaml", "probe"),
    KeyRow("host_config.admin_cidrs", _k("admin_cidrs"), "[198.51.100.7/32]"),
    # routing.mode bgp only (a static stack's host_config has no routing object, its agent.json no bgp section)
    KeyRow("host_config.routing.mode", _k("routing.mode"), "bgp"),
    KeyRow("host_config.routing.customer_asn", _k("routing.customer_asn"), "65010", "bgp.customer_asn"),
    KeyRow("host_config.routing.amazon_side_asn", _k("aws.amazon_side_asn"), "64512"),
    KeyRow("host_config.routing", _k("routing"), "{mode: bgp, customer_asn: 65010}", "bgp"),
    KeyRow("host_config", FROM_PROGRAM, "docs/contracts.md section 1", ""),  # anything else: kind, version, ownership
)

# Placeholders for what only the clouds know (documentation ranges, AWS's formats).
PLACEHOLDER_PUBLIC_IP = "203.0.113.10"
# AWS's tunnel endpoints are its public addresses, never in a private AWS CIDR: the first pair no configured AWS CIDR
# holds (the renderer refuses an AWS CIDR that contains an endpoint).
PLACEHOLDER_OUTSIDE_IPS = (("198.51.100.1", "198.51.100.2"), ("203.0.113.1", "203.0.113.2"),
                           ("192.0.2.1", "192.0.2.2"))
PLACEHOLDER_VPN_CONNECTION_ID = "vpn-00000000000000000"
PLACEHOLDER_VGW_ID = "vgw-00000000000000000"
PLACEHOLDER_INSIDE_CIDRS = ("169.254.44.0/30", "169.254.45.0/30")  # not reserved by AWS
PLACEHOLDER_PSKS = ("Preview_placeholder_psk.tunnel1", "Preview_placeholder_psk.tunnel2")  # AWS's PSK rule
_PRIVATE_KEY_PLACEHOLDER = "-----BEGIN OPENSSH PRIVATE KEY-----\n(placeholder)\n-----END OPENSSH PRIVATE KEY-----\n"


def _placeholder_public_key() -> str:
    """An Ed25519 public key that parses (type string + 32 bytes), as pulumi_tls's public_key_openssh prints it."""
    blob = b"".join(struct.pack(">I", len(part)) + part for part in (b"ssh-ed25519", bytes(32)))
    return f"ssh-ed25519 {base64.b64encode(blob).decode()}\n"


def _placeholder_private_ip(config: StackConfig) -> str:
    """Linode gives the VPC NIC an address of the subnet; the lab's emulated cloud and Linode take the second."""
    hosts = list(ipaddress.IPv4Network(config.linode.subnet_cidr).hosts())
    return str(hosts[1] if len(hosts) > 1 else hosts[0])


def _placeholder_outside_ips(config: StackConfig) -> tuple[str, str]:
    aws = [ipaddress.IPv4Network(c) for c in config.aws.cidrs]
    for pair in PLACEHOLDER_OUTSIDE_IPS:
        if not any(ipaddress.IPv4Address(ip) in net for ip in pair for net in aws):
            return pair
    return PLACEHOLDER_OUTSIDE_IPS[0]  # AWS CIDRs hold every documentation range: the refusal is real


def _placeholder_inside_cidrs(config: StackConfig) -> tuple[str, str]:
    """The configured /30s, or two AWS could pick: no stack CIDR may overlap 169.254.0.0/16, so any free pair does."""
    return config.tunnels.inside_cidrs or PLACEHOLDER_INSIDE_CIDRS


def placeholder_host_config(config: StackConfig, *, stack: str, label: str) -> dict[str, Any]:
    """The host_config ``__main__.py`` exports, with placeholders where the clouds' values go."""
    from infra.linode import PUBLIC_INTERFACE, VLAN_INTERFACE

    gateway = GatewayFacts(label=label, public_ip=PLACEHOLDER_PUBLIC_IP, private_ip=_placeholder_private_ip(config),
                           public_interface=PUBLIC_INTERFACE, vlan_interface=VLAN_INTERFACE,
                           ssh_host_public_key=ssh_host_public_key_line(_placeholder_public_key(), label))
    psks = (tuple(p.reveal() for p in config.tunnels.psks) if config.tunnels.psks is not None
            else PLACEHOLDER_PSKS)
    tunnels = []
    for outside, inside, psk in zip(_placeholder_outside_ips(config), _placeholder_inside_cidrs(config), psks,
                                    strict=True):
        hosts = list(ipaddress.IPv4Network(inside).hosts())  # AWS takes the first, the customer gateway the second
        tunnels.append(TunnelFacts(outside_ip=outside, inside_cidr=inside, aws_inside_ip=str(hosts[0]),
                                   gateway_inside_ip=str(hosts[1]), psk=psk))
    return build_host_config(stack=stack, config=config, gateway=gateway, vgw_id=PLACEHOLDER_VGW_ID,
                             connections=(Connection(PLACEHOLDER_VPN_CONNECTION_ID, (tunnels[0], tunnels[1])),))


# ------------------------------------------------------------------------------------------ refusals -> stack keys

def _pattern(path: str) -> re.Pattern[str]:
    return re.compile(re.escape(path).replace(r"\[i\]", r"\[(\d+)\]") + r"(?=$|[.\[])")


_HOST_CONFIG_PATTERNS = [(_pattern(row.host_config), row) for row in STACK_KEYS]
_AGENT_PATTERNS = [(_pattern(row.agent_json), row) for row in STACK_KEYS if row.agent_json]


def stack_key_of(path: str, *, agent_json: bool = False) -> tuple[str, KeyRow]:
    """The stack key a host_config (or agent.json) path comes from, with its indices and the rest of the path."""
    patterns = _AGENT_PATTERNS if agent_json else _HOST_CONFIG_PATTERNS
    for pattern, row in patterns:  # most specific rows first in STACK_KEYS
        match = pattern.match(path)
        if match:
            key = row.stack_key
            for index in match.groups():
                key = key.replace("[i]", f"[{index}]", 1)
            rest = path[match.end():]
            if rest and row.stack_key.startswith(NAMESPACE):
                key += rest
            return key, row
    return FROM_PROGRAM, STACK_KEYS[-1]


_PATH_AT_START = re.compile(r"^([A-Za-z_][A-Za-z0-9_.\[\]]*): (.*)$", re.DOTALL)


def _translate(message: str, reader: str, *, agent_json: bool = False, default_path: str = "host_config") -> str:
    match = _PATH_AT_START.match(message)
    path, rule = (match.group(1), match.group(2)) if match else (default_path, message)
    key, row = stack_key_of(path, agent_json=agent_json)
    where = f"agent.json {path}" if agent_json else path
    if "example" not in rule:
        rule = f"{rule}; example: {row.example}"
    return f"{key}: {rule} (refused by {reader} at {where})"


def preview_problems(config: StackConfig, *, stack: str, label: str) -> list[str]:
    """Every refusal of the renderer, the user data and the agent for this stack config, named by stack key."""
    from hostconfig.agent.config import ConfigError as AgentConfigError
    from hostconfig.agent.config import parse_config
    from hostconfig.cloudinit import UserDataError, render_user_data
    from hostconfig.deliver.program import render_for_delivery
    from hostconfig.gateway_paths import AGENT_CONFIG
    from hostconfig.plan import PlanError
    from hostconfig.render import RenderError

    problems: list[str] = []
    try:
        render_user_data(hostname=label, ssh_host_ed25519_private=_PRIVATE_KEY_PLACEHOLDER,
                         ssh_host_ed25519_public=_placeholder_public_key(), bgp=config.routing.bgp)
    except (UserDataError, RenderError) as exc:
        rule = str(exc).removeprefix("hostname: ")
        problems.append(f"{STACK_NAME}: {rule}; example: dev (refused by the cloud-init user data, hostname "
                        f"{label!r})")
    try:
        host_config = placeholder_host_config(config, stack=stack, label=label)
        files = render_for_delivery(host_config, None)  # what the delivery renders inside apply()
    except PlanError as exc:
        return problems + [_translate(p, "the gateway renderer (hostconfig/plan.py)") for p in exc.problems]
    except RenderError as exc:
        return problems + [_translate(str(exc), "a gateway template (hostconfig/render.py)")]
    agent_json = next(f for f in files if f["path"] == AGENT_CONFIG.path)
    try:
        parse_config(json.loads(base64.b64decode(agent_json["content_b64"])))
    except AgentConfigError as exc:
        problems.append(_translate(str(exc), "the gateway agent (hostconfig/agent/config.py)", agent_json=True))
    return problems


def check_before_any_resource(config: StackConfig, *, stack: str, label: str) -> None:
    """Raise ConfigError when the renderer or the agent would refuse what this stack config makes them."""
    problems = preview_problems(config, stack=stack, label=label)
    if problems:
        raise ConfigError(problems)
    log.info("stack %s: the renderer and the gateway agent accept the host_config of this stack config", stack)
