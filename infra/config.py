"""The stack configuration: one typed model, validated before any resource is created.

This is the ONLY module that reads ``pulumi.Config``. Everything but ``load_stack_config`` is pure:
``parse_stack_config`` takes plain dicts (as they appear in ``stacks/Pulumi.<stack>.yaml`` under the ``hybrid-vpn:``
namespace) and either returns a ``StackConfig`` or raises one ``ConfigError`` that lists every problem found, each
naming the key, the rule and a right example. Tests call it without any Pulumi runtime.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from hostconfig.contract import rules
from hostconfig.contract.crypto import (  # noqa: F401  (CryptoProfile, PhaseProposal: re-exported)
    CryptoProfile,
    PhaseProposal,
    option_defaults,
    read_crypto,
)
from hostconfig.contract.reader import (
    MISSING,
    NETWORK_RULE,
    ContractError,
    Problem,
    Reader,
    RuleBroken,
    to_aws_cidr,
    to_inside_cidr,
    to_ipv4,
    to_network,
    to_private_network,
    to_ssh_public_key,
    to_vlan_address,
)
from hostconfig.contract.reader import REQUIRED as REQUIRED_KEY
from hostconfig.contract.rules import (  # noqa: F401  (re-exported: the config's rules are AWS's)
    LINK_LOCAL,
    MAX_ROUTES_TO_AWS,
    MAX_TUNNEL_MTU,
    PSK_PATTERN,
    PSK_RULE,
    RFC1918,
    IntLimit,
    NamePattern,
)
from infra.secret import Secret

log = logging.getLogger(__name__)

NAMESPACE = "hybrid-vpn"
TOP_LEVEL_KEYS = ("aws", "linode", "tunnels", "crypto", "failover", "admin_cidrs", "tags", "delivery", "routing")
TUNNEL_NAMES = ("tunnel1", "tunnel2")

# ---------------------------------------------------------------------------------------------------------------------
# Every default lives here, in the shape of the stack config. A key absent from this table is required.
# ---------------------------------------------------------------------------------------------------------------------
DEFAULTS: dict[str, Any] = {
    "aws": {
        "vpc_id": None,
        "vpc_cidr": None,
        "cidrs": None,  # defaults to [vpc_cidr] when a new VPC is created
        "route_table_ids": "all",
        "amazon_side_asn": 64512,
        "allow_linode_in_security_group_id": None,  # off
    },
    "linode": {
        "type": "g6-standard-1",
        "image": "linode/debian12",
        "authorized_keys": [],
        "subnet_cidr": "10.8.0.0/24",
    },
    "tunnels": {
        "inside_cidrs": None,  # AWS picks when absent
        "psks": None,  # generated (pulumi_random) when absent
        "marks": [100, 200],
        "interfaces": ["vti-aws1", "vti-aws2"],
        "mtu": 1419,
        "tcp_mss": 1379,
    },
    "crypto": {
        "ike_version": 2,
        "phase1": {"encryption": ["AES256"], "integrity": ["SHA2-256"], "dh_groups": [14], "lifetime_seconds": 28800},
        "phase2": {"encryption": ["AES256"], "integrity": ["SHA2-256"], "dh_groups": [14], "lifetime_seconds": 3600},
        **option_defaults(),  # the scalar tunnel options: hostconfig/contract/crypto.py TUNNEL_OPTIONS
    },
    "failover": {
        "primary": "tunnel1",
        "probe_interval_ms": 100,
        "probe_timeout_ms": 300,
        "down_after": 3,
        "up_after": 5,
        "failback_hold_seconds": 20,
        "extra_probe_targets": [],
    },
    "admin_cidrs": [],
    "tags": {},
    "delivery": {"enabled": True, "ssh_user": "root", "ssh_private_key": None, "timeout_seconds": 300},
    "routing": {"mode": "static", "customer_asn": rules.DEFAULT_CUSTOMER_ASN},
}
REQUIRED: dict[str, tuple[str, ...]] = {
    "aws": ("region",),
    "linode": ("region", "vlan_label", "vlan_cidrs", "gateway_vlan_address"),
}

# Values only the stack config holds (the renderer and the agent never see them), so their rules live here.
AWS_REGION = NamePattern(re.compile(r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-\d$"), "an AWS region name", "us-east-1")
LINODE_REGION = NamePattern(re.compile(r"^[a-z]{2}-[a-z]+(-\d)?$"), "a Linode region id", "us-ord")
VPC_ID = NamePattern(re.compile(r"^vpc-([0-9a-f]{8}|[0-9a-f]{17})$"), "a VPC id 'vpc-' + 8 or 17 hex digits",
                     "vpc-0a1b2c3d4e5f60718")
RTB_ID = NamePattern(re.compile(r"^rtb-([0-9a-f]{8}|[0-9a-f]{17})$"), "a route table id ('rtb-' + 8 or 17 hex digits)",
                     "rtb-0a1b2c3d4e5f60718")
SG_ID = NamePattern(re.compile(r"^sg-([0-9a-f]{8}|[0-9a-f]{17})$"), "a security group id 'sg-' + 8 or 17 hex digits",
                    "sg-0a1b2c3d4e5f60718")
LINODE_TYPE = NamePattern(re.compile(r"^g\d+-[a-z0-9-]+$"), "a Linode plan id", "g6-standard-1")
LINODE_IMAGE = NamePattern(re.compile(r"^(linode|private)/[A-Za-z0-9._-]+$"),
                           "an image id 'linode/<name>' or 'private/<id>'", "linode/debian12")
SSH_USER = NamePattern(re.compile(r"^[a-z_][a-z0-9_-]{0,31}$"), "a Linux user name", "root")
TAG_KEY = NamePattern(re.compile(r"^[A-Za-z0-9_.:/=+@-]{1,128}$"), "1-128 of letters, digits, _ . : / = + @ -", "team")
DELIVERY_TIMEOUT = IntLimit(10, 3600, "seconds", 300)
SSH_PRIVATE_KEY_EXAMPLE = "pulumi config set --secret --path 'hybrid-vpn:delivery.ssh_private_key' < ~/.ssh/id_ed25519"
# 16-bit private ASNs or 32-bit private ASNs, as CreateVpnGateway accepts them.
# Sources of SSH that no Cloud Firewall on the internet ever sees (IANA IPv4 special-purpose registry): an admin CIDR
# inside one admits nobody, and the push times out at the firewall. The lab's emulated cloud uses 192.0.2.0/24 on
# purpose; only there are these accepted (see ``parse_stack_config(real_cloud=...)``).
NOT_INTERNET_SOURCES = tuple((ipaddress.ip_network(net), what) for net, what in (
    ("0.0.0.0/8", "'this network' (RFC 791)"),
    ("10.0.0.0/8", "a private range (RFC 1918): the firewall sees your NAT's public address"),
    ("100.64.0.0/10", "carrier-grade NAT shared space (RFC 6598): the firewall sees your carrier's public address"),
    ("127.0.0.0/8", "loopback (RFC 1122)"),
    ("169.254.0.0/16", "link-local (RFC 3927)"),
    ("172.16.0.0/12", "a private range (RFC 1918): the firewall sees your NAT's public address"),
    ("192.0.0.0/24", "IETF protocol assignments (RFC 6890)"),
    ("192.0.2.0/24", "a documentation range (RFC 5737): no host has this address"),
    ("192.168.0.0/16", "a private range (RFC 1918): the firewall sees your NAT's public address"),
    ("198.18.0.0/15", "the benchmarking range (RFC 2544)"),
    ("198.51.100.0/24", "a documentation range (RFC 5737): no host has this address"),
    ("203.0.113.0/24", "a documentation range (RFC 5737): no host has this address"),
    ("224.0.0.0/4", "multicast (RFC 5771)"),
    ("240.0.0.0/4", "reserved (RFC 1112)"),
))
# Where the operator's public address can come from without sending a packet: the operator says it. Per machine, not
# per stack, so an environment variable and not a stack key.
OPERATOR_IP_ENV = "HYBRID_VPN_OPERATOR_IP"
ADMIN_CIDR_EXAMPLE = ("[<your public IPv4>/32], the address you deploy from as the internet sees it (what "
                      "https://checkip.amazonaws.com shows)")


# Not a key of the stack file but the stack's own name (`pulumi stack init <name>`): the gateway is named after it.
STACK_NAME = "the stack name (`pulumi stack init <name>`; the gateway label is hybrid-vpn-<stack>-gw)"
STACK_NAME_EXAMPLE = "dev (gateway label hybrid-vpn-dev-gw)"


class ConfigError(ContractError):
    """Every problem found in the stack configuration, one per line, each naming its ``hybrid-vpn:`` key."""

    subject = "the stack configuration (stacks/Pulumi.<stack>.yaml)"


# ---------------------------------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AwsConfig:
    region: str
    vpc_id: str | None
    vpc_cidr: str | None
    cidrs: tuple[str, ...]
    route_table_ids: tuple[str, ...] | None  # None = every route table of the VPC
    amazon_side_asn: int
    allow_linode_in_security_group_id: str | None


@dataclass(frozen=True)
class LinodeConfig:
    region: str
    type: str
    image: str
    authorized_keys: tuple[str, ...]
    subnet_cidr: str
    vlan_label: str
    vlan_cidrs: tuple[str, ...]
    gateway_vlan_address: str  # CIDR form, e.g. 172.16.1.1/24


@dataclass(frozen=True)
class TunnelsConfig:
    inside_cidrs: tuple[str, str] | None
    psks: tuple[Secret, Secret] | None
    marks: tuple[int, int]
    interfaces: tuple[str, str]
    mtu: int
    tcp_mss: int


@dataclass(frozen=True)
class FailoverConfig:
    primary: str
    probe_interval_ms: int
    probe_timeout_ms: int
    down_after: int
    up_after: int
    failback_hold_seconds: int
    extra_probe_targets: tuple[str, ...]


@dataclass(frozen=True)
class DeliveryConfig:
    enabled: bool
    ssh_user: str
    ssh_private_key: Secret | None  # None: use the ssh-agent
    timeout_seconds: int


@dataclass(frozen=True)
class RoutingConfig:
    """How AWS learns the VLAN CIDRs: static VPN routes, or BGP from FRR on the gateway (issue 16)."""

    mode: str = "static"
    customer_asn: int = rules.DEFAULT_CUSTOMER_ASN  # the customer gateway's ASN (AWS requires one even when static)

    @property
    def bgp(self) -> bool:
        return self.mode == "bgp"


@dataclass(frozen=True)
class StackConfig:
    aws: AwsConfig
    linode: LinodeConfig
    tunnels: TunnelsConfig
    crypto: CryptoProfile
    failover: FailoverConfig
    admin_cidrs: tuple[str, ...]
    tags: Mapping[str, str]
    delivery: DeliveryConfig
    routing: RoutingConfig = RoutingConfig()


# ---------------------------------------------------------------------------------------------------------------------
# Reading: the contract's collecting reader (hostconfig/contract/reader.py) and its rules (rules.py)
# ---------------------------------------------------------------------------------------------------------------------
def _fields(section: str) -> dict[str, Any]:
    return {**DEFAULTS[section], **dict.fromkeys(REQUIRED.get(section, ()), REQUIRED_KEY)}


def _text(convert: Callable[[Any], Any]) -> Callable[[Any], str]:
    """The stack model keeps networks and addresses as text."""
    return lambda value: str(convert(value))


_network = _text(to_network)
_private_network = _text(to_private_network)
_aws_cidr = _text(to_aws_cidr)
_vlan_address = _text(to_vlan_address)


def _pattern(pattern: NamePattern) -> Callable[[Any], str]:
    def convert(item: Any) -> str:
        if problem := pattern.problem(item):
            raise RuleBroken(problem)
        return item

    return convert


# ---------------------------------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------------------------------
def _parse_aws(root: Reader) -> dict[str, Any]:
    s = root.sub("aws", _fields("aws"), example="{region: us-east-1, vpc_cidr: 10.0.0.0/16}")
    out: dict[str, Any] = {}
    out["region"] = s.string("region", AWS_REGION)
    out["vpc_id"] = s.string("vpc_id", VPC_ID)
    out["vpc_cidr"] = s.check("vpc_cidr", _network, NETWORK_RULE, "10.0.0.0/16")
    if out["vpc_cidr"] and not 16 <= ipaddress.ip_network(out["vpc_cidr"]).prefixlen <= 28:
        s.fail("vpc_cidr", f"{out['vpc_cidr']}: a VPC CIDR block must be between /16 and /28", "10.0.0.0/16")
        out["vpc_cidr"] = None
    has_id, has_cidr = s.has("vpc_id"), s.has("vpc_cidr")
    if has_id == has_cidr and not s.absent:
        s.fail("vpc_id", "set exactly one of vpc_id (use an existing VPC) or vpc_cidr (create a new VPC)"
               + (", not both" if has_id else ""), "vpc_cidr: 10.0.0.0/16")
    if not s.has("cidrs") and out["vpc_cidr"]:
        out["cidrs"] = (out["vpc_cidr"],)
        if problem := rules.aws_cidr_problem(ipaddress.IPv4Network(out["vpc_cidr"])):
            s.fail("vpc_cidr", problem, "10.0.0.0/16")
            out["cidrs"] = None
    elif not s.has("cidrs") and has_id:
        s.fail("cidrs", "is required with vpc_id (the AWS CIDRs reached through the tunnels)", "[10.0.0.0/16]")
        out["cidrs"] = None
    else:
        out["cidrs"] = s.list_of("cidrs", _aws_cidr, NETWORK_RULE, "[10.0.0.0/16]", 1, rules.MAX_AWS_CIDRS,
                                 why=rules.MAX_AWS_CIDRS_WHY)
    rtb = s.get("route_table_ids")
    if rtb == "all":
        out["route_table_ids"] = None
    elif isinstance(rtb, str):
        s.fail("route_table_ids", f"{rtb!r}: must be the word all or a list of route table ids",
               "all   or   [rtb-0a1b2c3d4e5f60718]")
        out["route_table_ids"] = None
    else:
        out["route_table_ids"] = s.list_of("route_table_ids", _pattern(RTB_ID), RTB_ID.rule,
                                           "[rtb-0a1b2c3d4e5f60718]", 1)
    asn = s.get("amazon_side_asn")
    out["amazon_side_asn"] = None
    if s.absent:
        pass
    elif isinstance(asn, bool) or not isinstance(asn, int):
        s.fail("amazon_side_asn", f"must be an integer ASN, got {asn!r}", "64512")
    elif problem := rules.amazon_side_asn_problem(asn):
        s.fail("amazon_side_asn", problem, "64512")
    else:
        out["amazon_side_asn"] = asn
    out["allow_linode_in_security_group_id"] = s.string("allow_linode_in_security_group_id", SG_ID)
    return out


def _parse_linode(root: Reader) -> dict[str, Any]:
    s = root.sub("linode", _fields("linode"), example="{region: us-ord, vlan_label: ..., vlan_cidrs: [...]}")
    out: dict[str, Any] = {}
    out["region"] = s.string("region", LINODE_REGION)
    out["type"] = s.string("type", LINODE_TYPE)
    out["image"] = s.string("image", LINODE_IMAGE)

    out["authorized_keys"] = s.list_of("authorized_keys", to_ssh_public_key, "an OpenSSH public key line",
                                       f"[{rules.SSH_KEY_EXAMPLE}]")
    out["subnet_cidr"] = s.check("subnet_cidr", _private_network, NETWORK_RULE, "10.8.0.0/24")
    out["vlan_label"] = s.string("vlan_label", rules.VLAN_LABEL)
    out["vlan_cidrs"] = s.list_of("vlan_cidrs", _private_network, NETWORK_RULE, "[172.16.0.0/12]", 1,
                                  rules.MAX_ROUTES_TO_AWS, why=rules.MAX_ROUTES_TO_AWS_WHY)
    out["gateway_vlan_address"] = s.check("gateway_vlan_address", _vlan_address, "an IPv4 address with prefix length",
                                          "172.16.1.1/24")
    return out


def _parse_tunnels(root: Reader) -> dict[str, Any]:
    s = root.sub("tunnels", _fields("tunnels"), example="{mtu: 1419}")
    out: dict[str, Any] = {}

    example = "[169.254.10.0/30, 169.254.11.0/30]"
    out["inside_cidrs"] = s.list_of("inside_cidrs", _text(to_inside_cidr), NETWORK_RULE, example, 2, 2, distinct=False)
    if out["inside_cidrs"] and (found := rules.distinct_problem("inside CIDR", list(out["inside_cidrs"]))):
        s.fail(f"inside_cidrs[{found[0]}]", found[1], example)
        out["inside_cidrs"] = None

    psks = s.get("psks")
    out["psks"] = None
    if psks is not None and psks is not MISSING:
        example = ("pulumi config set --secret --path 'hybrid-vpn:tunnels.psks[{i}]' Example_psk.8to64chars "
                   "(or remove psks to have them generated)")
        if not isinstance(psks, list) or len(psks) != 2:
            s.fail("psks", "must be a list of exactly two pre-shared keys (tunnel1, tunnel2), or absent to generate "
                   "them", example.format(i=0))
        else:
            broken = [(i, rules.psk_problem(psk)) for i, psk in enumerate(psks)]
            for i, problem in broken:
                if problem:
                    s.fail(f"psks[{i}]", problem, example.format(i=i))
            if not any(problem for _, problem in broken):
                out["psks"] = (Secret(psks[0]), Secret(psks[1]))

    out["marks"] = s.list_of("marks", s.limited(rules.MARK), "a VTI key/mark", "[100, 200]", 2, 2, distinct=False)
    if out["marks"] and (found := rules.distinct_problem("mark", list(out["marks"]))):
        s.fail(f"marks[{found[0]}]", found[1], "[100, 200]")
        out["marks"] = None

    nics = _gateway_nics()

    def interface(item: Any) -> str:
        if problem := rules.INTERFACE_NAME.problem(item) or rules.tunnel_interface_problem(item, nics):
            raise RuleBroken(problem, "vti-aws1")
        return item

    example = "[vti-aws1, vti-aws2]"
    out["interfaces"] = s.list_of("interfaces", interface, "an interface name", example, 2, 2, distinct=False)
    if out["interfaces"] and (found := rules.distinct_problem("interface", list(out["interfaces"]))):
        s.fail(f"interfaces[{found[0]}]", found[1], example)
        out["interfaces"] = None
    out["mtu"] = s.integer("mtu", rules.TUNNEL_MTU)
    out["tcp_mss"] = s.integer("tcp_mss", rules.TCP_MSS)
    if out["mtu"] and out["tcp_mss"] and (problem := rules.mss_problem(out["tcp_mss"], out["mtu"])):
        s.fail("tcp_mss", problem, str(out["mtu"] - 40))
        out["tcp_mss"] = None
    return out


def _gateway_nics() -> dict[str, str]:
    """The gateway's NIC names (a fact of the Linode side, infra/linode.py) with what each one is."""
    # Imported here, late, because that module loads pulumi_linode and the rest of this module stays importable
    # without the Pulumi providers.
    from infra.linode import PUBLIC_INTERFACE, VLAN_INTERFACE

    return {PUBLIC_INTERFACE: "the gateway's public (VPC, 1:1 NAT) NIC", VLAN_INTERFACE: "the gateway's VLAN NIC"}


