"""The agent configuration (/etc/hybrid-vpn/agent.json, contracts §2) parsed into frozen dataclasses.

Everything is validated before anything is applied: an unknown key, a missing key, a bad value or a corrupt file is a
ConfigError that lists every problem, each naming the key, the rule and an example of a right value. The rules are the
contract's (hostconfig/contract/rules.py), the same the program checks at preview and the renderer checks again.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any

from hostconfig import gateway_paths as gp
from hostconfig.contract import rules
from hostconfig.contract.codec import OPTIONAL, encode, field_table, version_problem
from hostconfig.contract.connection import SINGLE, Connection, tunnels_of
from hostconfig.contract.reader import (
    MISSING,
    NETWORK_RULE,
    ContractError,
    Problem,
    Reader,
    ruled,
    to_aws_cidr,
    to_interface,
    to_ipv4,
    to_private_network,
    to_vlan_address,
)
from hostconfig.contract.rules import IntLimit, NamePattern

DEFAULT_CONFIG_PATH = Path(gp.AGENT_CONFIG.path)
SUPPORTED_VERSION = 1

# The start of a right file, for error messages about a file that is not a JSON object at all.
_EXAMPLE = '{"version": 1, "public_interface": "eth0", ...} (docs/contracts.md section 2)'


DEFAULT_REPAIR_HOLD_SECONDS = 5


class ConfigError(ContractError):
    """The agent configuration is unusable; each problem names its agent.json key, the rule and a right value."""

    subject = "the agent configuration (agent.json)"


@dataclass(frozen=True)
class TunnelConfig:
    name: str
    interface: str
    mark: int
    remote_outside_ip: IPv4Address
    gateway_inside_cidr: IPv4Interface
    aws_inside_ip: IPv4Address

    @property
    def gateway_inside_ip(self) -> IPv4Address:
        return self.gateway_inside_cidr.ip


@dataclass(frozen=True)
class ProbeConfig:
    interval_ms: int
    timeout_ms: int
    down_after: int
    up_after: int
    failback_hold_seconds: int
    extra_targets: tuple[IPv4Address, ...]
    # How long a tunnel must be probe-dead with its CHILD_SA installed before the daemon rebuilds it (the value is
    # explained at health.RepairPolicy). Optional: agent.json files written before it existed stay valid, and the
    # renderer writes it only when it is not the default.
    repair_hold_seconds: int = field(default=DEFAULT_REPAIR_HOLD_SECONDS, metadata={OPTIONAL: True})


@dataclass(frozen=True)
class Ownership:
    route_table: int
    route_protocol: int
    rule_priority: int
    nft_table: str


@dataclass(frozen=True)
class Paths:
    nft_ruleset: Path
    state_dir: Path
    metrics_file: Path
    vici_socket: Path


@dataclass(frozen=True)
class BgpConfig:
    """routing.mode bgp (issue 16): the daemon steers AWS through the gateway's bgpd (hostconfig/agent/bgp.py)."""

    customer_asn: int  # `router bgp <asn>` in frr.conf
    vty_socket: Path | None = field(default=None, metadata={OPTIONAL: True})  # FRR's vty socket dir; None: FRR's
    # default (the gateway's frr.service)


@dataclass(frozen=True)
class AgentConfig:
    version: int
    public_interface: str
    vlan_interface: str
    gateway_vlan_address: IPv4Interface
    local_outside_ip: IPv4Address
    aws_cidrs: tuple[IPv4Network, ...]
    vlan_cidrs: tuple[IPv4Network, ...]
    # The VPN connection(s) with their tunnels (hostconfig/contract/connection.py); agent.json version 1 has one,
    # written as its flat "tunnels" list.
    connections: tuple[Connection[TunnelConfig], ...] = field(metadata={"key": "tunnels"})
    mtu: int
    primary_tunnel: str
    probe: ProbeConfig
    ownership: Ownership
    paths: Paths
    bgp: BgpConfig | None = field(default=None, metadata={OPTIONAL: True})  # absent: static routing, no FRR

    @property
    def tunnels(self) -> tuple[TunnelConfig, ...]:
        return tunnels_of(self.connections)

    def tunnel(self, name: str) -> TunnelConfig:
        for tunnel in self.tunnels:
            if tunnel.name == name:
                return tunnel
        raise KeyError(name)

    def tunnel_by_interface(self, interface: str) -> TunnelConfig | None:
        for tunnel in self.tunnels:
            if tunnel.interface == interface:
                return tunnel
        return None

    @property
    def tunnel_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tunnels)


