"""The gateway plan: the ``host_config`` stack output (docs/contracts.md §1) validated into plain frozen dataclasses.

Three parts, all pure (no I/O, no Pulumi types):
- ``GatewayPlan.from_host_config(obj)``: validation. Every problem is collected and reported at once, each naming the
  field path, the rule, and an example of a right value. PSK values are never echoed.
- the strongSwan mapping: AWS algorithm names -> proposal keywords, AWS tunnel options -> charon lifetimes and actions.
- the view models: one plain dict per template, so the templates only format.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any

from hostconfig import gateway_paths

# The AWS rules the program validated are checked again here (the input may come from any stack, or by hand).
from infra.aws_rules import (
    AWS_DPD_ACTIONS,
    AWS_PHASE1_DH,
    AWS_PHASE2_DH,
    AWS_RESERVED_INSIDE,
    AWS_STARTUP_ACTIONS,
    MAX_ROUTES_TO_AWS,
    MAX_TUNNEL_MTU,
    PHASE1_LIFETIME,
    PHASE2_LIFETIME,
    PSK_PATTERN,
    REPLAY_WINDOW,
)
from infra.secret import Secret

log = logging.getLogger(__name__)

SCHEMA_KIND = "hybrid-vpn/host-config"
SCHEMA_VERSION = 1

# --- What the gateway agent owns and where things live (docs/contracts.md §2 and §4). ---
AGENT_CONFIG_VERSION = 1
OWNERSHIP = {"route_table": 1519, "route_protocol": 157, "rule_priority": 10100, "nft_table": "hybrid_vpn"}
VPNCTL_PATH = gateway_paths.VPNCTL.path
UPDOWN_COMMAND = gateway_paths.UPDOWN_COMMAND
AGENT_CONFIG_PATH = gateway_paths.AGENT_CONFIG.path
NFT_RULESET_PATH = gateway_paths.NFT_RULESET.path
NFT_PATH = gateway_paths.NFT
FAILOVER_UNIT = gateway_paths.FAILOVER_UNIT
GUARD_UNIT = gateway_paths.GUARD_UNIT
STATE_DIR = gateway_paths.STATE_DIR.path
METRICS_FILE = gateway_paths.METRICS_FILE
VICI_SOCKET = gateway_paths.VICI_SOCKET
IKE_PORT, NAT_T_PORT = 500, 4500
SSH_PORT = 22
# 169.254.0.0/16: the tunnels' inside addresses and the Linode metadata service (169.254.169.254, which serves the user
# data). The VLAN never needs it: its AWS traffic goes to the AWS CIDRs.
LINK_LOCAL = IPv4Network("169.254.0.0/16")

# --- AWS Site-to-Site VPN tunnel options (shared/aws-vpn-facts.md) mapped to strongSwan keywords. ---
# encryption name -> (strongSwan keyword, is AEAD)
ENCRYPTION = {
    "AES128": ("aes128", False),
    "AES256": ("aes256", False),
    "AES128-GCM-16": ("aes128gcm16", True),
    "AES256-GCM-16": ("aes256gcm16", True),
}
INTEGRITY = {"SHA1": "sha1", "SHA2-256": "sha256", "SHA2-384": "sha384", "SHA2-512": "sha512"}
# AEAD IKE proposals carry no integrity algorithm, but IKE still needs a PRF: the PRF of the same hash.
PRF = {"SHA1": "prfsha1", "SHA2-256": "prfsha256", "SHA2-384": "prfsha384", "SHA2-512": "prfsha512"}
DH_GROUPS = {
    2: "modp1024",
    5: "modp1536",
    14: "modp2048",
    15: "modp3072",
    16: "modp4096",
    17: "modp6144",
    18: "modp8192",
    19: "ecp256",
    20: "ecp384",
    21: "ecp521",
    22: "modp1024s160",
    23: "modp2048s224",
    24: "modp2048s256",
}
PHASE1_DH_GROUPS = frozenset(AWS_PHASE1_DH)
PHASE2_DH_GROUPS = frozenset(AWS_PHASE2_DH)

# The gateway's reaction to a dead peer. AWS's action is what AWS does when *it* declares the gateway dead; the
# gateway must bring the tunnel back in every case, because (a) with startup action `add` AWS never initiates, so a
# gateway that clears would leave the tunnel down for good, and (b) the failover agent stops routing into a dead
# tunnel, so an on-demand `trap` would never be triggered by traffic. Duplicate SAs from both ends restarting at once
# are resolved by IKEv2 collision handling and `unique = replace`.
GATEWAY_DPD_ACTION = {"clear": "restart", "restart": "restart", "none": "restart"}
# AWS `add`: AWS waits for the customer gateway -> the gateway initiates as soon as the config is loaded (`start`),
# and re-initiates when AWS closes the CHILD_SA. AWS `start`: AWS initiates -> the gateway does not race it at load
# time, but installs trap policies so the first packet routed into the VTI (the agent's probes) makes the gateway
# initiate if AWS has not yet: never stuck waiting for the peer (`none` could be).
GATEWAY_START_ACTION = {"add": "start", "start": "trap"}
GATEWAY_CLOSE_ACTION = {"add": "start", "start": "trap"}
LEGACY_AUTO = {"add": "start", "start": "route"}
LEGACY_CLOSE_ACTION = {"add": "restart", "start": "hold"}

# IKEv2 declares a peer dead only when its retransmissions time out (the DPD timeout is an IKEv1 setting). These
# charon settings bound that schedule: 2 + 2.8 + 3.9 + 5.5 = 14.2 s, so dpd_delay (a third of AWS's DPD timeout)
# plus the retransmissions stay below AWS's DPD timeout (>= 30 s): both ends notice a dead peer at about the same time.
RETRANSMIT_TIMEOUT = 2.0
RETRANSMIT_BASE = 1.4
RETRANSMIT_TRIES = 3

_IFNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")
_TUNNEL_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")
_STACK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class PlanError(ValueError):
    """The host_config object is unusable. ``problems`` lists every finding, one line each."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        head = f"host_config is invalid ({len(problems)} problem{'s' if len(problems) != 1 else ''}):"
        super().__init__("\n".join([head, *(f"  - {p}" for p in problems)]))