def _parse_failover(root: Reader) -> FailoverConfig | None:
    s = root.sub("failover", _fields("failover"), example="{primary: tunnel1}")
    primary = s.choice("primary", TUNNEL_NAMES, "the tunnel that carries the traffic while both are up", "tunnel1")
    interval = s.integer("probe_interval_ms", rules.PROBE_INTERVAL_MS)
    timeout = s.integer("probe_timeout_ms", rules.PROBE_TIMEOUT_MS)
    down = s.integer("down_after", rules.DOWN_AFTER)
    up = s.integer("up_after", rules.UP_AFTER)
    hold = s.integer("failback_hold_seconds", rules.FAILBACK_HOLD_SECONDS)
    targets = s.list_of("extra_probe_targets", lambda item: str(to_ipv4(item)), "an IPv4 address", "[10.0.4.85]", 0,
                        rules.MAX_EXTRA_PROBE_TARGETS)
    values = (primary, interval, timeout, down, up, hold, targets)
    if any(v is None for v in values):
        return None
    return FailoverConfig(*values)  # type: ignore[arg-type]


def _parse_delivery(root: Reader) -> DeliveryConfig | None:
    s = root.sub("delivery", _fields("delivery"), example="{enabled: true}")
    enabled = s.boolean("enabled", "true")
    user = s.string("ssh_user", SSH_USER)
    key = s.get("ssh_private_key")
    secret_key = None
    if key is not None and key is not MISSING:
        # The push's own loader: a key it cannot read fails here, at preview, not after the VPN connection exists.
        from hostconfig.deliver.push import load_private_key

        try:
            if not isinstance(key, str):
                raise ValueError("not a string")
            load_private_key(key)
        except ValueError:
            s.fail("ssh_private_key", "(value hidden) is not an unencrypted OpenSSH or PEM private key (ed25519, "
                   "ecdsa or rsa)", SSH_PRIVATE_KEY_EXAMPLE)
        else:
            secret_key = Secret(key)
    timeout = s.integer("timeout_seconds", DELIVERY_TIMEOUT)
    if enabled is None or user is None or timeout is None:
        return None
    return DeliveryConfig(enabled, user, secret_key, timeout)


