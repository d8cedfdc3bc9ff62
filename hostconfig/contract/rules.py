"""Every limit and rule the stack config, host_config and agent.json share, each written once beside its source.

AWS's rules cite /work/shared/aws-vpn-facts.md ("AWS facts"), Linode's cite linode-facts.md ("Linode facts"); the
rest are the gateway's own (what the agent and charon on the gateway can really do). The readers (infra/config.py,
hostconfig/plan.py, hostconfig/agent/config.py) take their verdicts from here, so a value accepted by
``pulumi preview`` is accepted by the renderer and by the agent.

A check returns ``None`` when the value is right, else the rule it breaks as text for a message (the reader adds the
key and an example). Pure, standard library only: the agent's zipapp ships this module.
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, ip_network
from typing import Any


@dataclass(frozen=True)
class IntLimit:
    """An integer range (``high`` None: no maximum), with its unit, why, and a right example."""

    low: int
    high: int | None
    unit: str
    example: int
    why: str = ""

    @property
    def rule(self) -> str:
        span = f"{self.low}..{self.high}" if self.high is not None else f">= {self.low}"
        return f"{span} {self.unit}".rstrip() + (f" ({self.why})" if self.why else "")

    def problem(self, value: Any) -> str | None:
        # bool is an int in Python; a YAML/JSON `true` is never a number here.
        if isinstance(value, bool) or not isinstance(value, int):
            return f"must be an integer {self.rule}, got {value!r}"
        if value < self.low or (self.high is not None and value > self.high):
            return f"{value} is out of range: {self.rule}"
        return None


@dataclass(frozen=True)
class NamePattern:
    pattern: re.Pattern[str]
    rule: str
    example: str

    def problem(self, value: Any) -> str | None:
        if not isinstance(value, str):
            return f"must be a string ({self.rule}), got {value!r}"
        # fullmatch: "$" also matches before a trailing newline ("vti-aws1\n" would pass and break the files).
        if not self.pattern.fullmatch(value):
            return f"{value[:60]!r} is not valid: {self.rule}"
        return None


# ================================================================================================ AWS (AWS facts)
# "Tunnel options": algorithms, DH groups, lifetimes, rekey, replay window, DPD, startup action.
IKE_VERSION = 2  # "IKE versions: ikev1, ikev2 (use ikev2 only)"
AWS_ENCRYPTION = ("AES128", "AES256", "AES128-GCM-16", "AES256-GCM-16")
AWS_INTEGRITY = ("SHA1", "SHA2-256", "SHA2-384", "SHA2-512")
AWS_PHASE1_DH = (2, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24)
AWS_PHASE2_DH = (2, 5, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24)
AWS_DPD_ACTIONS = ("clear", "restart", "none")
AWS_STARTUP_ACTIONS = ("add", "start")
PHASE1_LIFETIME = (900, 28800)
PHASE2_LIFETIME = (900, 3600)
LIFETIME = {
    "phase1": IntLimit(*PHASE1_LIFETIME, "seconds for phase1", 28800),
    "phase2": IntLimit(*PHASE2_LIFETIME, "seconds for phase2", 3600),
}
DH_GROUPS_ALLOWED = {"phase1": AWS_PHASE1_DH, "phase2": AWS_PHASE2_DH}
REKEY_MARGIN_MIN = 60
# The upper bound depends on phase 2's lifetime ("60 s up to half the phase 2 lifetime"): see rekey_margin_problem.
REKEY_MARGIN = IntLimit(REKEY_MARGIN_MIN, None, "seconds, at most half of phase2.lifetime_seconds", 270)
REKEY_FUZZ = IntLimit(0, 100, "percent", 100)
REPLAY_WINDOW = (64, 2048)
REPLAY = IntLimit(*REPLAY_WINDOW, "packets", 1024)
DPD_TIMEOUT_MIN = 30
# AWS documents only the minimum. The maximum is the gateway's: the renderer sets charon's dpd_delay to a third of it
# and for that long AWS keeps sending return traffic into a dead tunnel; beyond an hour is a typo, not a policy. (The
# stack reader had no maximum, the renderer 3600: preview accepted what apply() refused.)
DPD_TIMEOUT = IntLimit(DPD_TIMEOUT_MIN, 3600, "seconds", 30, "AWS minimum 30; an hour at most")
# "Inside CIDR: a /30 inside 169.254.0.0/16 ... Reserved and refused by AWS: ..."
AWS_RESERVED_INSIDE = tuple(
    ip_network(c)
    for c in ("169.254.0.0/30", "169.254.1.0/30", "169.254.2.0/30", "169.254.3.0/30", "169.254.4.0/30",
              "169.254.5.0/30", "169.254.169.252/30")
)
# 169.254.0.0/16: the tunnels' inside addresses and the Linode metadata service (169.254.169.254, the user data).
LINK_LOCAL = ip_network("169.254.0.0/16")
RFC1918 = tuple(ip_network(c) for c in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))
MAX_ROUTES_TO_AWS = 100  # "Limits": 100 routes from the customer gateway to a VGW
MAX_ROUTES_TO_AWS_WHY = "AWS's limit of 100 routes from a customer gateway to a VGW; summarise them"
# "Maximum tunnel MTU is 1446 (MSS 1406) ... AWS's own strongSwan template uses VTI MTU 1419 ... clamp MSS to 1379".
# The agent had 9000 (any Linux link): a VTI above 1446 sends what AWS drops, since PMTUD is not supported.
MAX_TUNNEL_MTU = 1446
TUNNEL_MTU = IntLimit(576, MAX_TUNNEL_MTU, "bytes", 1419, "AWS maximum tunnel MTU; AWS's strongSwan template uses 1419")
TCP_MSS = IntLimit(536, MAX_TUNNEL_MTU - 40, "bytes", 1379, "AWS maximum MSS 1406; AWS templates clamp to 1379")
PSK_RULE = "8 to 64 characters, only letters, digits, '.' and '_', not starting with '0'"
PSK_PATTERN = re.compile(r"^(?!0)[A-Za-z0-9._]{8,64}$")
PSK_EXAMPLE = "Example_psk.0123456789abcdef"


def psk_problem(psk: Any) -> str | None:
    """AWS's pre-shared key rule. Never echoes the value: messages end up in logs and CI output."""
    if not isinstance(psk, str):
        return f"must be a string ({PSK_RULE})"
    if PSK_PATTERN.fullmatch(psk):
        return None
    if len(psk) < 8:
        broken = "shorter than 8 characters"
    elif len(psk) > 64:
        broken = "longer than 64 characters"
    elif psk.startswith("0"):
        broken = "starts with '0'"
    else:
        broken = "contains a character other than letters, digits, '.' and '_'"
    return f"(value hidden, {len(psk)} characters) breaks AWS's pre-shared key rule: {broken}; rule: {PSK_RULE}"


