"""The stack configuration: one typed model, validated before any resource is created.

This is the ONLY module that reads ``pulumi.Config``. Everything but ``load_stack_config`` is pure:
``parse_stack_config`` takes plain dicts (as they appear in ``stacks/Pulumi.<stack>.yaml`` under the ``hybrid-vpn:``
namespace) and either returns a ``StackConfig`` or raises one ``ConfigError`` that lists every problem found, each
naming the key, the rule and a right example. Tests call it without any Pulumi runtime.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import logging
import os
import re
import struct
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from infra.aws_rules import (  # noqa: F401  (re-exported: the config's rules are AWS's)
    AWS_DPD_ACTIONS,
    AWS_ENCRYPTION,
    AWS_INTEGRITY,
    AWS_PHASE1_DH,
    AWS_PHASE2_DH,
    AWS_RESERVED_INSIDE,
    AWS_STARTUP_ACTIONS,
    DPD_TIMEOUT_MIN,
    LINK_LOCAL,
    MAX_ROUTES_TO_AWS,
    MAX_TUNNEL_MTU,
    PHASE1_LIFETIME,
    PHASE2_LIFETIME,
    PSK_PATTERN,
    PSK_RULE,
    REKEY_MARGIN_MIN,
    REPLAY_WINDOW,
    RFC1918,
)
from infra.secret import Secret

log = logging.getLogger(__name__)

NAMESPACE = "hybrid-vpn"
TOP_LEVEL_KEYS = ("aws", "linode", "tunnels", "crypto", "failover", "admin_cidrs", "tags", "delivery")
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
        "rekey_margin_seconds": 270,
        "rekey_fuzz_percent": 100,
        "replay_window": 1024,
        "dpd_timeout_seconds": 30,
        # clear, not restart: with AWS restarting too, both ends re-initiate after a cut and the initiations cross
        # (duplicate IKE_SAs, an orphan CHILD_SA the kernel may send on); see hostconfig/agent/README.md.
        "dpd_timeout_action": "clear",
        "startup_action": "add",
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
}
REQUIRED: dict[str, tuple[str, ...]] = {
    "aws": ("region",),
    "linode": ("region", "vlan_label", "vlan_cidrs", "gateway_vlan_address"),
}

AWS_REGION_PATTERN = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-\d$")
LINODE_REGION_PATTERN = re.compile(r"^[a-z]{2}-[a-z]+(-\d)?$")
VPC_ID_PATTERN = re.compile(r"^vpc-([0-9a-f]{8}|[0-9a-f]{17})$")
RTB_ID_PATTERN = re.compile(r"^rtb-([0-9a-f]{8}|[0-9a-f]{17})$")
SG_ID_PATTERN = re.compile(r"^sg-([0-9a-f]{8}|[0-9a-f]{17})$")
LINODE_TYPE_PATTERN = re.compile(r"^g\d+-[a-z0-9-]+$")
LINODE_IMAGE_PATTERN = re.compile(r"^(linode|private)/[A-Za-z0-9._-]+$")
VLAN_LABEL_PATTERN = re.compile(r"^[A-Za-z0-9-]{1,64}$")
# OpenSSH public key types and how many SSH strings their key data holds after the type name (RFC 4253 6.6, RFC 5656
# 3.1, RFC 8709 4, OpenSSH PROTOCOL.u2f). The Linode API and sshd refuse a line whose data does not parse.
SSH_KEY_FIELDS = {
    "ssh-ed25519": 1,
    "ssh-rsa": 2,
    "ecdsa-sha2-nistp256": 2,
    "ecdsa-sha2-nistp384": 2,
    "ecdsa-sha2-nistp521": 2,
    "sk-ssh-ed25519@openssh.com": 2,
    "sk-ecdsa-sha2-nistp256@openssh.com": 3,
}
SSH_PRIVATE_KEY_EXAMPLE = "pulumi config set --secret --path 'hybrid-vpn:delivery.ssh_private_key' < ~/.ssh/id_ed25519"
SSH_KEY_EXAMPLE = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA... you@laptop (the line of ~/.ssh/id_ed25519.pub)"
IFNAME_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
SSH_USER_PATTERN = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
# 16-bit private ASNs or 32-bit private ASNs, as CreateVpnGateway accepts them.
AMAZON_ASN_RANGES = ((64512, 65534), (4200000000, 4294967294))
CUSTOMER_GATEWAY_ASN = 65000  # unused with static routes, but AWS requires one; must differ from Amazon's
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


class ConfigError(ValueError):
    """Every problem found in the stack configuration, one per line."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__(
            f"{len(problems)} problem(s) in the stack configuration (stacks/Pulumi.<stack>.yaml):\n"
            + "\n".join(f"  - {p}" for p in problems)
        )


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
class PhaseProposal:
    encryption: tuple[str, ...]
    integrity: tuple[str, ...]
    dh_groups: tuple[int, ...]
    lifetime_seconds: int