def _parse_tags(root: Reader) -> dict[str, str] | None:
    raw = root.get("tags")
    if not isinstance(raw, Mapping):
        root.fail("tags", "must be an object of string keys and values", "{team: network}")
        return None
    ok = True
    for k, v in raw.items():
        if not isinstance(v, str) or not TAG_KEY.pattern.fullmatch(str(k)):
            root.fail(f"tags.{k}", f"tag keys and values must be strings (keys {TAG_KEY.rule}), got {v!r}",
                      "{team: network}")
            ok = False
    return dict(raw) if ok else None


# ---------------------------------------------------------------------------------------------------------------------
# Routing (issue 16: BGP mode). Its own section: the rules are rules.py's "BGP routing" section.
# ---------------------------------------------------------------------------------------------------------------------
ROUTING_EXAMPLE = "{mode: bgp, customer_asn: 65000}"


def _parse_routing(root: Reader, aws: Mapping[str, Any], linode: Mapping[str, Any]) -> RoutingConfig | None:
    s = root.sub("routing", _fields("routing"), example=ROUTING_EXAMPLE)
    mode = s.choice("mode", rules.ROUTING_MODES, "static: static VPN routes; bgp: FRR on the gateway speaks BGP "
                    "with AWS", "bgp")
    asn = s.get("customer_asn")
    if asn is not MISSING and (problem := rules.customer_asn_problem(asn, aws.get("amazon_side_asn"))):
        s.fail("customer_asn", problem, "65010")
        asn = None
    if mode == "bgp" and linode.get("vlan_cidrs"):
        nets = [ipaddress.IPv4Network(c) for c in linode["vlan_cidrs"]]
        for i, net in enumerate(nets):
            if problem := rules.bgp_vlan_cidr_problem(net):
                root.fail(f"linode.vlan_cidrs[{i}]", f"{problem} ({root.key('routing.mode')})", "[172.16.0.0/12]")
        if problem := rules.bgp_route_limit_problem(nets):
            root.fail("linode.vlan_cidrs", f"{problem} ({root.key('routing.mode')})",
                      "[172.16.0.0/12] (summarise), or routing.mode: static")
    if mode is None or asn is None or asn is MISSING:
        return None
    return RoutingConfig(mode, asn)


