"""The gateway plan: the ``host_config`` stack output (docs/contracts.md §1) validated into plain frozen dataclasses.

Three parts, all pure (no I/O, no Pulumi types):
- ``GatewayPlan.from_host_config(obj)``: validation. Every problem is collected and reported at once, each naming the
  field path, the rule, and an example of a right value. PSK values are never echoed.
- the strongSwan mapping: AWS algorithm names -> proposal keywords, AWS tunnel options -> charon lifetimes and actions.
- the view models: one plain dict per template, so the templates only format.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any

from hostconfig import gateway_paths as gp
from hostconfig.agent import config as agentcfg

# The rules the program validated are checked again here, by the same code (the input may come from any program
# version, or by hand).
from hostconfig.contract import rules
from hostconfig.contract.charon import Section
from hostconfig.contract.codec import field_table, version_problem
from hostconfig.contract.connection import Connection, tunnels_of
from hostconfig.contract.crypto import CryptoProfile, PhaseProposal, gateway_settings, read_crypto
from hostconfig.contract.reader import (
    MISSING,
    NETWORK_RULE,
    REQUIRED,
    ContractError,
    Problem,
    Reader,
    RuleBroken,
    Unknown,
    ruled,
    to_aws_cidr,
    to_inside_cidr,
    to_ipv4,
    to_network,
    to_private_network,
    to_ssh_public_key,
    to_vlan_address,
    type_name,
)
from hostconfig.contract.rules import LINK_LOCAL
from infra.secret import Secret

log = logging.getLogger(__name__)

SCHEMA_KIND = "hybrid-vpn/host-config"
SCHEMA_VERSION = 1

# --- What the gateway agent owns and where things live (docs/contracts.md §2 and §4). ---
OWNERSHIP = {"route_table": 1519, "route_protocol": 157, "rule_priority": 10100, "nft_table": "hybrid_vpn"}
# Where things live on the gateway: hostconfig/gateway_paths.py (gp), the one table.
IKE_PORT, NAT_T_PORT = 500, 4500
SSH_PORT = 22

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

# What charon does for each AWS action (GATEWAY_DPD_ACTION, ...): hostconfig/contract/charon.py, beside the table
# rows that apply them; imported here for the plan's readers.
# IKEv2 declares a peer dead only when its retransmissions time out (the DPD timeout is an IKEv1 setting). These
# charon settings bound that schedule: 2 + 2.8 + 3.9 + 5.5 = 14.2 s, so dpd_delay (a third of AWS's DPD timeout)
# plus the retransmissions stay below AWS's DPD timeout (>= 30 s): both ends notice a dead peer at about the same time.
RETRANSMIT_TIMEOUT = 2.0
RETRANSMIT_BASE = 1.4
RETRANSMIT_TRIES = 3



class PlanError(ContractError):
    """The host_config object is unusable. ``problems`` lists every finding (``host_config.x.y`` keys), one a line."""

    subject = "host_config"


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


# The one crypto profile (hostconfig/contract/crypto.py); PhaseSpec is its phase under the plan's older name.
PhaseSpec = PhaseProposal


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
    # The VPN connections with their tunnels (hostconfig/contract/connection.py); host_config version 1 has one.
    connections: tuple[Connection[TunnelSpec], ...]
    tunnel_mtu: int
    tcp_mss: int
    failover: FailoverSpec
    # Who may SSH to the gateway (the stack's admin_cidrs); None when host_config does not carry them (older
    # programs): the input policy then accepts SSH from any source and leaves the filtering to the Cloud Firewall.
    admin_cidrs: tuple[IPv4Network, ...] | None = None
    # routing.mode bgp (issue 16); None: static routes, no FRR (host_config of a static stack has no routing key).
    routing: RoutingSpec | None = None

    @classmethod
    def from_host_config(cls, obj: dict) -> GatewayPlan:
        """Validate the ``host_config`` stack output; raise PlanError listing every problem found."""
        return _PlanBuilder().build(obj)

    @property
    def tunnels(self) -> tuple[TunnelSpec, ...]:
        return tunnels_of(self.connections)

    def tunnel(self, name: str) -> TunnelSpec:
        for tunnel in self.tunnels:
            if tunnel.name == name:
                return tunnel
        raise KeyError(name)

    def secrets(self) -> tuple[str, ...]:
        """Every secret value in the plan (for tests and log scrubbing)."""
        return tuple(t.psk.reveal() for t in self.tunnels)


# ------------------------------------------------------------------------------------------------------ validation
# Read through the contract's collecting reader with its rules (hostconfig/contract): the program checked the same
# rules at preview; they are checked again here because host_config may come from any program version, or by hand.
# Unknown keys are tolerated (a newer program may add fields) but logged: they may also be typos.
_WARN = Unknown.WARN
# The keys of host_config's gateway, tunnel and failover objects are their specs' fields (the one codec).
_GATEWAY_FIELDS = field_table(GatewaySpec)
_TUNNEL_FIELDS = field_table(TunnelSpec)
_FAILOVER_FIELDS = field_table(FailoverSpec)
_TOP_KEYS = ("kind", "version", "stack", "gateway", "aws", "linode", "crypto", "tunnels", "tunnel_mtu", "tcp_mss",
             "failover", "admin_cidrs")


def _required(keys: tuple[str, ...]) -> dict[str, Any]:
    return dict.fromkeys(keys, REQUIRED)


def _nonempty_str(v: Any) -> str:
    if not isinstance(v, str) or not v.strip() or any(ord(ch) < 32 for ch in v):
        raise ValueError
    return v


def _equals(expected: Any) -> Callable[[Any], Any]:
    def convert(v: Any) -> Any:
        if type(v) is not type(expected) or v != expected:
            raise ValueError
        return v

    return convert


def _psk(v: Any) -> Secret:
    if problem := rules.psk_problem(v):
        raise RuleBroken(problem)
    return Secret(v)


class _PlanBuilder:
    """Reads the host_config object, collecting every problem instead of stopping at the first."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def build(self, obj: Any) -> GatewayPlan:
        if not isinstance(obj, dict):
            raise PlanError([Problem("host_config", f"got {type_name(obj)}; expected the JSON object exported as "
                                     "stack output host_config")])
        r = Reader(self.problems, "host_config", obj, {**_required(_TOP_KEYS), "admin_cidrs": None, "routing": None},
                   unknown=_WARN)
        r.check("kind", _equals(SCHEMA_KIND), f'"{SCHEMA_KIND}"', SCHEMA_KIND)
        r.check("version", ruled(lambda v: version_problem(v, SCHEMA_VERSION, "this renderer")), "a version",
                str(SCHEMA_VERSION))
        stack = r.check("stack", ruled(rules.stack_name_problem), "a stack name", "dev")
        gateway = self.gateway(r)
        aws = r.sub("aws", _required(("region", "vpn_connection_id", "vgw_id", "cidrs")), unknown=_WARN,
                    example='{"region": ..., "cidrs": [...]}')
        aws_region = aws.check("region", _nonempty_str, "a region name", "us-east-1")
        vpn_id = aws.check("vpn_connection_id", _nonempty_str, "an id", "vpn-0123456789abcdef0")
        vgw_id = aws.check("vgw_id", _nonempty_str, "an id", "vgw-0123456789abcdef0")
        aws_cidrs = aws.list_of("cidrs", to_aws_cidr, NETWORK_RULE, '["10.0.0.0/16"]', 1, rules.MAX_AWS_CIDRS,
                                why=rules.MAX_AWS_CIDRS_WHY)
        linode = r.sub("linode", _required(("region", "vlan_label", "vlan_cidrs", "subnet_cidr")), unknown=_WARN,
                       example='{"vlan_cidrs": [...], ...}')
        linode_region = linode.check("region", _nonempty_str, "a region name", "us-ord")
        vlan_label = linode.string("vlan_label", rules.VLAN_LABEL)
        vlan_cidrs = linode.list_of("vlan_cidrs", to_private_network, NETWORK_RULE, '["172.16.0.0/12"]', 1,
                                    rules.MAX_ROUTES_TO_AWS, why=rules.MAX_ROUTES_TO_AWS_WHY)
        subnet_cidr = linode.check("subnet_cidr", to_private_network, NETWORK_RULE, "10.8.0.0/24")
        crypto = read_crypto(r, "crypto", unknown=_WARN, host_config=True)
        tunnels = self.tunnels(r)
        mtu = r.integer("tunnel_mtu", rules.TUNNEL_MTU)
        mss = r.integer("tcp_mss", rules.TCP_MSS)
        failover = self.failover(r)
        admin_cidrs = self.admin_cidrs(r)
        routing = read_routing(r, vlan_cidrs)

        if not self.problems:
            self.cross_checks(r, gateway, aws_cidrs, vlan_cidrs, subnet_cidr, tunnels, mtu, mss, failover)
        if self.problems:
            raise PlanError(self.problems)
        plan = GatewayPlan(
            stack=stack, gateway=gateway, aws_region=aws_region, vpn_connection_id=vpn_id, vgw_id=vgw_id,
            aws_cidrs=aws_cidrs, linode_region=linode_region, vlan_label=vlan_label, vlan_cidrs=vlan_cidrs,
            subnet_cidr=subnet_cidr, crypto=crypto, connections=(Connection(vpn_id, tunnels),), tunnel_mtu=mtu,
            tcp_mss=mss, failover=failover, admin_cidrs=admin_cidrs, routing=routing,
        )  # type: ignore[arg-type]  # fmt: skip
        log.info("plan for stack %s: %d tunnels, %d AWS CIDRs, %d VLAN CIDRs", stack, len(plan.tunnels),
                 len(plan.aws_cidrs), len(plan.vlan_cidrs))
        return plan

    def admin_cidrs(self, r: Reader) -> tuple[IPv4Network, ...] | None:
        """Optional: a program that does not export them yet gets SSH open to any source in the gateway's input policy
        (the Cloud Firewall still filters), and a warning."""
        if not r.has("admin_cidrs"):
            log.warning("host_config carries no admin_cidrs: the gateway's input policy accepts SSH from any source "
                        "(only the Cloud Firewall filters it)")
            return None
        return r.list_of("admin_cidrs", to_network, NETWORK_RULE, '["192.0.2.0/24"]', 0, 100)

    def gateway(self, r: Reader) -> GatewaySpec | None:
        g = r.sub("gateway", _GATEWAY_FIELDS, unknown=_WARN, example='{"public_ip": "203.0.113.10", ...}')
        label = g.string("label", rules.HOSTNAME)
        public_ip = g.ipv4("public_ip", "203.0.113.10")
        private_ip = g.ipv4("private_ip", "10.8.0.2")
        public_if = g.string("public_interface", rules.INTERFACE_NAME, "eth0")
        vlan_if = g.string("vlan_interface", rules.INTERFACE_NAME, "eth1")
        vlan_address = g.check("vlan_address", to_vlan_address, "an IPv4 address with prefix length", "172.16.1.1/24")
        ssh_key = g.check("ssh_host_public_key", to_ssh_public_key, "an OpenSSH public key line",
                          "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA... hybrid-vpn-dev-gw")
        if None in (label, public_ip, private_ip, public_if, vlan_if, vlan_address, ssh_key):
            return None
        if problem := rules.second_nic_problem(public_if, vlan_if):
            g.fail("vlan_interface", problem, "eth1")
        return GatewaySpec(label, public_ip, private_ip, public_if, vlan_if, vlan_address, ssh_key)  # type: ignore

    def tunnels(self, r: Reader) -> tuple[TunnelSpec, ...] | None:
        items = r.items("tunnels", 2, 2, "the VPN connection's two tunnels, tunnel1 first")
        if items is None:
            return None
        parsed = [self.tunnel(r, item, i) for i, item in enumerate(items)]
        if None in parsed:
            return None
        tunnels = tuple(parsed)
        for attr, example in (("name", "tunnel1 and tunnel2"), ("interface", "vti-aws1 and vti-aws2"),
                              ("mark", "100 and 200"), ("outside_ip", "the two outside IPs AWS gives"),
                              ("inside_cidr", "169.254.10.0/30 and 169.254.11.0/30")):
            if found := rules.distinct_problem(attr, [getattr(t, attr) for t in tunnels]):
                r.fail(f"tunnels[{found[0]}].{attr}", found[1], example)
        return tunnels  # type: ignore[return-value]

    def tunnel(self, r: Reader, item: Any, i: int) -> TunnelSpec | None:
        n = i + 1
        t = r.element("tunnels", i, item, _TUNNEL_FIELDS, unknown=_WARN,
                      example='{"name": "tunnel1", "outside_ip": ..., ...}')
        name = t.string("name", rules.TUNNEL_NAME, f"tunnel{n}")
        interface = t.string("interface", rules.INTERFACE_NAME, f"vti-aws{n}")
        outside = t.ipv4("outside_ip", f"198.51.100.{n}")
        inside = t.check("inside_cidr", to_inside_cidr, NETWORK_RULE, f"169.254.1{i}.0/30")
        aws_inside = t.ipv4("aws_inside_ip", f"169.254.1{i}.1")
        gw_inside = t.ipv4("gateway_inside_ip", f"169.254.1{i}.2")
        mark = t.integer("mark", rules.MARK)
        # Never echoed: it is (or was meant to be) a secret.
        psk = t.check("psk", _psk, "a pre-shared key", rules.PSK_EXAMPLE)
        if None in (name, interface, outside, inside, aws_inside, gw_inside, mark, psk):
            return None
        aws_ip, gateway_ip = rules.inside_addresses(inside)
        wrong = rules.inside_address_problems(inside, aws_inside, gw_inside)
        for key, right in (("aws", aws_ip), ("gateway", gateway_ip)):
            if key in wrong:
                t.fail(f"{key}_inside_ip", wrong[key], str(right))
        return TunnelSpec(name, interface, outside, inside, aws_inside, gw_inside, psk, mark)  # type: ignore

    def failover(self, r: Reader) -> FailoverSpec | None:
        f = r.sub("failover", _FAILOVER_FIELDS, unknown=_WARN, example='{"primary": "tunnel1", ...}')
        primary = f.string("primary", rules.TUNNEL_NAME)
        interval = f.integer("probe_interval_ms", rules.PROBE_INTERVAL_MS)
        timeout = f.integer("probe_timeout_ms", rules.PROBE_TIMEOUT_MS)
        down = f.integer("down_after", rules.DOWN_AFTER)
        up = f.integer("up_after", rules.UP_AFTER)
        hold = f.integer("failback_hold_seconds", rules.FAILBACK_HOLD_SECONDS)
        targets = f.list_of("extra_probe_targets", to_ipv4, "an IPv4 address", '["10.0.4.85"]', 0,
                            rules.MAX_EXTRA_PROBE_TARGETS)
        if None in (primary, interval, timeout, down, up, hold, targets):
            return None
        return FailoverSpec(primary, interval, timeout, down, up, hold, targets)  # type: ignore[arg-type]

    def cross_checks(self, r: Reader, gateway: GatewaySpec, aws_cidrs: tuple[IPv4Network, ...],
                     vlan_cidrs: tuple[IPv4Network, ...], subnet: IPv4Network, tunnels: tuple[TunnelSpec, ...],
                     mtu: int, mss: int, failover: FailoverSpec) -> None:
        for j, vlan in enumerate(vlan_cidrs):
            for aws in aws_cidrs:
                if problem := rules.sides_overlap_problem(vlan, aws):
                    r.fail(f"linode.vlan_cidrs[{j}]", problem, "10.0.0.0/16 and 172.16.0.0/12")
        for i, aws in enumerate(aws_cidrs):
            if problem := rules.sides_overlap_problem(subnet, aws):
                r.fail(f"aws.cidrs[{i}]", f"{problem}: the gateway's own subnet linode.subnet_cidr (its default "
                       "route would break)", "an AWS network outside the gateway's subnet")
            for t in tunnels:
                if t.outside_ip in aws:
                    r.fail(f"aws.cidrs[{i}]", f"{aws} contains {t.name}'s outside_ip {t.outside_ip}: the tunnel "
                           "endpoints must stay reachable in clear", "AWS private networks only")
        nics = {gateway.public_interface: "gateway.public_interface", gateway.vlan_interface: "gateway.vlan_interface"}
        for i, t in enumerate(tunnels):
            if problem := rules.tunnel_interface_problem(t.interface, nics):
                r.fail(f"tunnels[{i}].interface", problem, f"vti-aws{i + 1}")
        if gateway.private_ip not in subnet:
            r.fail("gateway.private_ip", f"{gateway.private_ip} is outside linode.subnet_cidr {subnet}",
                   str(next(subnet.hosts())))
        if problem := rules.vlan_address_outside_problem(gateway.vlan_address, vlan_cidrs):
            r.fail("gateway.vlan_address", problem, "172.16.1.1/24 with vlan_cidrs [172.16.0.0/12]")
        if problem := rules.mss_problem(mss, mtu):
            r.fail("tcp_mss", problem, str(mtu - 40))
        if problem := rules.primary_tunnel_problem(failover.primary, (t.name for t in tunnels)):
            r.fail("failover.primary", problem, " or ".join(t.name for t in tunnels))
        if failover.probe_timeout_ms < failover.probe_interval_ms:
            log.info("failover probe timeout %d ms is shorter than the interval %d ms", failover.probe_timeout_ms,
                     failover.probe_interval_ms)


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