@dataclass(frozen=True)
class CryptoProfile:
    """ONE profile: it sets the AWS tunnel options and the strongSwan proposals, so the two ends cannot drift."""

    ike_version: int
    phase1: PhaseProposal
    phase2: PhaseProposal
    rekey_margin_seconds: int
    rekey_fuzz_percent: int
    replay_window: int
    dpd_timeout_seconds: int
    dpd_timeout_action: str
    startup_action: str


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
class StackConfig:
    aws: AwsConfig
    linode: LinodeConfig
    tunnels: TunnelsConfig
    crypto: CryptoProfile
    failover: FailoverConfig
    admin_cidrs: tuple[str, ...]
    tags: Mapping[str, str]
    delivery: DeliveryConfig


# ---------------------------------------------------------------------------------------------------------------------
# Reading values with the rule and an example in every message
# ---------------------------------------------------------------------------------------------------------------------
_MISSING = object()


class _Section:
    """Reads one object of the stack config, collecting problems instead of stopping at the first."""

    def __init__(self, problems: list[str], path: str, raw: Any, defaults: Mapping[str, Any],
                 required: tuple[str, ...] = ()):
        self.problems = problems
        self.path = path
        self.defaults = defaults
        self.required = required
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            self.fail("", f"must be an object (a YAML mapping), got {type(raw).__name__}", "{region: ...}")
            raw = {}
        self.raw = raw
        known = set(defaults) | set(required)
        for key in raw:
            if key not in known:
                hint = _closest(str(key), known)
                self.problems.append(
                    f"{self.key(str(key))}: unknown key (typo?); known keys: {', '.join(sorted(known))}"
                    + (f"; did you mean '{hint}'?" if hint else "")
                )

    def key(self, name: str) -> str:
        if not name:
            return self.path
        return f"{self.path}:{name}" if self.path == NAMESPACE else f"{self.path}.{name}"

    def fail(self, name: str, rule: str, example: str) -> None:
        self.problems.append(f"{self.key(name)}: {rule}; example: {example}")

    def get(self, name: str) -> Any:
        if name in self.raw and self.raw[name] is not None:
            return self.raw[name]
        if name in self.defaults:
            return self.defaults[name]
        if name in self.required:
            self.fail(name, "is required", _EXAMPLES.get(f"{self.path}.{name}", "see stacks/Pulumi.dev.yaml"))
        return _MISSING

    def string(self, name: str, pattern: re.Pattern | None, rule: str, example: str) -> str | None:
        value = self.get(name)
        if value is _MISSING or value is None:
            return None
        if not isinstance(value, str):
            self.fail(name, f"must be a string ({rule}), got {type(value).__name__} {value!r}", example)
            return None
        if pattern is not None and not pattern.fullmatch(value):
            self.fail(name, f"{value!r} is not valid: {rule}", example)
            return None
        return value

    def integer(self, name: str, lo: int | None, hi: int | None, rule: str, example: str) -> int | None:
        value = self.get(name)
        if value is _MISSING or value is None:
            return None
        return _check_int(self, name, value, lo, hi, rule, example)

    def boolean(self, name: str, example: str) -> bool | None:
        value = self.get(name)
        if value is _MISSING or value is None:
            return None
        if not isinstance(value, bool):
            self.fail(name, f"must be true or false, got {value!r}", example)
            return None
        return value

    def string_list(self, name: str, check: Callable[[str, str], str | None], example: str,
                    min_len: int = 0, max_len: int | None = None) -> tuple[str, ...] | None:
        """A list of strings; ``check(key, item)`` returns the normalised item or None after reporting."""
        value = self.get(name)
        if value is _MISSING or value is None:
            return None
        if not isinstance(value, list):
            self.fail(name, f"must be a list, got {type(value).__name__} {value!r}", example)
            return None
        if len(value) < min_len or (max_len is not None and len(value) > max_len):
            count = f"exactly {min_len}" if min_len == max_len else (
                f"at least {min_len}" if max_len is None else f"{min_len} to {max_len}")
            self.fail(name, f"must hold {count} item(s), got {len(value)}", example)
            return None
        out: list[str] = []
        ok = True
        for i, item in enumerate(value):
            item_key = f"{name}[{i}]"
            if not isinstance(item, str):
                self.fail(item_key, f"must be a string, got {type(item).__name__} {item!r}", example)
                ok = False
                continue
            checked = check(item_key, item)
            if checked is None:
                ok = False
            else:
                out.append(checked)
        return tuple(out) if ok else None


def _check_int(section: _Section, name: str, value: Any, lo: int | None, hi: int | None, rule: str,
               example: str) -> int | None:
    # bool is an int in Python; a YAML `true` is never a number here.
    if isinstance(value, bool) or not isinstance(value, int):
        section.fail(name, f"must be an integer ({rule}), got {value!r}", example)
        return None
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        section.fail(name, f"{value} is out of range: {rule}", example)
        return None
    return value


def _closest(word: str, candidates: set[str]) -> str | None:
    import difflib

    match = difflib.get_close_matches(word, sorted(candidates), n=1, cutoff=0.6)
    return match[0] if match else None