# Each object's keys are its dataclass's fields (the contracts' one codec, hostconfig/contract/codec.py).
_TUNNEL_FIELDS = field_table(TunnelConfig)
_PROBE_FIELDS = field_table(ProbeConfig)
_OWNERSHIP_FIELDS = field_table(Ownership)
_PATHS_FIELDS = field_table(Paths)
_FIELDS = field_table(AgentConfig)
_BGP_FIELDS = field_table(BgpConfig)

_DISTINCT = {"name": "tunnel1 and tunnel2", "interface": "vti-aws1 and vti-aws2", "mark": "100 and 200",
             "remote_outside_ip": "198.51.100.1 and 198.51.100.2"}
# Route tables the kernel reserves: unspec, default, main, local.
_RESERVED_TABLES = {0, 253, 254, 255}
_ROUTE_TABLE = IntLimit(1, 0xFFFFFFFF, "", 1519, "not 0, 253 default, 254 main, 255 local: the kernel's")
# 0-4 are the kernel's own protocols (unspec, redirect, kernel, boot, static).
_ROUTE_PROTOCOL = IntLimit(5, 255, "", 157, "0-4 are the kernel's own protocols")
# 0 is the local-table rule, 32766/32767 the main/default rules.
_RULE_PRIORITY = IntLimit(1, 32765, "", 10100, "0, 32766 and 32767 are the kernel's rules")
_NFT_TABLE = NamePattern(re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,31}$"),
                         "an nftables table name (a letter, then letters, digits, _)", "hybrid_vpn")


def _absolute_path(value: Any) -> Path:
    if not isinstance(value, str) or not value.startswith("/") or "\0" in value or len(value) > 4096:
        raise ValueError
    return Path(value)


def _tunnel(r: Reader, index: int, raw: Any, nics: dict[str, str]) -> TunnelConfig | None:
    n = index + 1
    t = r.element("tunnels", index, raw, _TUNNEL_FIELDS,
                  example=f'{{"name": "tunnel{n}", "interface": "vti-aws{n}", ...}}')
    name = t.string("name", rules.TUNNEL_NAME, f"tunnel{n}")
    interface = t.string("interface", rules.INTERFACE_NAME, f"vti-aws{n}")
    if interface is not None and (problem := rules.tunnel_interface_problem(interface, nics)):
        t.fail("interface", problem, f"vti-aws{n}")
        interface = None
    mark = t.integer("mark", rules.MARK)
    remote = t.ipv4("remote_outside_ip", f"198.51.100.{n}")
    inside = t.check("gateway_inside_cidr", to_interface, "an IPv4 address with prefix length",
                     f"169.254.1{index}.2/30")
    if inside is not None and (problem := rules.inside_cidr_problem(inside.network)):
        t.fail("gateway_inside_cidr", problem, f"169.254.1{index}.2/30")
        inside = None
    aws_inside = t.ipv4("aws_inside_ip", f"169.254.1{index}.1")
    if inside is not None and aws_inside is not None:
        aws_ip, gateway_ip = rules.inside_addresses(inside.network)
        wrong = rules.inside_address_problems(inside.network, aws_inside, inside.ip)
        if "gateway" in wrong:
            t.fail("gateway_inside_cidr", wrong["gateway"], f"{gateway_ip}/30")
        if "aws" in wrong:
            t.fail("aws_inside_ip", wrong["aws"], str(aws_ip))
    if not t.ok or None in (name, interface, mark, remote, inside, aws_inside):
        return None
    return TunnelConfig(name, interface, mark, remote, inside, aws_inside)  # type: ignore[arg-type]