def inside_cidr_problem(net: IPv4Network) -> str | None:
    """AWS's tunnel inside CIDR rule."""
    if net.prefixlen != 30 or not net.subnet_of(LINK_LOCAL):
        return f"{net} is not a /30 inside 169.254.0.0/16 (AWS tunnel inside CIDR rule)"
    if net in AWS_RESERVED_INSIDE:
        reserved = ", ".join(str(r) for r in AWS_RESERVED_INSIDE)
        return f"{net} is reserved by AWS (reserved: {reserved}); use another /30 in 169.254.0.0/16"
    return None


def inside_addresses(net: IPv4Network) -> tuple[IPv4Address, IPv4Address]:
    """(AWS's, the gateway's) address of an inside /30: "AWS (VGW) takes the first usable address, the customer
    gateway the second"."""
    first, second = list(net.hosts())[:2]
    return first, second


def inside_address_problems(net: IPv4Network, aws_ip: IPv4Address, gateway_ip: IPv4Address) -> dict[str, str]:
    """Which of the two inside addresses (``aws`` / ``gateway``) is not where AWS puts it in ``net``, and why."""
    aws_right, gateway_right = inside_addresses(net)
    found = {}
    if aws_ip != aws_right:
        found["aws"] = f"{aws_ip} is not the first usable address of {net} (AWS takes the first)"
    if gateway_ip != gateway_right:
        found["gateway"] = (f"{gateway_ip} is not the second usable address of {net} (the customer gateway takes the "
                            "second)")
    return found