_EXAMPLES = {
    "hybrid-vpn:aws.region": "us-east-1",
    "hybrid-vpn:linode.region": "us-ord",
    "hybrid-vpn:linode.vlan_label": "hybrid-vpn-dev",
    "hybrid-vpn:linode.vlan_cidrs": "[172.16.0.0/12]",
    "hybrid-vpn:linode.gateway_vlan_address": "172.16.1.1/24",
}


def _network_checker(section: _Section, example: str, *, private: bool = False) -> Callable[[str, str], str | None]:
    def check(key: str, text: str) -> str | None:
        return _parse_network(section, key, text, example, private=private)

    return check


def _parse_network(section: _Section, key: str, text: Any, example: str, *, private: bool = False) -> str | None:
    if not isinstance(text, str):
        section.fail(key, f"must be an IPv4 network in CIDR form, got {text!r}", example)
        return None
    if "/" not in text:
        section.fail(key, f"{text!r} is not an IPv4 network in CIDR form: it needs a prefix length", example)
        return None
    try:
        net = ipaddress.IPv4Network(text, strict=True)
    except ValueError as exc:
        section.fail(key, f"{text!r} is not an IPv4 network in CIDR form with no host bits set ({exc})", example)
        return None
    if private and not any(net.subnet_of(block) for block in RFC1918):
        section.fail(key, f"{text} is not inside a private (RFC 1918) range: 10.0.0.0/8, 172.16.0.0/12, "
                     "192.168.0.0/16", example)
        return None
    return str(net)


def ssh_public_key_problem(line: str) -> str | None:
    """Why ``line`` is not an OpenSSH public key line ``<type> <base64 key data> [comment]``, or None when it is one.

    The key data is parsed, not only pattern-matched: a placeholder such as ``AAAAC3...ReplaceMe`` looks like a key
    but is refused by the Linode API (or, worse, accepted and never matches), and the SSH push fails minutes later.
    """
    fields = line.strip().split(None, 2)
    if len(fields) < 2:
        return "expected '<type> <base64 key data> [comment]'"
    key_type, data = fields[0], fields[1]
    if key_type not in SSH_KEY_FIELDS:
        return f"unknown key type {key_type[:40]!r} (known: {', '.join(SSH_KEY_FIELDS)})"
    try:
        blob = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return "the key data is not valid base64 (a placeholder or a truncated copy?)"
    strings: list[bytes] = []
    offset = 0
    while offset < len(blob):
        if offset + 4 > len(blob):
            return "the key data ends inside a length field (truncated?)"
        (length,) = struct.unpack(">I", blob[offset:offset + 4])
        offset += 4
        if offset + length > len(blob):
            return "the key data is shorter than its own length fields say (truncated?)"
        strings.append(blob[offset:offset + length])
        offset += length
    embedded = strings[0].decode("ascii", "replace") if strings else ""
    if embedded != key_type:
        return f"the line says {key_type!r} but its key data is of type {embedded[:40]!r}"
    if len(strings) - 1 != SSH_KEY_FIELDS[key_type]:
        return f"the key data of a {key_type} key holds {SSH_KEY_FIELDS[key_type]} field(s) after the type, " \
               f"this one {len(strings) - 1}"
    if key_type in ("ssh-ed25519", "sk-ssh-ed25519@openssh.com") and len(strings[1]) != 32:
        return f"an Ed25519 public key is 32 bytes, this one {len(strings[1])}"
    return None