# ---------------------------------------------------------------------------------------------------------------------
# Cross-field rules
# ---------------------------------------------------------------------------------------------------------------------
def _cross_checks(root: Reader, aws: dict[str, Any], linode: dict[str, Any], admin_cidrs: tuple[str, ...] | None,
                  delivery: DeliveryConfig | None) -> None:
    aws_nets = [("aws.cidrs", c) for c in aws.get("cidrs") or ()]
    if aws.get("vpc_cidr") and aws["vpc_cidr"] not in (aws.get("cidrs") or ()):
        aws_nets.append(("aws.vpc_cidr", aws["vpc_cidr"]))
    linode_nets = [(f"linode.vlan_cidrs[{i}]", c) for i, c in enumerate(linode.get("vlan_cidrs") or ())]
    if linode.get("subnet_cidr"):
        linode_nets.append(("linode.subnet_cidr", linode["subnet_cidr"]))
    for lkey, lnet in linode_nets:
        for akey, anet in aws_nets:
            if problem := rules.sides_overlap_problem(ipaddress.IPv4Network(lnet), ipaddress.IPv4Network(anet)):
                root.fail(lkey, f"{problem} ({root.key(akey)})", "172.16.0.0/12 with AWS 10.0.0.0/16")
    # AWS cidrs must sit inside the VPC when we create it.
    if aws.get("vpc_cidr") and aws.get("cidrs"):
        vpc = ipaddress.ip_network(aws["vpc_cidr"])
        for i, c in enumerate(aws["cidrs"]):
            if not ipaddress.ip_network(c).subnet_of(vpc):
                root.fail(f"aws.cidrs[{i}]", f"{c} is outside the new VPC {vpc} (aws.vpc_cidr)", f"[{vpc}]")
    gw, vlan_cidrs = linode.get("gateway_vlan_address"), linode.get("vlan_cidrs")
    if gw and vlan_cidrs and (problem := rules.vlan_address_outside_problem(
            ipaddress.IPv4Interface(gw), [ipaddress.IPv4Network(c) for c in vlan_cidrs])):
        root.fail("linode.gateway_vlan_address", problem, "172.16.1.1/24 with vlan_cidrs [172.16.0.0/12]")
    if delivery is not None and delivery.enabled and admin_cidrs is not None and not admin_cidrs:
        root.fail("admin_cidrs", "is empty but delivery.enabled is true: the Cloud Firewall would block the SSH push",
                  "[198.51.100.7/32] (the address you deploy from), or set delivery.enabled: false")