def parse_config(data: Any) -> AgentConfig:
    """Validate a decoded agent.json object; raise ConfigError listing every problem found."""
    problems: list[Problem] = []
    r = Reader(problems, "", data, _FIELDS, example=_EXAMPLE)
    version = r.check("version", ruled(lambda v: version_problem(v, SUPPORTED_VERSION, "this agent")), "a version",
                      str(SUPPORTED_VERSION))
    public_interface = r.string("public_interface", rules.INTERFACE_NAME, "eth0")
    vlan_interface = r.string("vlan_interface", rules.INTERFACE_NAME, "eth1")
    if public_interface and vlan_interface and (problem := rules.second_nic_problem(public_interface, vlan_interface)):
        r.fail("vlan_interface", problem, "eth1")
    gateway_vlan_address = r.check("gateway_vlan_address", to_vlan_address, "an IPv4 address with prefix length",
                                   "172.16.1.1/24")
    local_outside_ip = r.ipv4("local_outside_ip", "10.8.0.2")
    aws_cidrs = r.list_of("aws_cidrs", to_aws_cidr, NETWORK_RULE, "[10.0.0.0/16]", 1, rules.MAX_AWS_CIDRS,
                          why=rules.MAX_AWS_CIDRS_WHY)
    vlan_cidrs = r.list_of("vlan_cidrs", to_private_network, NETWORK_RULE, "[172.16.0.0/12]", 1,
                           rules.MAX_ROUTES_TO_AWS, why=rules.MAX_ROUTES_TO_AWS_WHY)

    nics = {name: f"the {key}" for key, name in (("vlan_interface", vlan_interface),
                                                  ("public_interface", public_interface)) if name}
    raw_tunnels = r.items("tunnels", 1, 2, "[{...tunnel1...}, {...tunnel2...}] (one AWS VPN connection)")
    parsed = [_tunnel(r, i, item, nics) for i, item in enumerate(raw_tunnels or ())]
    tunnels: tuple[TunnelConfig, ...] | None = None
    if raw_tunnels is not None and None not in parsed:
        tunnels = tuple(parsed)  # type: ignore[arg-type]
        for attr, example in _DISTINCT.items():
            if found := rules.distinct_problem(attr, [getattr(t, attr) for t in parsed]):
                r.fail(f"tunnels[{found[0]}].{attr}", found[1], example)
                tunnels = None
        nets = [t.gateway_inside_cidr.network for t in parsed]  # type: ignore[union-attr]
        if len(nets) == 2 and nets[0].overlaps(nets[1]):
            r.fail("tunnels[1].gateway_inside_cidr", f"{nets[1]} overlaps tunnels[0]'s {nets[0]}", "169.254.11.2/30")
            tunnels = None
    mtu = r.integer("mtu", rules.TUNNEL_MTU)
    primary = r.get("primary_tunnel", "tunnel1")
    if tunnels is not None and primary is not MISSING and (
            problem := rules.primary_tunnel_problem(primary, (t.name for t in tunnels))):
        r.fail("primary_tunnel", problem, " or ".join(t.name for t in tunnels))

    p = r.sub("probe", _PROBE_FIELDS, example='{"interval_ms": 200, ...}')
    interval = p.integer("interval_ms", rules.PROBE_INTERVAL_MS)
    timeout = p.integer("timeout_ms", rules.PROBE_TIMEOUT_MS)
    down_after = p.integer("down_after", rules.DOWN_AFTER)
    up_after = p.integer("up_after", rules.UP_AFTER)
    hold = p.integer("failback_hold_seconds", rules.FAILBACK_HOLD_SECONDS)
    extra = p.list_of("extra_targets", to_ipv4, "an IPv4 address", "[10.0.4.85]", 0, rules.MAX_EXTRA_PROBE_TARGETS)
    repair_hold = p.integer("repair_hold_seconds", rules.REPAIR_HOLD_SECONDS)

    o = r.sub("ownership", _OWNERSHIP_FIELDS, example='{"route_table": 1519, ...}')
    table = o.integer("route_table", _ROUTE_TABLE)
    if table in _RESERVED_TABLES:
        o.fail("route_table", f"{table} is reserved by the kernel (0, 253 default, 254 main, 255 local)", "1519")
    route_protocol = o.integer("route_protocol", _ROUTE_PROTOCOL)
    rule_priority = o.integer("rule_priority", _RULE_PRIORITY)
    nft_table = o.string("nft_table", _NFT_TABLE)

    pa = r.sub("paths", _PATHS_FIELDS, example=f'{{"nft_ruleset": "{gp.NFT_RULESET.path}", ...}}')
    paths = {name: pa.check(name, _absolute_path, "an absolute path", example) for name, example in (
        ("nft_ruleset", gp.NFT_RULESET.path), ("state_dir", gp.STATE_DIR.path),
        ("metrics_file", gp.METRICS_FILE), ("vici_socket", gp.VICI_SOCKET))}

    if gateway_vlan_address is not None and vlan_cidrs is not None:
        if problem := rules.vlan_address_outside_problem(gateway_vlan_address, vlan_cidrs):
            r.fail("gateway_vlan_address", problem, '"172.16.1.1/24" with vlan_cidrs ["172.16.0.0/12"]')
    for i, cidr in enumerate(vlan_cidrs or ()):
        for aws in aws_cidrs or ():
            if problem := rules.sides_overlap_problem(cidr, aws):
                r.fail(f"vlan_cidrs[{i}]", problem, "[172.16.0.0/12] with aws_cidrs [10.0.0.0/16]")
    bgp = _bgp(r)
    if problems:
        raise ConfigError(problems)
    return AgentConfig(
        version=version, public_interface=public_interface, vlan_interface=vlan_interface,  # type: ignore[arg-type]
        gateway_vlan_address=gateway_vlan_address, local_outside_ip=local_outside_ip,  # type: ignore[arg-type]
        aws_cidrs=aws_cidrs, vlan_cidrs=vlan_cidrs, connections=(Connection(SINGLE, tunnels),),  # type: ignore
        mtu=mtu,
        primary_tunnel=primary,
        probe=ProbeConfig(interval, timeout, down_after, up_after, hold, extra, repair_hold),  # type: ignore[arg-type]
        ownership=Ownership(table, route_protocol, rule_priority, nft_table),  # type: ignore[arg-type]
        paths=Paths(**paths), bgp=bgp,
    )