# ---------------------------------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------------------------------
def _parse_aws(problems: list[str], raw: Any) -> dict[str, Any]:
    s = _Section(problems, f"{NAMESPACE}:aws", raw, DEFAULTS["aws"], REQUIRED["aws"])
    out: dict[str, Any] = {}
    out["region"] = s.string("region", AWS_REGION_PATTERN, "an AWS region name", "us-east-1")
    out["vpc_id"] = s.string("vpc_id", VPC_ID_PATTERN, "a VPC id 'vpc-' + 8 or 17 hex digits", "vpc-0a1b2c3d4e5f60718")
    vpc_cidr = s.get("vpc_cidr")
    out["vpc_cidr"] = None
    if vpc_cidr is not None and vpc_cidr is not _MISSING:
        out["vpc_cidr"] = _parse_network(s, "vpc_cidr", vpc_cidr, "10.0.0.0/16")
        if out["vpc_cidr"] and not 16 <= ipaddress.ip_network(out["vpc_cidr"]).prefixlen <= 28:
            s.fail("vpc_cidr", f"{vpc_cidr}: a VPC CIDR block must be between /16 and /28", "10.0.0.0/16")
            out["vpc_cidr"] = None
    has_id, has_cidr = s.raw.get("vpc_id") is not None, s.raw.get("vpc_cidr") is not None
    if has_id == has_cidr:
        s.fail("vpc_id", "set exactly one of vpc_id (use an existing VPC) or vpc_cidr (create a new VPC)"
               + (", not both" if has_id else ""), "vpc_cidr: 10.0.0.0/16")
    if s.raw.get("cidrs") is None and out["vpc_cidr"]:
        out["cidrs"] = (out["vpc_cidr"],)
    elif s.raw.get("cidrs") is None and has_id:
        s.fail("cidrs", "is required with vpc_id (the AWS CIDRs reached through the tunnels)", "[10.0.0.0/16]")
        out["cidrs"] = None
    else:
        out["cidrs"] = s.string_list("cidrs", _network_checker(s, "[10.0.0.0/16]"), "[10.0.0.0/16]", min_len=1)
    rtb = s.get("route_table_ids")
    if rtb == "all":
        out["route_table_ids"] = None
    else:
        def check_rtb(key: str, item: str) -> str | None:
            if not RTB_ID_PATTERN.fullmatch(item):
                s.fail(key, f"{item!r} is not a route table id ('rtb-' + 8 or 17 hex digits)", "rtb-0a1b2c3d4e5f60718")
                return None
            return item

        if isinstance(rtb, str):
            s.fail("route_table_ids", f"{rtb!r}: must be the word all or a list of route table ids",
                   "all   or   [rtb-0a1b2c3d4e5f60718]")
            out["route_table_ids"] = None
        else:
            out["route_table_ids"] = s.string_list("route_table_ids", check_rtb, "[rtb-0a1b2c3d4e5f60718]", min_len=1)
    asn = s.get("amazon_side_asn")
    out["amazon_side_asn"] = None
    if isinstance(asn, bool) or not isinstance(asn, int):
        s.fail("amazon_side_asn", f"must be an integer ASN, got {asn!r}", "64512")
    elif not any(lo <= asn <= hi for lo, hi in AMAZON_ASN_RANGES):
        s.fail("amazon_side_asn", f"{asn} is not a private ASN AWS accepts for a virtual private gateway "
               "(64512-65534 or 4200000000-4294967294)", "64512")
    elif asn == CUSTOMER_GATEWAY_ASN:
        s.fail("amazon_side_asn", f"{asn} is the customer gateway's ASN; the two sides must differ", "64512")
    else:
        out["amazon_side_asn"] = asn
    out["allow_linode_in_security_group_id"] = s.string(
        "allow_linode_in_security_group_id", SG_ID_PATTERN, "a security group id 'sg-' + 8 or 17 hex digits",
        "sg-0a1b2c3d4e5f60718")
    return out


def _parse_linode(problems: list[str], raw: Any) -> dict[str, Any]:
    s = _Section(problems, f"{NAMESPACE}:linode", raw, DEFAULTS["linode"], REQUIRED["linode"])
    out: dict[str, Any] = {}
    out["region"] = s.string("region", LINODE_REGION_PATTERN, "a Linode region id", "us-ord")
    out["type"] = s.string("type", LINODE_TYPE_PATTERN, "a Linode plan id", "g6-standard-1")
    out["image"] = s.string("image", LINODE_IMAGE_PATTERN, "an image id 'linode/<name>' or 'private/<id>'",
                            "linode/debian12")

    def check_key(key: str, item: str) -> str | None:
        problem = ssh_public_key_problem(item)
        if problem:
            s.fail(key, f"is not an OpenSSH public key line: {problem}", SSH_KEY_EXAMPLE)
            return None
        return item.strip()

    out["authorized_keys"] = s.string_list("authorized_keys", check_key, f"[{SSH_KEY_EXAMPLE}]")
    out["subnet_cidr"] = None
    subnet = s.get("subnet_cidr")
    if subnet is not _MISSING:
        out["subnet_cidr"] = _parse_network(s, "subnet_cidr", subnet, "10.8.0.0/24", private=True)
    out["vlan_label"] = s.string("vlan_label", VLAN_LABEL_PATTERN, "1-64 ASCII letters, digits and dashes",
                                 "hybrid-vpn-dev")
    out["vlan_cidrs"] = s.string_list("vlan_cidrs", _network_checker(s, "[172.16.0.0/12]", private=True),
                                      "[172.16.0.0/12]", min_len=1)
    out["gateway_vlan_address"] = None
    gw = s.get("gateway_vlan_address")
    if isinstance(gw, str):
        try:
            iface = ipaddress.IPv4Interface(gw)
        except ValueError:
            s.fail("gateway_vlan_address", f"{gw!r} is not an IPv4 address with prefix length", "172.16.1.1/24")
        else:
            if "/" not in gw:
                s.fail("gateway_vlan_address", f"{gw!r} needs its prefix length (CIDR form)", "172.16.1.1/24")
            elif iface.network.prefixlen < 31 and iface.ip in (iface.network.network_address,
                                                               iface.network.broadcast_address):
                s.fail("gateway_vlan_address", f"{gw} is the network or broadcast address of {iface.network}",
                       "172.16.1.1/24")
            else:
                out["gateway_vlan_address"] = str(iface)
    elif gw is not _MISSING:
        s.fail("gateway_vlan_address", f"must be a string, got {gw!r}", "172.16.1.1/24")
    return out