def _secret_checks(problems: list[str], raw: Mapping[str, Any], secret_keys: frozenset[str]) -> None:
    """PSKs and private keys must arrive as secrets (stored encrypted in the stack file), never in clear.

    Pulumi marks a top-level key secret when any value inside it was set with ``--secret`` (the engine's
    ``config.Map.SecureKeys``), so the check is per top-level key: ``hybrid-vpn:tunnels``, ``hybrid-vpn:delivery``.
    """
    tunnels, delivery = raw.get("tunnels"), raw.get("delivery")
    if isinstance(tunnels, Mapping) and tunnels.get("psks") is not None and "tunnels" not in secret_keys:
        problems.append(f"{NAMESPACE}:tunnels.psks: (values hidden) are in clear in the stack file: pre-shared keys "
                        "must be set as secrets, stored encrypted; example: pulumi config set --secret --path "
                        "'hybrid-vpn:tunnels.psks[0]' '<8-64 letters/digits/./_>' (and psks[1]), or remove psks to "
                        "have them generated")
    if isinstance(delivery, Mapping) and delivery.get("ssh_private_key") is not None and "delivery" not in secret_keys:
        problems.append(f"{NAMESPACE}:delivery.ssh_private_key: (value hidden) is in clear in the stack file: a "
                        f"private key must be set as a secret, stored encrypted; example: {SSH_PRIVATE_KEY_EXAMPLE} "
                        "(or remove it to use your ssh-agent)")