def to_json(config: AgentConfig) -> dict[str, Any]:
    """agent.json written through the same definition the agent reads it with (the contracts' one codec). Version 1
    carries one connection, as the flat ``tunnels`` list."""
    data = encode(config)
    data["tunnels"] = encode(config.tunnels)
    return data


def _bgp(r: Reader) -> BgpConfig | None:
    """The optional ``bgp`` section (only agent.json of a routing.mode bgp stack has it)."""
    if not r.has("bgp") or r.raw.get("bgp") is None:
        return None
    b = r.sub("bgp", _BGP_FIELDS, example='{"customer_asn": 65000}')
    asn = b.integer("customer_asn", rules.CUSTOMER_ASN)
    vty = b.get("vty_socket")
    vty_socket = None if vty is None or vty is MISSING else b.check("vty_socket", _absolute_path, "an absolute path",
                                                                  gp.FRR_RUN_DIR)
    if asn is None or not b.ok:
        return None
    return BgpConfig(asn, vty_socket)


def load_config(path: Path | str = DEFAULT_CONFIG_PATH) -> AgentConfig:
    """Read and validate agent.json; a missing, corrupt or partial file is a ConfigError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such file (the agent configuration, written by delivery)"], str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: cannot read: {exc}"], str(path)) from None
    if not text.strip():
        raise ConfigError([f"{path}: the file is empty; expected the agent configuration object; example: {_EXAMPLE}"],
                          str(path))
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError([f"{path}: not valid JSON (truncated or corrupt?) at line {exc.lineno} column {exc.colno}:"
                           f" {exc.msg}; expected one JSON object; example: {_EXAMPLE}"], str(path)) from None
    try:
        return parse_config(data)
    except ConfigError as exc:
        raise ConfigError(exc.problems, str(path)) from None