def retransmit_total_seconds() -> float:
    return sum(RETRANSMIT_TIMEOUT * RETRANSMIT_BASE**n for n in range(RETRANSMIT_TRIES + 1))


# ------------------------------------------------------------------------------------------------------ view models


def _header(plan: GatewayPlan) -> dict:
    return {"stack": plan.stack, "vpn_connection_id": plan.vpn_connection_id, "gateway_label": plan.gateway.label}


def swanctl_view(plan: GatewayPlan) -> dict:
    crypto = plan.crypto
    # The tunnel options' lines (TUNNEL_OPTIONS), the same in both tunnels.
    ike_settings = gateway_settings(crypto, Section.IKE)
    child_settings = gateway_settings(crypto, Section.CHILD)
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
            "child_life_time": crypto.phase2.lifetime_seconds,
            "ike_settings": ike_settings,
            "child_settings": child_settings,
            "mark": t.mark,
            "interface": t.interface,
            "updown": gp.UPDOWN_COMMAND,
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
        "vici_socket": f"unix://{gp.VICI_SOCKET}",
        "retransmit_timeout": RETRANSMIT_TIMEOUT,
        "retransmit_base": RETRANSMIT_BASE,
        "retransmit_tries": RETRANSMIT_TRIES,
        "retransmit_total": round(retransmit_total_seconds(), 1),
    }