def phase_integrity_problem(phase: str, encryption: Iterable[str], integrity: Iterable[str]) -> str | None:
    """Phase 1 always needs an integrity algorithm (IKE takes its PRF from it, AEAD or not); phase 2 only for a non-GCM
    cipher. GCM and CBC in one list are fine: the renderer gives each kind its own strongSwan proposal. (The stack
    reader refused a mix and an empty phase 2 list that the renderer handles: the golden custom-crypto scenario.)"""
    if list(integrity):
        return None
    if phase == "phase1":
        return "is empty (IKE needs a PRF, taken from the integrity algorithm)"
    if any(not e.endswith("-GCM-16") for e in encryption):
        return "is empty (non-GCM encryption needs an integrity algorithm)"
    return None


def phase2_lifetime_problem(phase1_seconds: int, phase2_seconds: int) -> str | None:
    if phase2_seconds >= phase1_seconds:
        return f"{phase2_seconds} must be below phase1.lifetime_seconds ({phase1_seconds}) (AWS rule)"
    return None


def rekey_margin_problem(margin: int, phase2_seconds: int) -> str | None:
    if margin > phase2_seconds // 2:
        return (f"{margin} is above half of phase2.lifetime_seconds ({phase2_seconds} / 2 = {phase2_seconds // 2}) "
                "(AWS rule)")
    return None


def aws_cidr_problem(net: IPv4Network) -> str | None:
    """An AWS CIDR the gateway routes into the tunnels must leave 169.254.0.0/16 alone: the probes to AWS's inside
    address would follow the AWS routes, and AWS picks the inside /30s anywhere in it when the stack does not.
    (Only the agent checked this, against the actual /30s, after the connection existed.)"""
    if net.overlaps(LINK_LOCAL):
        return (f"{net} overlaps 169.254.0.0/16, where the tunnels' inside addresses live (and the metadata "
                "service): the probes to AWS's inside address would follow the AWS routes")
    return None


def sides_overlap_problem(linode: IPv4Network, aws: IPv4Network) -> str | None:
    if linode.overlaps(aws):
        return (f"{linode} overlaps the AWS network {aws}; the two sides must not overlap (routing would be "
                "ambiguous)")
    return None


# ========================================================================================= Linode (Linode facts)
# "A VLAN label may contain only ASCII letters, digits and dashes" (64: the API's length limit).
VLAN_LABEL = NamePattern(re.compile(r"^[A-Za-z0-9-]{1,64}$"), "1-64 ASCII letters, digits and dashes",
                         "hybrid-vpn-dev")


def private_network_problem(net: IPv4Network) -> str | None:
    """The Linode side's networks (the VLAN CIDRs, the VPC subnet) are private: Linode VLANs and VPC subnets take
    RFC 1918 ranges only, and a public range routed into the tunnels would capture that range's internet traffic.
    (Only the stack reader checked it; the plan and the agent took any network.)"""
    if not any(net.subnet_of(block) for block in RFC1918):
        return f"{net} is not inside a private (RFC 1918) range: {', '.join(str(b) for b in RFC1918)}"
    return None


def vlan_address_problem(address: IPv4Interface) -> str | None:
    """The gateway's VLAN address (Linode ``ipam_address``): a host of a LAN that the VLAN hosts route through. A /31
    or /32 leaves no VLAN host beside the gateway on its link (the stack reader accepted a /31, the renderer not)."""
    net = address.network
    if net.prefixlen >= 31:
        return f"{address}: a /{net.prefixlen} leaves no room for VLAN hosts beside the gateway; use /30 or shorter"
    if address.ip in (net.network_address, net.broadcast_address):
        return f"{address} is the network or broadcast address of {net}"
    return None


def vlan_address_outside_problem(address: IPv4Interface, vlan_cidrs: Iterable[IPv4Network]) -> str | None:
    cidrs = list(vlan_cidrs)
    if not any(address.ip in net for net in cidrs):
        return (f"{address} is outside every VLAN CIDR ({', '.join(str(c) for c in cidrs)}): AWS routes back only "
                "the VLAN CIDRs")
    return None


# ===================================================================================== the gateway's own rules
# Linux interface names: at most 15 bytes (IFNAMSIZ 16), no '/', ':' or blanks; a leading letter or digit keeps
# '.', '..' and option-like names ("-x" to `ip`) out. One pattern for the stack, the plan, the agent and nft quoting.
INTERFACE_NAME = NamePattern(re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$"),
                             "a Linux interface name: 1-15 letters, digits, '_', '.', '-', starting with a letter or "
                             "digit", "vti-aws1")