def _parse_tunnels(problems: list[str], raw: Any) -> dict[str, Any]:
    s = _Section(problems, f"{NAMESPACE}:tunnels", raw, DEFAULTS["tunnels"])
    out: dict[str, Any] = {}

    def check_inside(key: str, item: str) -> str | None:
        example = "169.254.10.0/30"
        net_text = _parse_network(s, key, item, example)
        if net_text is None:
            return None
        net = ipaddress.IPv4Network(net_text)
        if net.prefixlen != 30 or not net.subnet_of(LINK_LOCAL):
            s.fail(key, f"{item} is not a /30 inside 169.254.0.0/16 (AWS tunnel inside CIDR rule)", example)
            return None
        if net in AWS_RESERVED_INSIDE:
            reserved = ", ".join(str(r) for r in AWS_RESERVED_INSIDE)
            s.fail(key, f"{item} is reserved by AWS (reserved: {reserved}); use another /30 in 169.254.0.0/16",
                   example)
            return None
        return net_text

    out["inside_cidrs"] = s.string_list("inside_cidrs", check_inside, "[169.254.10.0/30, 169.254.11.0/30]",
                                        min_len=2, max_len=2)
    if out["inside_cidrs"] and out["inside_cidrs"][0] == out["inside_cidrs"][1]:
        s.fail("inside_cidrs[1]", f"{out['inside_cidrs'][1]} is also tunnel1's; the two tunnels need distinct /30s",
               "[169.254.10.0/30, 169.254.11.0/30]")
        out["inside_cidrs"] = None

    psks = s.get("psks")
    out["psks"] = None
    if psks is not None and psks is not _MISSING:
        example = ("pulumi config set --secret --path 'hybrid-vpn:tunnels.psks[{i}]' Example_psk.8to64chars "
                   "(or remove psks to have them generated)")
        if not isinstance(psks, list) or len(psks) != 2:
            s.fail("psks", "must be a list of exactly two pre-shared keys (tunnel1, tunnel2), or absent to generate "
                   "them", example.format(i=0))
        else:
            ok = True
            for i, psk in enumerate(psks):
                # Never echo the value: the message ends up in logs and CI output.
                if not isinstance(psk, str):
                    s.fail(f"psks[{i}]", f"must be a string ({PSK_RULE})", example.format(i=i))
                    ok = False
                elif not PSK_PATTERN.fullmatch(psk):
                    s.fail(f"psks[{i}]", f"(value hidden, {len(psk)} characters) breaks AWS's pre-shared key rule: "
                           f"{_psk_violation(psk)}; rule: {PSK_RULE}", example.format(i=i))
                    ok = False
            if ok:
                out["psks"] = (Secret(psks[0]), Secret(psks[1]))

    marks = s.get("marks")
    out["marks"] = None
    if not isinstance(marks, list) or len(marks) != 2:
        s.fail("marks", f"must be a list of two integers (VTI key/mark per tunnel), got {marks!r}", "[100, 200]")
    else:
        checked = [_check_int(s, f"marks[{i}]", m, 1, 2**32 - 1, "1..4294967295", "[100, 200]")
                   for i, m in enumerate(marks)]
        if None not in checked:
            if checked[0] == checked[1]:
                s.fail("marks[1]", f"{checked[1]} equals tunnel1's mark; each tunnel needs its own", "[100, 200]")
            else:
                out["marks"] = tuple(checked)

    taken = _interfaces_not_for_tunnels()

    def check_ifname(key: str, item: str) -> str | None:
        if not IFNAME_PATTERN.fullmatch(item):
            s.fail(key, f"{item!r} is not a Linux interface name (1-15 of letters, digits, . _ -)", "vti-aws1")
            return None
        if item in taken:
            s.fail(key, f"{item!r} is {taken[item]}; the agent owns, recreates and re-addresses the tunnel interfaces, "
                   "so a tunnel may not take a name the gateway already uses", "vti-aws1")
            return None
        return item

    out["interfaces"] = s.string_list("interfaces", check_ifname, "[vti-aws1, vti-aws2]", min_len=2, max_len=2)
    if out["interfaces"] and out["interfaces"][0] == out["interfaces"][1]:
        s.fail("interfaces[1]", "both tunnels have the same interface name", "[vti-aws1, vti-aws2]")
        out["interfaces"] = None
    out["mtu"] = s.integer("mtu", 576, MAX_TUNNEL_MTU, f"576..{MAX_TUNNEL_MTU} (AWS maximum tunnel MTU; "
                           "AWS's strongSwan template uses 1419)", "1419")
    out["tcp_mss"] = s.integer("tcp_mss", 536, MAX_TUNNEL_MTU - 40, "536..1406", "1379")
    if out["mtu"] and out["tcp_mss"] and out["tcp_mss"] > out["mtu"] - 40:
        s.fail("tcp_mss", f"{out['tcp_mss']} does not fit the tunnel MTU {out['mtu']} (MSS <= MTU - 40)",
               str(out["mtu"] - 40))
        out["tcp_mss"] = None
    return out