def legacy_view(plan: GatewayPlan) -> dict:
    crypto = plan.crypto
    settings = gateway_settings(crypto, Section.LEGACY)  # the tunnel options' lines (TUNNEL_OPTIONS)
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
            "settings": settings,
            "mark": t.mark,
            "updown": gp.UPDOWN_COMMAND,
        })  # fmt: skip
        secrets.append({"local_id": str(plan.gateway.public_ip), "remote_id": str(t.outside_ip), "psk": t.psk.reveal()})
    return {"header": _header(plan), "conns": conns, "secrets": secrets}


def agent_config(plan: GatewayPlan) -> dict:
    """/etc/hybrid-vpn/agent.json exactly as docs/contracts.md §2 lays it out, built as the agent's own definition
    (hostconfig/agent/config.py AgentConfig) and written through the contracts' codec, as the agent reads it. No
    secrets. The ``bgp`` section only in routing.mode bgp (a static stack's agent.json is unchanged)."""
    f = plan.failover
    tunnels = tuple(
        agentcfg.TunnelConfig(t.name, t.interface, t.mark, t.outside_ip,
                              IPv4Interface(f"{t.gateway_inside_ip}/{t.inside_cidr.prefixlen}"), t.aws_inside_ip)
        for t in plan.tunnels)
    config = agentcfg.AgentConfig(
        version=agentcfg.SUPPORTED_VERSION, public_interface=plan.gateway.public_interface,
        vlan_interface=plan.gateway.vlan_interface, gateway_vlan_address=plan.gateway.vlan_address,
        local_outside_ip=plan.gateway.private_ip, aws_cidrs=plan.aws_cidrs, vlan_cidrs=plan.vlan_cidrs,
        connections=(Connection(plan.vpn_connection_id, tunnels),), mtu=plan.tunnel_mtu, primary_tunnel=f.primary,
        probe=agentcfg.ProbeConfig(f.probe_interval_ms, f.probe_timeout_ms, f.down_after, f.up_after,
                                   f.failback_hold_seconds, f.extra_probe_targets),
        ownership=agentcfg.Ownership(**OWNERSHIP),
        paths=agentcfg.Paths(Path(gp.NFT_RULESET.path), Path(gp.STATE_DIR.path), Path(gp.METRICS_FILE),
                             Path(gp.VICI_SOCKET)),
        bgp=None if plan.routing is None else agentcfg.BgpConfig(plan.routing.customer_asn),
    )
    return agentcfg.to_json(config)


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
    metrics_dir = gp.METRICS_DIR.path
    return {
        "failover_unit": gp.FAILOVER_UNIT,
        "guard_unit": gp.GUARD_UNIT,
        "nft": gp.NFT,
        "nft_ruleset": gp.NFT_RULESET.path,
        "vpnctl": gp.VPNCTL.path,
        "agent_config": gp.AGENT_CONFIG.path,
        "state_dir": gp.STATE_DIR.path,
        "state_dir_name": gp.STATE_DIR.path.rsplit("/", 1)[1],
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


# ------------------------------------------------------------------------------ BGP mode (issue 16): its own section
@dataclass(frozen=True)
class RoutingSpec:
    customer_asn: int  # the gateway's ASN (the customer gateway's)
    amazon_side_asn: int  # the VGW's


def read_routing(r: Reader, vlan_cidrs: tuple[IPv4Network, ...] | None) -> RoutingSpec | None:
    """host_config.routing: absent for a static stack; present only with mode bgp."""
    if not r.has("routing"):
        return None
    s = r.sub("routing", _required(("mode", "customer_asn", "amazon_side_asn")), unknown=_WARN,
              example='{"mode": "bgp", "customer_asn": 65000, "amazon_side_asn": 64512}')
    s.choice("mode", ("bgp",), "host_config carries routing only in bgp mode", "bgp")
    amazon = s.get("amazon_side_asn")
    if amazon is not MISSING and not (isinstance(amazon, int) and not isinstance(amazon, bool)
                                      and rules.is_private_asn(amazon)):
        s.fail("amazon_side_asn", f"{amazon!r} is not a private ASN (64512-65534 or 4200000000-4294967294)", "64512")
        amazon = None
    customer = s.get("customer_asn")
    if customer is not MISSING and (problem := rules.customer_asn_problem(customer, amazon)):
        s.fail("customer_asn", problem, str(rules.DEFAULT_CUSTOMER_ASN))
        customer = None
    for i, net in enumerate(vlan_cidrs or ()):
        if problem := rules.bgp_vlan_cidr_problem(net):
            r.fail(f"linode.vlan_cidrs[{i}]", problem, '["172.16.0.0/12"]')
    if vlan_cidrs and (problem := rules.bgp_route_limit_problem(vlan_cidrs)):
        r.fail("linode.vlan_cidrs", problem, '["172.16.0.0/12"]')
    if not s.ok or customer in (None, MISSING) or amazon in (None, MISSING):
        return None
    return RoutingSpec(customer, amazon)


def frr_view(plan: GatewayPlan) -> dict:
    """The gateway's FRR (bgpd) configuration: one eBGP neighbor per tunnel at AWS's inside address, sourced from the
    gateway's inside address on that tunnel's VTI, AWS's timers. The primary tunnel starts as primary, the other as
    standby; from then on the agent switches the route-maps (hostconfig/agent/bgp.py)."""
    routing = plan.routing
    if routing is None:
        raise ValueError("frr_view needs a plan in routing.mode bgp")
    neighbors = [{
        "tunnel": t.name,
        "interface": t.interface,
        "address": str(t.aws_inside_ip),
        "local_address": str(t.gateway_inside_ip),
        "route_map_out": rules.ROUTE_MAP_PRIMARY if t.name == plan.failover.primary else rules.ROUTE_MAP_STANDBY,
    } for t in plan.tunnels]  # fmt: skip
    return {
        "header": _header(plan),
        "asn": routing.customer_asn,
        "amazon_side_asn": routing.amazon_side_asn,
        "router_id": str(plan.gateway.private_ip),
        "keepalive": rules.AWS_BGP_KEEPALIVE_SECONDS,
        "hold": rules.AWS_BGP_HOLD_SECONDS,
        "vlan_cidrs": [str(n) for n in plan.vlan_cidrs],
        "halves": [str(h) for n in plan.vlan_cidrs for h in rules.more_specific_halves(n)],
        "aws_cidrs": [str(n) for n in plan.aws_cidrs],
        "prepend": " ".join([str(routing.customer_asn)] * rules.STANDBY_PREPEND),
        "route_maps": {
            "primary": rules.ROUTE_MAP_PRIMARY,
            "standby": rules.ROUTE_MAP_STANDBY,
            "more_specific": rules.ROUTE_MAP_PRIMARY_MORE_SPECIFIC,
            "from_aws": rules.ROUTE_MAP_FROM_AWS,
        },
        "neighbors": neighbors,
    }