# A tunnel's name is a swanctl section name, a metric label and a state file key: a letter first, no dots.
TUNNEL_NAME = NamePattern(re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,31}$"),
                          "a tunnel name: a letter, then up to 31 letters, digits, '_', '-'", "tunnel1")
# Interfaces that exist on every gateway and are never the agent's to create, re-address or delete.
KERNEL_INTERFACES = {
    "lo": "the loopback interface",
    "ip_vti0": "the kernel's own fallback VTI device",  # the ip_vti module creates it when it loads
}


def second_nic_problem(public_interface: str, vlan_interface: str) -> str | None:
    if public_interface == vlan_interface:
        return f"{vlan_interface!r} is also the public_interface; the VLAN is a second NIC"
    return None


def primary_tunnel_problem(primary: Any, names: Iterable[str]) -> str | None:
    if primary not in list(names):
        return f"{repr(primary)[:60]} names no tunnel"
    return None


def tunnel_interface_problem(name: str, nics: Mapping[str, str]) -> str | None:
    """``nics``: the gateway's own NIC names with what each one is. The agent owns, recreates and re-addresses the
    tunnel interfaces: a tunnel on the public NIC would strip the gateway's own address."""
    taken = {**KERNEL_INTERFACES, **nics}
    if name in taken:
        return (f"{name!r} is {taken[name]}; the agent owns, recreates and re-addresses the tunnel interfaces, so a "
                "tunnel may not take a name the gateway already uses")
    return None


# The gateway's host name is its Linode label, hybrid-vpn-<stack>-gw: a DNS label (RFC 1123: 1-63 letters, digits,
# '-', not starting or ending with '-'), or cloud-init's user data and the instance refuse it. The stack name is the
# only free part, so the rule is the stack name's (at most 63 - 14 = 49 characters).
HOSTNAME = NamePattern(re.compile(r"^(?=.{1,63}$)[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?$"),
                       "a host name label: 1-63 letters, digits and '-', not starting or ending with '-'",
                       "hybrid-vpn-dev-gw")
GATEWAY_LABEL_FORMAT = "hybrid-vpn-{stack}-gw"
MAX_STACK_NAME = 63 - len(GATEWAY_LABEL_FORMAT.format(stack=""))


def gateway_label(stack: str) -> str:
    """The gateway's Linode label and host name for a stack."""
    return GATEWAY_LABEL_FORMAT.format(stack=stack)


def stack_name_problem(stack: Any) -> str | None:
    if not isinstance(stack, str) or HOSTNAME.problem(gateway_label(stack)):
        return (f"{repr(stack)[:60]} is not usable: the gateway's host name {GATEWAY_LABEL_FORMAT} must be a host "
                f"name label ({HOSTNAME.rule}), so a stack name is at most {MAX_STACK_NAME} letters, digits and '-'")
    return None


# OpenSSH public key types and how many SSH strings their key data holds after the type name (RFC 4253 6.6, RFC 5656
# 3.1, RFC 8709 4, OpenSSH PROTOCOL.u2f). The Linode API, sshd and the push's pinning (paramiko) refuse a line whose
# data does not parse. One rule for the operator's authorized_keys and the gateway's host key (the plan had a loose
# pattern of its own that took any base64).
SSH_KEY_FIELDS = {
    "ssh-ed25519": 1,
    "ssh-rsa": 2,
    "ecdsa-sha2-nistp256": 2,
    "ecdsa-sha2-nistp384": 2,
    "ecdsa-sha2-nistp521": 2,
    "sk-ssh-ed25519@openssh.com": 2,
    "sk-ecdsa-sha2-nistp256@openssh.com": 3,
}
SSH_KEY_EXAMPLE = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA... you@laptop (the line of ~/.ssh/id_ed25519.pub)"


def ssh_public_key_problem(line: Any, key_types: Iterable[str] = SSH_KEY_FIELDS) -> str | None:
    """Why ``line`` is not an OpenSSH public key line ``<type> <base64 key data> [comment]`` of one of
    ``key_types``, or None when it is one.

    The key data is parsed, not only pattern-matched: a placeholder such as ``AAAAC3...ReplaceMe`` looks like a key
    but is refused by the Linode API (or, worse, accepted and never matches), and the SSH push fails minutes later.
    """
    if not isinstance(line, str):
        return "must be a string: an OpenSSH public key line"
    if "\n" in line.strip() or "\r" in line:
        return "must be one line"
    fields = line.strip().split(None, 2)
    if len(fields) < 2:
        return "expected '<type> <base64 key data> [comment]'"
    key_type, data = fields[0], fields[1]
    known = tuple(key_types)
    if key_type not in known:
        return f"unknown key type {key_type[:40]!r} (known: {', '.join(known)})"
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
        return (f"the key data of a {key_type} key holds {SSH_KEY_FIELDS[key_type]} field(s) after the type, "
                f"this one {len(strings) - 1}")
    if key_type in ("ssh-ed25519", "sk-ssh-ed25519@openssh.com") and len(strings[1]) != 32:
        return f"an Ed25519 public key is 32 bytes, this one {len(strings[1])}"
    return None