def _interfaces_not_for_tunnels() -> dict[str, str]:
    """Interface names on the gateway that are not the agent's to make, with what each one is."""
    # The NIC names are facts of the Linode side (infra/linode.py); imported here, late, because that module loads
    # pulumi_linode and the rest of this module stays importable without the Pulumi providers.
    from infra.linode import PUBLIC_INTERFACE, VLAN_INTERFACE

    return {
        PUBLIC_INTERFACE: "the gateway's public (VPC, 1:1 NAT) NIC",
        VLAN_INTERFACE: "the gateway's VLAN NIC",
        "lo": "the loopback interface",
        # The ip_vti module creates this fallback device itself when it loads.
        "ip_vti0": "the kernel's own fallback VTI device",
    }


def _psk_violation(psk: str) -> str:
    if len(psk) < 8:
        return "shorter than 8 characters"
    if len(psk) > 64:
        return "longer than 64 characters"
    if psk.startswith("0"):
        return "starts with '0'"
    return "contains a character other than letters, digits, '.' and '_'"


def _parse_phase(s: _Section, name: str, raw: Any, dh_allowed: tuple[int, ...],
                 lifetime: tuple[int, int]) -> PhaseProposal | None:
    p = _Section(s.problems, s.key(name), raw, DEFAULTS["crypto"][name])
    ok = True

    def algo_checker(allowed: tuple[str, ...], example: str) -> Callable[[str, str], str | None]:
        def check(key: str, item: str) -> str | None:
            if item not in allowed:
                p.fail(key, f"{item!r} is not offered by AWS (allowed: {', '.join(allowed)})", example)
                return None
            return item

        return check

    enc = p.string_list("encryption", algo_checker(AWS_ENCRYPTION, "[AES256]"), "[AES256]", min_len=1)
    integ = p.string_list("integrity", algo_checker(AWS_INTEGRITY, "[SHA2-256]"), "[SHA2-256]", min_len=1)
    groups_raw = p.get("dh_groups")
    groups: list[int] = []
    if not isinstance(groups_raw, list) or not groups_raw:
        p.fail("dh_groups", f"must be a non-empty list of DH group numbers, got {groups_raw!r}", "[14]")
        ok = False
    else:
        allowed = ", ".join(str(g) for g in dh_allowed)
        for i, g in enumerate(groups_raw):
            checked = _check_int(p, f"dh_groups[{i}]", g, None, None, f"one of {allowed}", "[14]")
            if checked is None:
                ok = False
            elif checked not in dh_allowed:
                p.fail(f"dh_groups[{i}]", f"group {checked} is not offered by AWS for {name} (allowed: {allowed})",
                       "[14]")
                ok = False
            else:
                groups.append(checked)
    life = p.integer("lifetime_seconds", lifetime[0], lifetime[1],
                     f"{lifetime[0]}..{lifetime[1]} seconds for {name}", str(lifetime[1]))
    if not ok or enc is None or integ is None or life is None:
        return None
    if any(a.endswith("-GCM-16") for a in enc) and not all(a.endswith("-GCM-16") for a in enc):
        p.fail("encryption", "mixes GCM (AEAD) and CBC algorithms in one proposal list; strongSwan needs separate "
               "proposals for them", "[AES256-GCM-16]  or  [AES256, AES128]")
        return None
    return PhaseProposal(enc, integ, tuple(groups), life)


def _parse_crypto(problems: list[str], raw: Any) -> CryptoProfile | None:
    s = _Section(problems, f"{NAMESPACE}:crypto", raw, DEFAULTS["crypto"])
    ike = s.get("ike_version")
    if ike != 2 or isinstance(ike, bool):
        s.fail("ike_version", f"{ike!r}: only IKEv2 is supported (route-based tunnels, PFS on the CHILD_SA, rekey "
               "in place)", "2")
    phase1 = _parse_phase(s, "phase1", s.get("phase1"), AWS_PHASE1_DH, PHASE1_LIFETIME)
    phase2 = _parse_phase(s, "phase2", s.get("phase2"), AWS_PHASE2_DH, PHASE2_LIFETIME)
    if phase1 and phase2 and phase2.lifetime_seconds >= phase1.lifetime_seconds:
        s.fail("phase2.lifetime_seconds", f"{phase2.lifetime_seconds} must be below phase1.lifetime_seconds "
               f"({phase1.lifetime_seconds})", str(min(3600, phase1.lifetime_seconds - 1)))
        phase2 = None
    margin = s.integer("rekey_margin_seconds", REKEY_MARGIN_MIN, None,
                       f">= {REKEY_MARGIN_MIN} and at most half of phase2.lifetime_seconds", "270")
    if margin is not None and phase2 is not None and margin > phase2.lifetime_seconds // 2:
        s.fail("rekey_margin_seconds", f"{margin} is above half of phase2.lifetime_seconds "
               f"({phase2.lifetime_seconds} / 2 = {phase2.lifetime_seconds // 2})", "270")
        margin = None
    fuzz = s.integer("rekey_fuzz_percent", 0, 100, "0..100 percent", "100")
    replay = s.integer("replay_window", REPLAY_WINDOW[0], REPLAY_WINDOW[1], "64..2048 packets", "1024")
    dpd = s.integer("dpd_timeout_seconds", DPD_TIMEOUT_MIN, None, f">= {DPD_TIMEOUT_MIN} seconds", "30")
    action = s.string("dpd_timeout_action", re.compile("^(" + "|".join(AWS_DPD_ACTIONS) + ")$"),
                      f"one of {', '.join(AWS_DPD_ACTIONS)} (AWS names)", "clear")
    startup = s.string("startup_action", re.compile("^(" + "|".join(AWS_STARTUP_ACTIONS) + ")$"),
                       "add (the gateway initiates) or start (AWS initiates)", "add")
    values = (phase1, phase2, margin, fuzz, replay, dpd, action, startup)
    if ike != 2 or any(v is None for v in values):
        return None
    return CryptoProfile(2, phase1, phase2, margin, fuzz, replay, dpd, action, startup)  # type: ignore[arg-type]