# ------------------------------------------------------------------------------------------------ the plan dataclasses


@dataclass(frozen=True)
class GatewaySpec:
    label: str
    public_ip: IPv4Address  # the 1:1 NAT address: IKE identity, customer gateway IP
    private_ip: IPv4Address  # on the VPC NIC: IKE local address, VTI local end
    public_interface: str
    vlan_interface: str
    vlan_address: IPv4Interface
    ssh_host_public_key: str


@dataclass(frozen=True)
class TunnelSpec:
    name: str
    interface: str
    outside_ip: IPv4Address
    inside_cidr: IPv4Network
    aws_inside_ip: IPv4Address
    gateway_inside_ip: IPv4Address
    psk: Secret = field(repr=False)
    mark: int


@dataclass(frozen=True)
class PhaseSpec:
    encryption: tuple[str, ...]  # AWS names, in preference order
    integrity: tuple[str, ...]
    dh_groups: tuple[int, ...]
    lifetime_seconds: int


@dataclass(frozen=True)
class CryptoProfile:
    ike_version: int
    phase1: PhaseSpec
    phase2: PhaseSpec
    rekey_margin_seconds: int
    rekey_fuzz_percent: int
    replay_window: int
    dpd_timeout_seconds: int
    dpd_timeout_action: str
    startup_action: str


@dataclass(frozen=True)
class FailoverSpec:
    primary: str
    probe_interval_ms: int
    probe_timeout_ms: int
    down_after: int
    up_after: int
    failback_hold_seconds: int
    extra_probe_targets: tuple[IPv4Address, ...]


@dataclass(frozen=True)
class GatewayPlan:
    stack: str
    gateway: GatewaySpec
    aws_region: str
    vpn_connection_id: str
    vgw_id: str
    aws_cidrs: tuple[IPv4Network, ...]
    linode_region: str
    vlan_label: str
    vlan_cidrs: tuple[IPv4Network, ...]
    subnet_cidr: IPv4Network
    crypto: CryptoProfile
    tunnels: tuple[TunnelSpec, ...]
    tunnel_mtu: int
    tcp_mss: int
    failover: FailoverSpec
    # Who may SSH to the gateway (the stack's admin_cidrs); None when host_config does not carry them (older
    # programs): the input policy then accepts SSH from any source and leaves the filtering to the Cloud Firewall.
    admin_cidrs: tuple[IPv4Network, ...] | None = None

    @classmethod
    def from_host_config(cls, obj: dict) -> GatewayPlan:
        """Validate the ``host_config`` stack output; raise PlanError listing every problem found."""
        return _PlanBuilder().build(obj)

    def tunnel(self, name: str) -> TunnelSpec:
        for tunnel in self.tunnels:
            if tunnel.name == name:
                return tunnel
        raise KeyError(name)

    def secrets(self) -> tuple[str, ...]:
        """Every secret value in the plan (for tests and log scrubbing)."""
        return tuple(t.psk.reveal() for t in self.tunnels)


# ------------------------------------------------------------------------------------------------------ validation


class _Missing:
    pass


_MISSING = _Missing()


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "an object",
    }.get(type(value), type(value).__name__)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 50 else text[:47] + "..."