MARK = IntLimit(1, 2**32 - 1, "", 100, "a VTI key/mark per tunnel")
# The AWS networks the agent routes into the tunnels, one route per CIDR in its table: bounded like the other direction.
MAX_AWS_CIDRS = 100
MAX_AWS_CIDRS_WHY = "the gateway's limit of routes into the tunnels"


def distinct_problem(what: str, values: list[Any]) -> tuple[int, str] | None:
    """(index, rule) of the first value equal to an earlier one: each tunnel needs its own ``what``."""
    for i, value in enumerate(values):
        if value in values[:i]:
            return i, f"{value} is also tunnel{values.index(value) + 1}'s {what}; each tunnel needs its own"
    return None


def mss_problem(mss: int, mtu: int) -> str | None:
    if mss > mtu - 40:
        return f"{mss} does not fit the tunnel MTU {mtu} (MSS <= MTU - 40: IPv4 + TCP headers take 40)"
    return None


# The failover agent's probes (hostconfig/agent/probe.py, health.py): what it is built and tested for. The stack reader
# had tighter, made-up bounds (50 ms, 100 probes, 3600 s) and no limit on extra targets, so the three layers
# disagreed; these are the agent's, the component that runs them.
PROBE_INTERVAL_MS = IntLimit(20, 60_000, "ms", 200)
PROBE_TIMEOUT_MS = IntLimit(10, 60_000, "ms", 600)
DOWN_AFTER = IntLimit(1, 1000, "lost probes", 3)
UP_AFTER = IntLimit(1, 1000, "good probes", 5)
FAILBACK_HOLD_SECONDS = IntLimit(0, 86_400, "seconds", 20)
MAX_EXTRA_PROBE_TARGETS = 16  # one probe per target per interval, each tunnel: bounded work per tick
REPAIR_HOLD_SECONDS = IntLimit(1, 3600, "seconds", 5)


# ============================================================================== BGP routing (AWS facts, issue 16)
# Kept in one section of its own: the routing mode's rules (stack reader, plan, FRR view and agent read them here).
ROUTING_MODES = ("static", "bgp")
DEFAULT_CUSTOMER_ASN = 65000  # CreateCustomerGateway's default BgpAsn
# CreateCustomerGateway: BgpAsn 1..2,147,483,647, above that BgpAsnExtended (..4,294,967,295); 4,294,967,295 is
# reserved (RFC 7300) and 23456 is AS_TRANS (RFC 6793): no real speaker may use either.
CUSTOMER_ASN = IntLimit(1, 4_294_967_294, "", DEFAULT_CUSTOMER_ASN,
                        "a customer gateway ASN AWS accepts; without a public ASN of your own use a private one, "
                        "64512-65534 or 4200000000-4294967294")
CUSTOMER_ASN_BGP_ASN_MAX = 2_147_483_647  # the largest BgpAsn; larger ASNs go in BgpAsnExtended
AWS_RESERVED_CUSTOMER_ASNS = {
    7224: "reserved by AWS (Amazon's own ASN, us-east-1)",
    9059: "reserved by AWS (eu-west-1)",
    23456: "AS_TRANS (RFC 6793), never a real speaker's ASN",
}
PRIVATE_ASN_RANGES = ((64512, 65534), (4_200_000_000, 4_294_967_294))
# "BGP: Amazon-side ASN default 64512; hold time 30 s, keepalive 10 s."
AWS_BGP_KEEPALIVE_SECONDS = 10
AWS_BGP_HOLD_SECONDS = 30