def _parse_failover(problems: list[str], raw: Any) -> FailoverConfig | None:
    s = _Section(problems, f"{NAMESPACE}:failover", raw, DEFAULTS["failover"])
    primary = s.string("primary", re.compile("^(tunnel1|tunnel2)$"), "tunnel1 or tunnel2", "tunnel1")
    interval = s.integer("probe_interval_ms", 50, 60000, "50..60000 ms", "200")
    timeout = s.integer("probe_timeout_ms", 50, 60000, "50..60000 ms", "600")
    down = s.integer("down_after", 1, 100, "1..100 lost probes", "3")
    up = s.integer("up_after", 1, 100, "1..100 good probes", "5")
    hold = s.integer("failback_hold_seconds", 0, 3600, "0..3600 seconds", "20")

    def check_target(key: str, item: str) -> str | None:
        try:
            return str(ipaddress.IPv4Address(item))
        except ValueError:
            s.fail(key, f"{item!r} is not an IPv4 address", "10.0.4.85")
            return None

    targets = s.string_list("extra_probe_targets", check_target, "[10.0.4.85]")
    values = (primary, interval, timeout, down, up, hold, targets)
    if any(v is None for v in values):
        return None
    return FailoverConfig(*values)  # type: ignore[arg-type]


def _parse_delivery(problems: list[str], raw: Any) -> DeliveryConfig | None:
    s = _Section(problems, f"{NAMESPACE}:delivery", raw, DEFAULTS["delivery"])
    enabled = s.boolean("enabled", "true")
    user = s.string("ssh_user", SSH_USER_PATTERN, "a Linux user name", "root")
    key = s.get("ssh_private_key")
    secret_key = None
    if key is not None and key is not _MISSING:
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
    timeout = s.integer("timeout_seconds", 10, 3600, "10..3600 seconds", "300")
    if enabled is None or user is None or timeout is None:
        return None
    return DeliveryConfig(enabled, user, secret_key, timeout)


def _parse_tags(problems: list[str], raw: Any) -> dict[str, str] | None:
    key = f"{NAMESPACE}:tags"
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        problems.append(f"{key}: must be an object of string keys and values; example: {{team: network}}")
        return None
    ok = True
    for k, v in raw.items():
        if not isinstance(v, str) or not re.fullmatch(r"[A-Za-z0-9_.:/=+@-]{1,128}", str(k)):
            problems.append(f"{key}.{k}: tag keys and values must be strings (keys 1-128 of letters, digits, "
                            f"_ . : / = + @ -), got {v!r}; example: {{team: network}}")
            ok = False
    return dict(raw) if ok else None


def _parse_admin_cidrs(problems: list[str], raw: Any) -> tuple[str, ...] | None:
    s = _Section(problems, NAMESPACE, {"admin_cidrs": raw}, {"admin_cidrs": []})
    return s.string_list("admin_cidrs", _network_checker(s, "[198.51.100.7/32]"), "[198.51.100.7/32]")