def _not_internet_source(net: ipaddress.IPv4Network) -> tuple[ipaddress.IPv4Network, str] | None:
    for block, what in NOT_INTERNET_SOURCES:
        if net.subnet_of(block):
            return block, what
    return None


def _real_cloud_checks(problems: list[str], linode: Mapping[str, Any], admin_cidrs: tuple[str, ...] | None,
                       delivery: DeliveryConfig | None, operator_ip: str | None) -> None:
    """What must hold for the SSH push to reach a real gateway (the emulated cloud of the lab is exempt)."""
    for i, cidr in enumerate(admin_cidrs or ()):
        found = _not_internet_source(ipaddress.IPv4Network(cidr))
        if found:
            problems.append(f"{NAMESPACE}:admin_cidrs[{i}]: {cidr} is inside {found[0]}, {found[1]}; SSH to the "
                            "gateway (and the push) would be refused by its Cloud Firewall; example: "
                            f"{ADMIN_CIDR_EXAMPLE}")
    if delivery is None or not delivery.enabled:
        return
    keys = linode.get("authorized_keys")
    if keys is not None and not keys:
        problems.append(f"{NAMESPACE}:linode.authorized_keys: is empty but delivery.enabled is true: the push logs in "
                        f"as {delivery.ssh_user} with your SSH key, and the gateway would accept none; example: "
                        f"[{rules.SSH_KEY_EXAMPLE}]")
    elif keys and delivery.ssh_private_key is not None:
        from hostconfig.deliver.push import fingerprint, load_private_key

        private = load_private_key(delivery.ssh_private_key.reveal())
        blobs = {line.split()[1] for line in keys}
        if private.get_base64() not in blobs:
            problems.append(f"{NAMESPACE}:delivery.ssh_private_key: (value hidden) its public key "
                            f"{fingerprint(private)} is not in linode.authorized_keys, so the push could not log in; "
                            "example: add the line `ssh-keygen -y -f ~/.ssh/id_ed25519` prints to "
                            "linode.authorized_keys")
    if operator_ip is not None and admin_cidrs:
        try:
            address = ipaddress.IPv4Address(operator_ip.strip())
        except ValueError:
            problems.append(f"{OPERATOR_IP_ENV} (environment): {operator_ip.strip()[:40]!r} is not an IPv4 address; "
                            "example: the address https://checkip.amazonaws.com shows, or unset it to skip the check")
            return
        if not any(address in ipaddress.IPv4Network(c) for c in admin_cidrs):
            problems.append(f"{NAMESPACE}:admin_cidrs: does not hold {address}, your address ({OPERATOR_IP_ENV}): the "
                            f"Cloud Firewall would refuse the SSH push from this machine; example: [{address}/32]")