def customer_asn_problem(asn: Any, amazon_side_asn: int | None) -> str | None:
    """The customer gateway's ASN: a range AWS accepts, not one AWS reserves, not the VGW's own (eBGP needs two)."""
    if problem := CUSTOMER_ASN.problem(asn):
        return problem
    if asn in AWS_RESERVED_CUSTOMER_ASNS:
        return f"{asn} is {AWS_RESERVED_CUSTOMER_ASNS[asn]}; {CUSTOMER_ASN.why}"
    if amazon_side_asn is not None:
        return distinct_asns_problem(asn, amazon_side_asn)
    return None


def distinct_asns_problem(customer_asn: int, amazon_side_asn: int) -> str | None:
    """The customer gateway's ASN and the VGW's, as configured: AWS's BGP sessions are eBGP, so they must differ.
    The customer gateway carries its ASN in static mode too, so the rule holds in both modes."""
    if customer_asn != amazon_side_asn:
        return None
    other = 65010 if customer_asn != 65010 else 65020
    return (f"{customer_asn} is both routing.customer_asn (the customer gateway's) and aws.amazon_side_asn (the "
            f"VGW's); the two must differ (the sessions are eBGP): change either, e.g. routing.customer_asn {other}")


def is_private_asn(asn: int) -> bool:
    return any(low <= asn <= high for low, high in PRIVATE_ASN_RANGES)


def amazon_side_asn_problem(asn: int) -> str | None:
    """The VGW's ASN: AWS accepts only a private one for a virtual private gateway."""
    if is_private_asn(asn):
        return None
    return (f"{asn} is not a private ASN AWS accepts for a virtual private gateway "
            "(64512-65534 or 4200000000-4294967294)")


def more_specific_halves(net: IPv4Network) -> tuple[IPv4Network, IPv4Network]:
    """The two halves of a VLAN CIDR: longer prefixes than the CIDR itself, so AWS prefers them over the CIDR on any
    tunnel ("longest prefix first"), whatever the AS path of the CIDR there."""
    low, high = net.subnets(prefixlen_diff=1)
    return low, high


def bgp_vlan_cidr_problem(net: IPv4Network) -> str | None:
    if net.prefixlen >= 32:
        return (f"{net}: a /32 has no more-specific halves, which the gateway advertises to move AWS's return traffic "
                "at once (routing.mode bgp); use /31 or shorter")
    return None


def bgp_advertised_prefixes(vlan_cidrs: Iterable[IPv4Network]) -> list[IPv4Network]:
    """Everything the gateway may advertise on one BGP session: each VLAN CIDR and its two halves."""
    out: list[IPv4Network] = []
    for net in vlan_cidrs:
        out.extend((net, *more_specific_halves(net)) if net.prefixlen < 32 else (net,))  # a /32: bgp_vlan_cidr_problem
    return out


def bgp_route_limit_problem(vlan_cidrs: Iterable[IPv4Network]) -> str | None:
    """AWS's 100-route limit counted against the most the gateway may advertise at once (CIDRs plus halves)."""
    cidrs = list(vlan_cidrs)
    count = len(bgp_advertised_prefixes(cidrs))
    if count > MAX_ROUTES_TO_AWS:
        return (f"{len(cidrs)} VLAN CIDRs make {count} BGP routes with their more-specific halves (3 per CIDR), above "
                f"{MAX_ROUTES_TO_AWS_WHY} (at most {MAX_ROUTES_TO_AWS // 3} VLAN CIDRs in routing.mode bgp)")
    return None
# What the gateway's FRR advertises per neighbor: one route-map each, switched by the agent (hostconfig/agent/bgp.py)
# and defined by hostconfig/templates/frr.conf.j2, so the names live here, once, for both.
ROUTE_MAP_PRIMARY = "hybrid-vpn-primary"  # the VLAN CIDRs, plain AS path: AWS sends on this tunnel
ROUTE_MAP_STANDBY = "hybrid-vpn-standby"  # the VLAN CIDRs, AS path prepended: AWS avoids this tunnel
ROUTE_MAP_PRIMARY_MORE_SPECIFIC = "hybrid-vpn-primary-more-specific"  # + the halves: wins over any CIDR elsewhere
ROUTE_MAP_FROM_AWS = "hybrid-vpn-from-aws"  # accepts only the AWS CIDRs (and their subnets)
# Extra copies of the customer ASN on the standby: one is enough for "shortest AS path"; two keep it so if AWS or a
# Transit Gateway in between adds an ASN of its own on one path only.
STANDBY_PREPEND = 2