# ---------------------------------------------------------------------------------------------------------------------
# Cross-field rules
# ---------------------------------------------------------------------------------------------------------------------
def _cross_checks(problems: list[str], aws: dict[str, Any], linode: dict[str, Any],
                  admin_cidrs: tuple[str, ...] | None, delivery: DeliveryConfig | None) -> None:
    aws_nets = [("hybrid-vpn:aws.cidrs", c) for c in aws.get("cidrs") or ()]
    if aws.get("vpc_cidr"):
        aws_nets.append(("hybrid-vpn:aws.vpc_cidr", aws["vpc_cidr"]))
    linode_nets = [(f"hybrid-vpn:linode.vlan_cidrs[{i}]", c) for i, c in enumerate(linode.get("vlan_cidrs") or ())]
    if linode.get("subnet_cidr"):
        linode_nets.append(("hybrid-vpn:linode.subnet_cidr", linode["subnet_cidr"]))
    reported: set[tuple[str, str]] = set()
    for lkey, lnet in linode_nets:
        for akey, anet in aws_nets:
            if anet in {a for k, a in aws_nets if k != akey} and akey.endswith("vpc_cidr"):
                continue  # the same network listed in cidrs: report once
            if ipaddress.ip_network(lnet).overlaps(ipaddress.ip_network(anet)) and (lnet, anet) not in reported:
                reported.add((lnet, anet))
                problems.append(f"{lkey}: {lnet} overlaps the AWS network {anet} ({akey}); the two sides must not "
                                "overlap (routing would be ambiguous); example: 172.16.0.0/12 with AWS 10.0.0.0/16")
    # AWS cidrs must sit inside the VPC when we create it.
    if aws.get("vpc_cidr") and aws.get("cidrs"):
        vpc = ipaddress.ip_network(aws["vpc_cidr"])
        for i, c in enumerate(aws["cidrs"]):
            if not ipaddress.ip_network(c).subnet_of(vpc):
                problems.append(f"hybrid-vpn:aws.cidrs[{i}]: {c} is outside the new VPC {vpc} (aws.vpc_cidr); "
                                f"example: [{vpc}]")
    vlan_cidrs = linode.get("vlan_cidrs") or ()
    if len(vlan_cidrs) > MAX_ROUTES_TO_AWS:
        problems.append(f"hybrid-vpn:linode.vlan_cidrs: {len(vlan_cidrs)} CIDRs exceed AWS's limit of "
                        f"{MAX_ROUTES_TO_AWS} routes from a customer gateway to a VGW; summarise them, e.g. "
                        "[172.16.0.0/12]")
    gw = linode.get("gateway_vlan_address")
    if gw and vlan_cidrs:
        ip = ipaddress.IPv4Interface(gw).ip
        if not any(ip in ipaddress.ip_network(c) for c in vlan_cidrs):
            problems.append(f"hybrid-vpn:linode.gateway_vlan_address: {gw} is outside every VLAN CIDR "
                            f"({', '.join(vlan_cidrs)}); example: 172.16.1.1/24 with vlan_cidrs [172.16.0.0/12]")
    if delivery is not None and delivery.enabled and admin_cidrs is not None and not admin_cidrs:
        problems.append("hybrid-vpn:admin_cidrs: is empty but delivery.enabled is true: the Cloud Firewall would "
                        "block the SSH push; list the address you deploy from, e.g. [198.51.100.7/32], or set "
                        "delivery.enabled: false")


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
                        f"[{SSH_KEY_EXAMPLE}]")
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
                       operator_ip: str | None = None) -> StackConfig:
    """Validate the stack config (keys without the ``hybrid-vpn:`` prefix) and build the model.

    ``secret_keys``: the top-level keys (``tunnels``, ``delivery``) that arrived as secrets. ``real_cloud``: the
    program deploys to AWS and Linode (not the lab's emulated cloud), so the rules of ``_real_cloud_checks`` apply.
    ``operator_ip``: the deploying machine's public IPv4 address, when known, checked against ``admin_cidrs``.
    Raises ``ConfigError`` listing every problem; nothing is half-applied because nothing is created before this.
    """
    problems: list[str] = []
    if not isinstance(raw, Mapping):
        raise ConfigError([f"{NAMESPACE}: the stack config must be a mapping of keys"])
    for key in raw:
        if key not in TOP_LEVEL_KEYS:
            hint = _closest(str(key), set(TOP_LEVEL_KEYS))
            problems.append(f"{NAMESPACE}:{key}: unknown key (typo?); known keys: {', '.join(TOP_LEVEL_KEYS)}"
                            + (f"; did you mean '{NAMESPACE}:{hint}'?" if hint else ""))
    for key in ("aws", "linode"):
        if raw.get(key) is None:
            problems.append(f"{NAMESPACE}:{key}: is required; see stacks/Pulumi.dev.yaml for an example")
    aws = _parse_aws(problems, raw.get("aws")) if raw.get("aws") is not None else {}
    linode = _parse_linode(problems, raw.get("linode")) if raw.get("linode") is not None else {}
    tunnels = _parse_tunnels(problems, raw.get("tunnels"))
    crypto = _parse_crypto(problems, raw.get("crypto"))
    failover = _parse_failover(problems, raw.get("failover"))
    admin_cidrs = _parse_admin_cidrs(problems, raw.get("admin_cidrs"))
    tags = _parse_tags(problems, raw.get("tags"))
    delivery = _parse_delivery(problems, raw.get("delivery"))
    _cross_checks(problems, aws, linode, admin_cidrs, delivery)
    _secret_checks(problems, raw, frozenset(secret_keys))
    if real_cloud:
        _real_cloud_checks(problems, linode, admin_cidrs, delivery, operator_ip)
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
    config = parse_stack_config(raw, secret_keys=secret_keys, real_cloud=real_cloud, operator_ip=operator_ip)
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