class _PlanBuilder:
    """Reads the host_config object field by field, collecting problems instead of stopping at the first."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    # -- primitive readers: return the value, or None after recording a problem --------------------------------------

    def problem(self, path: str, what: str, expected: str) -> None:
        self.problems.append(f"{path}: {what}; expected {expected}")

    def get(self, obj: Any, key: str, path: str, expected: str) -> Any:
        if not isinstance(obj, dict):
            return None  # the parent's problem is already recorded
        if key not in obj:
            self.problem(f"{path}.{key}", "missing", expected)
            return _MISSING
        return obj[key]

    def obj(self, parent: Any, key: str, path: str, example: str, known: tuple[str, ...]) -> dict | None:
        value = self.get(parent, key, path, f"an object like {example}")
        if value is None or value is _MISSING:
            return None
        where = f"{path}.{key}"
        if not isinstance(value, dict):
            self.problem(where, f"got {_type_name(value)}", f"an object like {example}")
            return None
        unknown = sorted(set(value) - set(known))
        if unknown:
            # Tolerated so a newer program can add fields, but said out loud: it may also be a typo.
            log.warning("%s: ignoring unknown keys %s (known: %s)", where, ", ".join(unknown), ", ".join(known))
        return value

    def check(self, parent: Any, key: str, path: str, expected: str, convert: Callable[[Any], Any]) -> Any:
        """Read ``parent[key]`` and convert it; ``convert`` raises ValueError/TypeError for a bad value."""
        value = self.get(parent, key, path, expected)
        if value is None or value is _MISSING:
            return None
        try:
            return convert(value)
        except (ValueError, TypeError):
            self.problem(f"{path}.{key}", f"got {_type_name(value)} {_shown(value)}", expected)
            return None

    def integer(self, parent: Any, key: str, path: str, low: int, high: int, example: int, rule: str = "") -> Any:
        expected = f"an integer {low}..{high}{' (' + rule + ')' if rule else ''} like {example}"

        def convert(v: Any) -> int:
            if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
                raise ValueError
            return v

        return self.check(parent, key, path, expected, convert)

    def string(self, parent: Any, key: str, path: str, pattern: re.Pattern[str], rule: str, example: str) -> Any:
        def convert(v: Any) -> str:
            # fullmatch: "$" also matches before a trailing newline ("eth0\n" would pass and break the files).
            if not isinstance(v, str) or not pattern.fullmatch(v):
                raise ValueError
            return v

        return self.check(parent, key, path, f"{rule} like {example}", convert)

    def ipv4(self, parent: Any, key: str, path: str, example: str) -> Any:
        return self.check(parent, key, path, f"an IPv4 address like {example}", _to_ipv4)

    def network(self, parent: Any, key: str, path: str, example: str) -> Any:
        return self.check(parent, key, path, f"an IPv4 network in CIDR form, no host bits, like {example}", _to_net)

    def choice(self, parent: Any, key: str, path: str, choices: tuple[str, ...]) -> Any:
        def convert(v: Any) -> str:
            if v not in choices:
                raise ValueError
            return v

        return self.check(parent, key, path, f"one of {', '.join(choices)} (AWS names)", convert)

    def items(self, parent: Any, key: str, path: str, low: int, high: int, example: str) -> list | None:
        value = self.get(parent, key, path, f"a list of {low}..{high} items like {example}")
        if value is None or value is _MISSING:
            return None
        if not isinstance(value, list) or not low <= len(value) <= high:
            got = f"a list of {len(value)}" if isinstance(value, list) else f"got {_type_name(value)}"
            self.problem(f"{path}.{key}", got, f"a list of {low}..{high} items like {example}")
            return None
        return value

    def each(self, values: list, path: str, expected: str, convert: Callable[[Any], Any]) -> tuple | None:
        out = []
        ok = True
        for i, v in enumerate(values):
            try:
                out.append(convert(v))
            except (ValueError, TypeError):
                self.problem(f"{path}[{i}]", f"got {_type_name(v)} {_shown(v)}", expected)
                ok = False
        if ok and len(set(out)) != len(out):
            self.problem(path, "duplicate entries", "each entry once")
            ok = False
        return tuple(out) if ok else None

    def networks(self, parent: Any, key: str, path: str, low: int, high: int, example: str) -> tuple | None:
        values = self.items(parent, key, path, low, high, f'["{example}"]')
        if values is None:
            return None
        return self.each(
            values, f"{path}.{key}", f"an IPv4 network in CIDR form, no host bits, like {example}", _to_net
        )

    # -- the sections ----------------------------------------------------------------------------------------------

    def build(self, obj: Any) -> GatewayPlan:
        p = "host_config"
        if not isinstance(obj, dict):
            raise PlanError(
                [f"{p}: got {_type_name(obj)}; expected the JSON object exported as stack output host_config"]
            )
        self.check(obj, "kind", p, f'"{SCHEMA_KIND}"', _equals(SCHEMA_KIND))
        self.check(
            obj,
            "version",
            p,
            f"{SCHEMA_VERSION} (this renderer reads version {SCHEMA_VERSION})",
            _equals(SCHEMA_VERSION),
        )
        stack = self.string(obj, "stack", p, _STACK, "a stack name", '"dev"')
        gateway = self.gateway(obj, p)
        aws = self.obj(
            obj, "aws", p, '{"region": ..., "cidrs": [...]}', ("region", "vpn_connection_id", "vgw_id", "cidrs")
        )
        aws_region = self.check(aws, "region", f"{p}.aws", 'a region name like "us-east-1"', _nonempty_str)
        vpn_id = self.check(aws, "vpn_connection_id", f"{p}.aws", 'an id like "vpn-0123456789abcdef0"', _nonempty_str)
        vgw_id = self.check(aws, "vgw_id", f"{p}.aws", 'an id like "vgw-0123456789abcdef0"', _nonempty_str)
        aws_cidrs = self.networks(aws, "cidrs", f"{p}.aws", 1, MAX_ROUTES_TO_AWS, "10.0.0.0/16")
        linode = self.obj(
            obj, "linode", p, '{"vlan_cidrs": [...], ...}', ("region", "vlan_label", "vlan_cidrs", "subnet_cidr")
        )
        linode_region = self.check(linode, "region", f"{p}.linode", 'a region name like "us-ord"', _nonempty_str)
        vlan_label = self.string(
            linode,
            "vlan_label",
            f"{p}.linode",
            re.compile(r"^[A-Za-z0-9-]{1,64}$"),
            "a VLAN label of letters, digits and dashes",
            '"hybrid-vpn-dev"',
        )
        vlan_cidrs = self.networks(linode, "vlan_cidrs", f"{p}.linode", 1, MAX_ROUTES_TO_AWS, "172.16.0.0/12")
        subnet_cidr = self.network(linode, "subnet_cidr", f"{p}.linode", "10.8.0.0/24")
        crypto = self.crypto(obj, p)
        tunnels = self.tunnels(obj, p)
        mtu = self.integer(obj, "tunnel_mtu", p, 576, MAX_TUNNEL_MTU, 1419, "AWS maximum tunnel MTU 1446")
        mss = self.integer(obj, "tcp_mss", p, 536, MAX_TUNNEL_MTU - 40, 1379)
        failover = self.failover(obj, p)
        admin_cidrs = self.admin_cidrs(obj, p)

        if not self.problems:
            self.cross_checks(p, gateway, aws_cidrs, vlan_cidrs, subnet_cidr, tunnels, mtu, mss, failover)
        if self.problems:
            raise PlanError(self.problems)
        plan = GatewayPlan(
            stack=stack, gateway=gateway, aws_region=aws_region, vpn_connection_id=vpn_id, vgw_id=vgw_id,
            aws_cidrs=aws_cidrs, linode_region=linode_region, vlan_label=vlan_label, vlan_cidrs=vlan_cidrs,
            subnet_cidr=subnet_cidr, crypto=crypto, tunnels=tunnels, tunnel_mtu=mtu, tcp_mss=mss, failover=failover,
            admin_cidrs=admin_cidrs,
        )  # fmt: skip
        log.info(
            "plan for stack %s: %d tunnels, %d AWS CIDRs, %d VLAN CIDRs",
            stack,
            len(tunnels),
            len(aws_cidrs),
            len(vlan_cidrs),
        )
        return plan

    def admin_cidrs(self, obj: dict, p: str) -> tuple[IPv4Network, ...] | None:
        """Optional: a program that does not export them yet gets SSH open to any source in the gateway's input policy
        (the Cloud Firewall still filters), and a warning."""
        if "admin_cidrs" not in obj:
            log.warning("host_config carries no admin_cidrs: the gateway's input policy accepts SSH from any source "
                        "(only the Cloud Firewall filters it)")
            return None
        return self.networks(obj, "admin_cidrs", p, 0, 100, "192.0.2.0/24")

    def gateway(self, obj: dict, p: str) -> GatewaySpec | None:
        g = self.obj(
            obj,
            "gateway",
            p,
            '{"public_ip": "203.0.113.10", ...}',
            (
                "label",
                "public_ip",
                "private_ip",
                "public_interface",
                "vlan_interface",
                "vlan_address",
                "ssh_host_public_key",
            ),
        )
        gp = f"{p}.gateway"
        label = self.string(g, "label", gp, _LABEL, "a label", '"hybrid-vpn-dev-gw"')
        public_ip = self.ipv4(g, "public_ip", gp, "203.0.113.10")
        private_ip = self.ipv4(g, "private_ip", gp, "10.8.0.2")
        ifrule = "a Linux interface name (1-15 letters, digits, '_', '.', '-')"
        public_if = self.string(g, "public_interface", gp, _IFNAME, ifrule, '"eth0"')
        vlan_if = self.string(g, "vlan_interface", gp, _IFNAME, ifrule, '"eth1"')
        vlan_address = self.check(
            g, "vlan_address", gp, "an IPv4 address with prefix length like 172.16.1.1/24", _to_interface
        )
        ssh_key = self.check(
            g, "ssh_host_public_key", gp, 'an OpenSSH public key like "ssh-ed25519 AAAA... name"', _ssh_public_key
        )
        if g is None or None in (label, public_ip, private_ip, public_if, vlan_if, vlan_address, ssh_key):
            return None
        if public_if == vlan_if:
            self.problem(f"{gp}.vlan_interface", f"same as public_interface ({public_if})", 'a second NIC like "eth1"')
        return GatewaySpec(label, public_ip, private_ip, public_if, vlan_if, vlan_address, ssh_key)

    def phase(
        self, c: Any, key: str, p: str, dh_allowed: frozenset[int], lifetime: tuple[int, int]
    ) -> PhaseSpec | None:
        ph = self.obj(
            c,
            key,
            p,
            '{"encryption": ["AES256"], "integrity": ["SHA2-256"], "dh_groups": [14], ...}',
            ("encryption", "integrity", "dh_groups", "lifetime_seconds"),
        )
        pp = f"{p}.{key}"
        enc_list = self.items(ph, "encryption", pp, 1, len(ENCRYPTION), '["AES256"]')
        enc = (
            self.each(enc_list, f"{pp}.encryption", f"one of {', '.join(ENCRYPTION)}", _member(ENCRYPTION))
            if enc_list is not None
            else None
        )
        integ_list = self.items(ph, "integrity", pp, 0, len(INTEGRITY), '["SHA2-256"]')
        integ = (
            self.each(integ_list, f"{pp}.integrity", f"one of {', '.join(INTEGRITY)}", _member(INTEGRITY))
            if integ_list is not None
            else None
        )
        dh_list = self.items(ph, "dh_groups", pp, 1, len(dh_allowed), "[14]")
        allowed = ", ".join(str(g) for g in sorted(dh_allowed))
        dh = (
            self.each(dh_list, f"{pp}.dh_groups", f"a DH group AWS allows here ({allowed})", _member(dh_allowed))
            if dh_list is not None
            else None
        )
        life = self.integer(ph, "lifetime_seconds", pp, lifetime[0], lifetime[1], lifetime[1], "AWS range")
        if None in (ph, enc, integ, dh, life):
            return None
        needs_integrity = key == "phase1" or any(not ENCRYPTION[e][1] for e in enc)
        if needs_integrity and not integ:
            why = "IKE needs a PRF" if key == "phase1" else "non-GCM encryption needs an integrity algorithm"
            self.problem(f"{pp}.integrity", f"empty ({why})", '["SHA2-256"]')
            return None
        return PhaseSpec(enc, integ, dh, life)

    def crypto(self, obj: dict, p: str) -> CryptoProfile | None:
        c = self.obj(
            obj,
            "crypto",
            p,
            '{"ike_version": 2, "phase1": {...}, ...}',
            (
                "ike_version",
                "phase1",
                "phase2",
                "rekey_margin_seconds",
                "rekey_fuzz_percent",
                "replay_window",
                "dpd_timeout_seconds",
                "dpd_timeout_action",
                "startup_action",
            ),
        )
        cp = f"{p}.crypto"
        ike = self.check(c, "ike_version", cp, "2 (IKEv2 only, as the design requires)", _equals(2))
        phase1 = self.phase(c, "phase1", cp, PHASE1_DH_GROUPS, PHASE1_LIFETIME)
        phase2 = self.phase(c, "phase2", cp, PHASE2_DH_GROUPS, PHASE2_LIFETIME)
        margin = self.integer(
            c, "rekey_margin_seconds", cp, 60, PHASE2_LIFETIME[1] // 2, 270, "AWS: 60 up to half the phase 2 lifetime"
        )
        fuzz = self.integer(c, "rekey_fuzz_percent", cp, 0, 100, 100)
        replay = self.integer(c, "replay_window", cp, REPLAY_WINDOW[0], REPLAY_WINDOW[1], 1024)
        dpd = self.integer(c, "dpd_timeout_seconds", cp, 30, 3600, 30, "AWS minimum 30")
        dpd_action = self.choice(c, "dpd_timeout_action", cp, AWS_DPD_ACTIONS)
        startup = self.choice(c, "startup_action", cp, AWS_STARTUP_ACTIONS)
        if None in (c, ike, phase1, phase2, margin, fuzz, replay, dpd, dpd_action, startup):
            return None
        if phase2.lifetime_seconds >= phase1.lifetime_seconds:
            self.problem(
                f"{cp}.phase2.lifetime_seconds",
                f"{phase2.lifetime_seconds} is not below phase 1's {phase1.lifetime_seconds}",
                "a phase 2 lifetime below the phase 1 lifetime (AWS rule) like 3600",
            )
        if margin > phase2.lifetime_seconds // 2:
            self.problem(
                f"{cp}.rekey_margin_seconds",
                f"{margin} is more than half the phase 2 lifetime ({phase2.lifetime_seconds})",
                f"60..{phase2.lifetime_seconds // 2} (AWS rule) like 270",
            )
        return CryptoProfile(ike, phase1, phase2, margin, fuzz, replay, dpd, dpd_action, startup)

    def tunnels(self, obj: dict, p: str) -> tuple[TunnelSpec, ...] | None:
        items = self.items(obj, "tunnels", p, 2, 2, "the VPN connection's two tunnels, tunnel1 first")
        if items is None:
            return None
        out = []
        for i, item in enumerate(items):
            tp = f"{p}.tunnels[{i}]"
            if not isinstance(item, dict):
                self.problem(tp, f"got {_type_name(item)}", '{"name": "tunnel1", "outside_ip": ..., ...}')
                continue
            out.append(self.tunnel(item, tp, i))
        if len(out) != len(items) or None in out:
            return None
        tunnels = tuple(out)
        for attr, what in (
            ("name", "name"),
            ("interface", "interface"),
            ("mark", "mark"),
            ("outside_ip", "outside_ip"),
            ("inside_cidr", "inside_cidr"),
        ):
            values = [getattr(t, attr) for t in tunnels]
            if len(set(values)) != len(values):
                self.problem(
                    f"{p}.tunnels[1].{what}",
                    f"same as tunnels[0].{what} ({values[1]})",
                    f"a distinct {what} per tunnel",
                )
        return tunnels

    def tunnel(self, t: dict, tp: str, i: int) -> TunnelSpec | None:
        n = i + 1
        name = self.string(t, "name", tp, _TUNNEL_NAME, "a name of letters, digits, '_', '-'", f'"tunnel{n}"')
        interface = self.string(t, "interface", tp, _IFNAME, "a Linux interface name (1-15 chars)", f'"vti-aws{n}"')
        outside = self.ipv4(t, "outside_ip", tp, f"198.51.100.{n}")
        inside = self.network(t, "inside_cidr", tp, f"169.254.1{n - 1}.0/30")
        aws_inside = self.ipv4(t, "aws_inside_ip", tp, f"169.254.1{n - 1}.1")
        gw_inside = self.ipv4(t, "gateway_inside_ip", tp, f"169.254.1{n - 1}.2")
        mark = self.integer(t, "mark", tp, 1, 0xFFFFFFFF, 100 * n)
        psk = self._psk(t, f"{tp}.psk")
        if None in (name, interface, outside, inside, aws_inside, gw_inside, mark, psk):
            return None
        if inside.prefixlen != 30 or not inside.subnet_of(LINK_LOCAL) or inside in AWS_RESERVED_INSIDE:
            self.problem(
                f"{tp}.inside_cidr",
                f"{inside} is not a usable AWS inside CIDR",
                "a /30 inside 169.254.0.0/16 that AWS does not reserve like 169.254.10.0/30",
            )
            return None
        hosts = list(inside.hosts())
        if aws_inside != hosts[0]:
            self.problem(
                f"{tp}.aws_inside_ip",
                f"{aws_inside} is not the first usable address of {inside}",
                f"{hosts[0]} (AWS takes the first)",
            )
        if gw_inside != hosts[1]:
            self.problem(
                f"{tp}.gateway_inside_ip",
                f"{gw_inside} is not the second usable address of {inside}",
                f"{hosts[1]} (the customer gateway takes the second)",
            )
        return TunnelSpec(name, interface, outside, inside, aws_inside, gw_inside, psk, mark)

    def _psk(self, t: dict, where: str) -> Secret | None:
        rule = (
            "8 to 64 letters, digits, '.' or '_', not starting with '0' (AWS rule) like "
            '"Example_psk.0123456789abcdef"'
        )
        if "psk" not in t:
            self.problem(where, "missing", rule)
            return None
        value = t["psk"]
        if not isinstance(value, str):
            self.problem(where, f"got {_type_name(value)}", rule)
            return None
        if not PSK_PATTERN.fullmatch(value):
            # Never echo the value: it is (or was meant to be) a secret.
            self.problem(where, f"invalid value of length {len(value)} (not shown)", rule)
            return None
        return Secret(value)

    def failover(self, obj: dict, p: str) -> FailoverSpec | None:
        f = self.obj(
            obj,
            "failover",
            p,
            '{"primary": "tunnel1", ...}',
            (
                "primary",
                "probe_interval_ms",
                "probe_timeout_ms",
                "down_after",
                "up_after",
                "failback_hold_seconds",
                "extra_probe_targets",
            ),
        )
        fp = f"{p}.failover"
        primary = self.string(f, "primary", fp, _TUNNEL_NAME, "a tunnel name", '"tunnel1"')
        # The agent's limits (hostconfig/agent/config.py): anything wider renders an agent.json the gateway refuses.
        interval = self.integer(f, "probe_interval_ms", fp, 20, 60000, 200)
        timeout = self.integer(f, "probe_timeout_ms", fp, 10, 60000, 600)
        down = self.integer(f, "down_after", fp, 1, 1000, 3)
        up = self.integer(f, "up_after", fp, 1, 1000, 5)
        hold = self.integer(f, "failback_hold_seconds", fp, 0, 86400, 20, "seconds")
        targets_list = self.items(f, "extra_probe_targets", fp, 0, 16, '["10.0.4.85"]')
        targets = (
            self.each(targets_list, f"{fp}.extra_probe_targets", "an IPv4 address like 10.0.4.85", _to_ipv4)
            if targets_list is not None
            else None
        )
        if None in (f, primary, interval, timeout, down, up, hold, targets):
            return None
        return FailoverSpec(primary, interval, timeout, down, up, hold, targets)

    def cross_checks(
        self,
        p: str,
        gateway: GatewaySpec,
        aws_cidrs: tuple[IPv4Network, ...],
        vlan_cidrs: tuple[IPv4Network, ...],
        subnet: IPv4Network,
        tunnels: tuple[TunnelSpec, ...],
        mtu: int,
        mss: int,
        failover: FailoverSpec,
    ) -> None:
        for i, aws in enumerate(aws_cidrs):
            for j, vlan in enumerate(vlan_cidrs):
                if aws.overlaps(vlan):
                    self.problem(
                        f"{p}.aws.cidrs[{i}]",
                        f"{aws} overlaps linode.vlan_cidrs[{j}] {vlan}",
                        "AWS and Linode networks that do not overlap, like 10.0.0.0/16 and 172.16.0.0/12",
                    )
            if aws.overlaps(subnet):
                self.problem(
                    f"{p}.aws.cidrs[{i}]",
                    f"{aws} overlaps the gateway's subnet linode.subnet_cidr {subnet}",
                    "an AWS network outside the gateway's own subnet (its default route would break)",
                )
            for t in tunnels:
                if t.outside_ip in aws:
                    self.problem(
                        f"{p}.aws.cidrs[{i}]",
                        f"{aws} contains {t.name}'s outside_ip {t.outside_ip}",
                        "AWS private networks only (the tunnel endpoints must stay reachable in clear)",
                    )
        nics = {gateway.public_interface: "public_interface", gateway.vlan_interface: "vlan_interface", "lo": None}
        for i, t in enumerate(tunnels):
            if t.interface in nics:
                owner = f"gateway.{nics[t.interface]}" if nics[t.interface] else "the loopback"
                self.problem(
                    f"{p}.tunnels[{i}].interface",
                    f"{t.interface!r} is {owner}; the agent creates, re-addresses and deletes a tunnel's interface, "
                    "so it must be a VTI of its own, never a NIC the gateway lives on",
                    f'a name no NIC uses like "vti-aws{i + 1}"',
                )
        if gateway.private_ip not in subnet:
            self.problem(
                f"{p}.gateway.private_ip",
                f"{gateway.private_ip} is outside linode.subnet_cidr {subnet}",
                f"an address of {subnet} like {next(subnet.hosts())}",
            )
        if not any(gateway.vlan_address.ip in net for net in vlan_cidrs):
            self.problem(
                f"{p}.gateway.vlan_address",
                f"{gateway.vlan_address.ip} is in none of linode.vlan_cidrs",
                "the gateway's VLAN address inside a VLAN CIDR that AWS routes back, like 172.16.1.1/24",
            )
        if mss > mtu - 40:
            self.problem(
                f"{p}.tcp_mss",
                f"{mss} does not fit tunnel_mtu {mtu} (IPv4 + TCP headers take 40)",
                f"at most {mtu - 40} like 1379",
            )
        if failover.primary not in {t.name for t in tunnels}:
            self.problem(
                f"{p}.failover.primary",
                f"{failover.primary!r} names no tunnel",
                " or ".join(repr(t.name) for t in tunnels),
            )
        if failover.probe_timeout_ms < failover.probe_interval_ms:
            log.info(
                "failover probe timeout %d ms is shorter than the interval %d ms",
                failover.probe_timeout_ms,
                failover.probe_interval_ms,
            )


def _to_ipv4(v: Any) -> IPv4Address:
    if not isinstance(v, str):
        raise TypeError
    return IPv4Address(v)


def _to_net(v: Any) -> IPv4Network:
    if not isinstance(v, str) or "/" not in v:
        raise TypeError
    return IPv4Network(v, strict=True)


def _to_interface(v: Any) -> IPv4Interface:
    if not isinstance(v, str) or "/" not in v:
        raise TypeError
    iface = IPv4Interface(v)
    if iface.network.prefixlen >= 31 or iface.ip in (iface.network.network_address, iface.network.broadcast_address):
        raise ValueError
    return iface


def _nonempty_str(v: Any) -> str:
    if not isinstance(v, str) or not v.strip() or any(ord(ch) < 32 for ch in v):
        raise ValueError
    return v


def _ssh_public_key(v: Any) -> str:
    if not isinstance(v, str) or not re.fullmatch(
        r"^(ssh-ed25519|ecdsa-sha2-nistp\d+|ssh-rsa) [A-Za-z0-9+/]+=*( [^\n]*)?$", v
    ):
        raise ValueError
    return v


def _equals(expected: Any) -> Callable[[Any], Any]:
    def convert(v: Any) -> Any:
        if type(v) is not type(expected) or v != expected:
            raise ValueError
        return v

    return convert


def _member(allowed: Any) -> Callable[[Any], Any]:
    def convert(v: Any) -> Any:
        if isinstance(v, bool) or v not in allowed:
            raise ValueError
        return v

    return convert


# ---------------------------------------------------------------------------------------- strongSwan mapping (pure)


def _split_aead(encryption: tuple[str, ...]) -> tuple[list[str], list[str], bool]:
    classic = [ENCRYPTION[e][0] for e in encryption if not ENCRYPTION[e][1]]
    aead = [ENCRYPTION[e][0] for e in encryption if ENCRYPTION[e][1]]
    aead_first = ENCRYPTION[encryption[0]][1]
    return classic, aead, aead_first


def ike_proposals(phase1: PhaseSpec) -> list[str]:
    """IKE proposals equal to what AWS was given. strongSwan cannot mix AEAD and classic ciphers in one proposal, so
    there is one proposal of each kind, in AWS's preference order. Classic: strongSwan derives the PRFs from the
    integrity algorithms. AEAD: no integrity algorithm, so the PRFs are listed explicitly."""
    classic, aead, aead_first = _split_aead(phase1.encryption)
    dh = [DH_GROUPS[g] for g in phase1.dh_groups]
    out = []
    if classic:
        out.append("-".join(classic + [INTEGRITY[i] for i in phase1.integrity] + dh))
    if aead:
        out.append("-".join(aead + [PRF[i] for i in phase1.integrity] + dh))
    return out[::-1] if aead_first and classic else out


def esp_proposals(phase2: PhaseSpec) -> list[str]:
    """ESP proposals with the DH groups, so the CHILD_SA (and every rekey of it) uses PFS as AWS expects; a PFS
    mismatch would only show at the first rekey, an hour after the tunnel came up."""
    classic, aead, aead_first = _split_aead(phase2.encryption)
    dh = [DH_GROUPS[g] for g in phase2.dh_groups]
    out = []
    if classic:
        out.append("-".join(classic + [INTEGRITY[i] for i in phase2.integrity] + dh))
    if aead:
        out.append("-".join(aead + dh))
    return out[::-1] if aead_first and classic else out


@dataclass(frozen=True)
class Lifetimes:
    """charon timers (seconds) with AWS's rekey semantics: rekey between lifetime - margin - margin*fuzz and
    lifetime - margin; hard expiry at the lifetime AWS was given."""

    ike_rekey_time: int
    ike_over_time: int
    ike_rand_time: int
    child_rekey_time: int
    child_life_time: int
    child_rand_time: int


def lifetimes(crypto: CryptoProfile) -> Lifetimes:
    margin = crypto.rekey_margin_seconds
    rand = margin * crypto.rekey_fuzz_percent // 100
    return Lifetimes(
        ike_rekey_time=crypto.phase1.lifetime_seconds - margin,
        ike_over_time=margin,
        ike_rand_time=rand,
        child_rekey_time=crypto.phase2.lifetime_seconds - margin,
        child_life_time=crypto.phase2.lifetime_seconds,
        child_rand_time=rand,
    )


def dpd_delay_seconds(crypto: CryptoProfile) -> int:
    """Liveness check interval: a third of AWS's DPD timeout (AWS itself checks every 10 s against 30 s)."""
    return max(10, crypto.dpd_timeout_seconds // 3)


def retransmit_total_seconds() -> float:
    return sum(RETRANSMIT_TIMEOUT * RETRANSMIT_BASE**n for n in range(RETRANSMIT_TRIES + 1))


# ------------------------------------------------------------------------------------------------------ view models


def _header(plan: GatewayPlan) -> dict:
    return {"stack": plan.stack, "vpn_connection_id": plan.vpn_connection_id, "gateway_label": plan.gateway.label}


def swanctl_view(plan: GatewayPlan) -> dict:
    crypto = plan.crypto
    times = lifetimes(crypto)
    connections = []
    secrets = []
    for t in plan.tunnels:
        connections.append({
            "name": t.name,
            "local_addrs": str(plan.gateway.private_ip),
            "remote_addrs": str(t.outside_ip),
            "local_id": str(plan.gateway.public_ip),
            "remote_id": str(t.outside_ip),
            "proposals": ",".join(ike_proposals(crypto.phase1)),
            "esp_proposals": ",".join(esp_proposals(crypto.phase2)),
            "ike_rekey_time": times.ike_rekey_time,
            "ike_over_time": times.ike_over_time,
            "ike_rand_time": times.ike_rand_time,
            "child_rekey_time": times.child_rekey_time,
            "child_life_time": times.child_life_time,
            "child_rand_time": times.child_rand_time,
            "dpd_delay": dpd_delay_seconds(crypto),
            "dpd_action": GATEWAY_DPD_ACTION[crypto.dpd_timeout_action],
            "aws_dpd_action": crypto.dpd_timeout_action,
            "start_action": GATEWAY_START_ACTION[crypto.startup_action],
            "close_action": GATEWAY_CLOSE_ACTION[crypto.startup_action],
            "aws_startup_action": crypto.startup_action,
            "replay_window": crypto.replay_window,
            "mark": t.mark,
            "interface": t.interface,
            "updown": UPDOWN_COMMAND,
        })  # fmt: skip
        secrets.append({
            "name": f"ike-{t.name}",
            "local_id": str(plan.gateway.public_ip),
            "remote_id": str(t.outside_ip),
            "psk": t.psk.reveal(),
        })  # fmt: skip
    return {"header": _header(plan), "connections": connections, "secrets": secrets}


def charon_view(plan: GatewayPlan | None = None) -> dict:
    return {
        "vici_socket": f"unix://{VICI_SOCKET}",
        "retransmit_timeout": RETRANSMIT_TIMEOUT,
        "retransmit_base": RETRANSMIT_BASE,
        "retransmit_tries": RETRANSMIT_TRIES,
        "retransmit_total": round(retransmit_total_seconds(), 1),
    }


def legacy_view(plan: GatewayPlan) -> dict:
    crypto = plan.crypto
    conns = []
    secrets = []
    for t in plan.tunnels:
        conns.append({
            "name": t.name,
            "left": str(plan.gateway.private_ip),
            "leftid": str(plan.gateway.public_ip),
            "right": str(t.outside_ip),
            "rightid": str(t.outside_ip),
            # `!` = strict: offer exactly these, never charon's defaults.
            "ike": ",".join(ike_proposals(crypto.phase1)) + "!",
            "esp": ",".join(esp_proposals(crypto.phase2)) + "!",
            "ikelifetime": crypto.phase1.lifetime_seconds,
            "lifetime": crypto.phase2.lifetime_seconds,
            "margintime": crypto.rekey_margin_seconds,
            "rekeyfuzz": crypto.rekey_fuzz_percent,
            "dpddelay": dpd_delay_seconds(crypto),
            "dpdaction": GATEWAY_DPD_ACTION[crypto.dpd_timeout_action],
            "auto": LEGACY_AUTO[crypto.startup_action],
            "closeaction": LEGACY_CLOSE_ACTION[crypto.startup_action],
            "replay_window": crypto.replay_window,
            "mark": t.mark,
            "updown": UPDOWN_COMMAND,
        })  # fmt: skip
        secrets.append({"local_id": str(plan.gateway.public_ip), "remote_id": str(t.outside_ip), "psk": t.psk.reveal()})
    return {"header": _header(plan), "conns": conns, "secrets": secrets}


def agent_config(plan: GatewayPlan) -> dict:
    """/etc/hybrid-vpn/agent.json exactly as docs/contracts.md §2 lays it out. No secrets."""
    f = plan.failover
    return {
        "version": AGENT_CONFIG_VERSION,
        "public_interface": plan.gateway.public_interface,
        "vlan_interface": plan.gateway.vlan_interface,
        "gateway_vlan_address": str(plan.gateway.vlan_address),
        "local_outside_ip": str(plan.gateway.private_ip),
        "aws_cidrs": [str(n) for n in plan.aws_cidrs],
        "vlan_cidrs": [str(n) for n in plan.vlan_cidrs],
        "tunnels": [
            {
                "name": t.name,
                "interface": t.interface,
                "mark": t.mark,
                "remote_outside_ip": str(t.outside_ip),
                "gateway_inside_cidr": f"{t.gateway_inside_ip}/{t.inside_cidr.prefixlen}",
                "aws_inside_ip": str(t.aws_inside_ip),
            }
            for t in plan.tunnels
        ],
        "mtu": plan.tunnel_mtu,
        "primary_tunnel": f.primary,
        "probe": {
            "interval_ms": f.probe_interval_ms,
            "timeout_ms": f.probe_timeout_ms,
            "down_after": f.down_after,
            "up_after": f.up_after,
            "failback_hold_seconds": f.failback_hold_seconds,
            "extra_targets": [str(a) for a in f.extra_probe_targets],
        },
        "ownership": dict(OWNERSHIP),
        "paths": {
            "nft_ruleset": NFT_RULESET_PATH,
            "state_dir": STATE_DIR,
            "metrics_file": METRICS_FILE,
            "vici_socket": VICI_SOCKET,
        },
    }


def agent_view(plan: GatewayPlan) -> dict:
    return {"agent": agent_config(plan)}


def nftables_view(plan: GatewayPlan) -> dict:
    return {
        "header": _header(plan),
        "table": OWNERSHIP["nft_table"],
        "public_interface": plan.gateway.public_interface,
        "vlan_interface": plan.gateway.vlan_interface,
        "vti_interfaces": [t.interface for t in plan.tunnels],
        "aws_cidrs": [str(n) for n in plan.aws_cidrs],
        "vlan_cidrs": [str(n) for n in plan.vlan_cidrs],
        "tcp_mss": plan.tcp_mss,
        "ike_ports": [IKE_PORT, NAT_T_PORT],
        "tunnel_outside_ips": [str(t.outside_ip) for t in plan.tunnels],
        # Each tunnel's inside /30 is believed only on that tunnel's VTI (the probes' replies come from there).
        "tunnel_insides": [{"interface": t.interface, "inside_cidr": str(t.inside_cidr)} for t in plan.tunnels],
        "admin_cidrs": None if plan.admin_cidrs is None else [str(n) for n in plan.admin_cidrs],
        "ssh_port": SSH_PORT,
        "link_local": str(LINK_LOCAL),
        "subnet_cidr": str(plan.subnet_cidr),
    }


def unit_view() -> dict:
    """The units depend on no plan value: cloud-init writes them before any tunnel exists."""
    metrics_dir = METRICS_FILE.rsplit("/", 1)[0]
    return {
        "failover_unit": FAILOVER_UNIT,
        "guard_unit": GUARD_UNIT,
        "nft": NFT_PATH,
        "nft_ruleset": NFT_RULESET_PATH,
        "vpnctl": VPNCTL_PATH,
        "agent_config": AGENT_CONFIG_PATH,
        "state_dir": STATE_DIR,
        "state_dir_name": STATE_DIR.rsplit("/", 1)[1],
        "metrics_dir": metrics_dir,
    }


def sysctl_view() -> dict:
    return {
        "settings": [
            # Not net.ipv4.ip_forward: the agent turns forwarding on in its reconcile, after hybrid-vpn-guard.service
            # loaded the ruleset at boot (from sysctl.d it was on before any leak guard existed).
            # rp_filter stays strict on the public NIC; the agent loosens each VTI (AWS may answer on the other
            # tunnel), which is enough because the kernel uses max(all, interface).
            ("net.ipv4.conf.default.rp_filter", 2, "loose on interfaces created later (the VTIs)"),
            ("net.ipv4.conf.all.send_redirects", 0, "a VPN gateway must not redirect VLAN hosts around itself"),
            ("net.ipv4.conf.default.send_redirects", 0, "same for interfaces created later"),
            ("net.ipv4.conf.all.accept_redirects", 0, "routes come from the agent only"),
        ]
    }  # fmt: skip