# ---------------------------------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------------------------------
def parse_stack_config(raw: Mapping[str, Any], *, secret_keys: Collection[str] = (), real_cloud: bool = False,
                       operator_ip: str | None = None, stack: str | None = None) -> StackConfig:
    """Validate the stack config (keys without the ``hybrid-vpn:`` prefix) and build the model.

    ``secret_keys``: the top-level keys (``tunnels``, ``delivery``) that arrived as secrets. ``real_cloud``: the
    program deploys to AWS and Linode (not the lab's emulated cloud), so the rules of ``_real_cloud_checks`` apply.
    ``operator_ip``: the deploying machine's public IPv4 address, when known, checked against ``admin_cidrs``.
    ``stack``: the stack's name, when known (the gateway's host name is made of it).
    Raises ``ConfigError`` listing every problem; nothing is half-applied because nothing is created before this.
    """
    problems: list[Problem | str] = []
    if stack is not None and (problem := rules.stack_name_problem(stack)):
        problems.append(Problem(STACK_NAME, problem, STACK_NAME_EXAMPLE))
    if not isinstance(raw, Mapping):
        raise ConfigError([*problems, f"{NAMESPACE}: the stack config must be a mapping of keys"])
    root = Reader(problems, f"{NAMESPACE}:", raw, {**{key: DEFAULTS.get(key, {}) for key in TOP_LEVEL_KEYS},
                                                   **dict.fromkeys(REQUIRED, REQUIRED_KEY)},
                  null_is_default=True)
    for key in REQUIRED:  # reported once here; their keys are then not reported one by one
        root.get(key, "see stacks/Pulumi.dev.yaml")
    aws = _parse_aws(root) if root.has("aws") else {}
    linode = _parse_linode(root) if root.has("linode") else {}
    tunnels = _parse_tunnels(root)
    crypto = read_crypto(root, "crypto", DEFAULTS["crypto"])
    failover = _parse_failover(root)
    admin_cidrs = root.list_of("admin_cidrs", _network, NETWORK_RULE, "[198.51.100.7/32]")
    tags = _parse_tags(root)
    delivery = _parse_delivery(root)
    routing = _parse_routing(root, aws, linode)
    _cross_checks(root, aws, linode, admin_cidrs, delivery)
    _secret_checks(problems, raw, frozenset(secret_keys))  # type: ignore[arg-type]
    if real_cloud:
        _real_cloud_checks(problems, linode, admin_cidrs, delivery, operator_ip)  # type: ignore[arg-type]
    if problems:
        raise ConfigError(problems)
    return StackConfig(
        aws=AwsConfig(**aws),
        linode=LinodeConfig(**linode),
        tunnels=TunnelsConfig(**tunnels),
        crypto=crypto,  # type: ignore[arg-type]
        failover=failover,  # type: ignore[arg-type]
        admin_cidrs=admin_cidrs,  # type: ignore[arg-type]
        tags=tags,  # type: ignore[arg-type]
        delivery=delivery,  # type: ignore[arg-type]
        routing=routing,  # type: ignore[arg-type]
    )


def load_stack_config() -> StackConfig:
    """Read the ``hybrid-vpn:*`` keys of the running stack and validate them (the only pulumi.Config reader)."""
    import pulumi

    cfg = pulumi.Config(NAMESPACE)
    raw: dict[str, Any] = {}
    for key in TOP_LEVEL_KEYS:
        # get_object also returns values set with --secret (decrypted); the model wraps the secret ones (psks,
        # ssh_private_key) in Secret and the program turns them into pulumi secrets before any use.
        value = cfg.get_object(key)
        if value is not None:
            raw[key] = value
    for unknown in _unknown_namespace_keys():
        raw[unknown] = None
    from pulumi.runtime import config as runtime_config

    secret_keys = [key for key in TOP_LEVEL_KEYS if runtime_config.is_config_secret(f"{NAMESPACE}:{key}")]
    real_cloud = not _cloud_is_emulated()
    operator_ip = os.environ.get(OPERATOR_IP_ENV) or None
    config = parse_stack_config(raw, secret_keys=secret_keys, real_cloud=real_cloud, operator_ip=operator_ip,
                                stack=pulumi.get_stack())
    if real_cloud and config.delivery.enabled and operator_ip is None:
        pulumi.log.warn(f"{OPERATOR_IP_ENV} is not set, so whether hybrid-vpn:admin_cidrs admits this machine is not "
                        "checked before the gateway is created; the SSH push fails after ~10 minutes if it does not. "
                        f"Check it now: export {OPERATOR_IP_ENV}=<the address https://checkip.amazonaws.com shows>")
    log.info("stack config valid: aws %s, linode %s", config.aws.region, config.linode.region)
    return config


def _cloud_is_emulated() -> bool:
    """True under the SDK's mocks (the lab, the tests): the only place documentation addresses can be reached."""
    from pulumi.runtime import mocks, settings

    return isinstance(settings.get_monitor(), mocks.MockMonitor)


def _unknown_namespace_keys() -> list[str]:
    """Keys under ``hybrid-vpn:`` that the model does not know (typos at the top level)."""
    from pulumi.runtime import config as runtime_config

    keys = set(runtime_config.CONFIG.get()) | set(runtime_config.get_config_env())
    prefix = f"{NAMESPACE}:"
    return [k[len(prefix):] for k in keys if k.startswith(prefix) and k[len(prefix):] not in TOP_LEVEL_KEYS]


def load_namespace(namespace: str) -> dict[str, Any]:
    """Every ``<namespace>:<key>`` of the running stack (e.g. ``aws:profile``), JSON values decoded, as set.

    For settings the program passes through to an explicit provider (infra/aws.py ``aws_provider_args``), which reads
    no stack config by itself.
    """
    import json

    import pulumi
    from pulumi.runtime import config as runtime_config

    cfg = pulumi.Config(namespace)
    prefix = f"{namespace}:"
    out: dict[str, Any] = {}
    for full in sorted(set(runtime_config.CONFIG.get()) | set(runtime_config.get_config_env())):
        if full.startswith(prefix):
            key = full[len(prefix):]
            text = cfg.get(key)
            try:
                out[key] = json.loads(text) if text is not None else None
            except ValueError:  # a plain string such as a profile name is not JSON
                out[key] = text
    return out
