"""The agent configuration (/etc/hybrid-vpn/agent.json, contracts §2) parsed into frozen dataclasses.

Everything is validated before anything is applied: an unknown key, a missing key, a bad value or a corrupt file is a
ConfigError that names the key, the rule and an example of a right value.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any

from hostconfig import gateway_paths as gp

DEFAULT_CONFIG_PATH = Path(gp.AGENT_CONFIG.path)
SUPPORTED_VERSION = 1

_IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
_TUNNEL_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_NFT_TABLE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,31}$")
# Route tables the kernel reserves: unspec, default, main, local.
_RESERVED_TABLES = {0, 253, 254, 255}


# The start of a right file, for error messages about a file that is not a JSON object at all.
_EXAMPLE = '{"version": 1, "public_interface": "eth0", ...} (docs/contracts.md section 2)'


DEFAULT_REPAIR_HOLD_SECONDS = 5


class ConfigError(ValueError):
    """The agent configuration is unusable; the message names the key and shows a right value."""


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
    failback_hold_seconds: float
    extra_targets: tuple[IPv4Address, ...]
    # How long a tunnel must be probe-dead with its CHILD_SA installed before the daemon rebuilds it (the value is
    # explained at health.RepairPolicy).
    repair_hold_seconds: float


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
class AgentConfig:
    version: int
    public_interface: str
    vlan_interface: str
    gateway_vlan_address: IPv4Interface
    local_outside_ip: IPv4Address
    aws_cidrs: tuple[IPv4Network, ...]
    vlan_cidrs: tuple[IPv4Network, ...]
    tunnels: tuple[TunnelConfig, ...]
    mtu: int
    primary_tunnel: str
    probe: ProbeConfig
    ownership: Ownership
    paths: Paths

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


class _Reader:
    """Walks one JSON object, remembering the key path for error messages and refusing unknown keys."""

    def __init__(self, data: Any, where: str):
        if not isinstance(data, dict):
            example = _EXAMPLE if not where else "{...}"
            raise ConfigError(f"{where or 'agent.json'}: must be a JSON object, e.g. {example} (got {_show(data)})")
        self.data = data
        self.where = where
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name

    def raw(self, name: str, example: str) -> Any:
        self.used.add(name)
        if name not in self.data:
            raise ConfigError(f"{self.key(name)}: missing (required), e.g. {example}")
        return self.data[name]

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            allowed = ", ".join(sorted(self.used))
            raise ConfigError(f"{self.key(unknown[0])}: unknown key (allowed here: {allowed})")

    def integer(self, name: str, low: int, high: int, example: str) -> int:
        value = self.raw(name, example)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ConfigError(f"{self.key(name)}: must be an integer {low}..{high}, e.g. {example}"
                              f" (got {_show(value)})")
        return value

    def string(self, name: str, pattern: re.Pattern[str], rule: str, example: str) -> str:
        value = self.raw(name, example)
        # fullmatch, not match: "$" also matches before a trailing newline ("vti-aws1\n" is no interface name).
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise ConfigError(f"{self.key(name)}: must be {rule}, e.g. {example} (got {_show(value)})")
        return value

    def ipv4(self, name: str, example: str) -> IPv4Address:
        return _ipv4(self.raw(name, example), self.key(name), example)

    def interface_cidr(self, name: str, example: str) -> IPv4Interface:
        value = self.raw(name, example)
        try:
            if not isinstance(value, str) or "/" not in value:
                raise ValueError
            return IPv4Interface(value)
        except ValueError:
            raise ConfigError(
                f"{self.key(name)}: must be an IPv4 address with prefix length, e.g. {example} (got {_show(value)})"
            ) from None

    def networks(self, name: str, low: int, high: int, example: str) -> tuple[IPv4Network, ...]:
        value = self.raw(name, example)
        if not isinstance(value, list) or not low <= len(value) <= high:
            raise ConfigError(f"{self.key(name)}: must be a list of {low}..{high} IPv4 networks, e.g. {example}")
        result = []
        for i, item in enumerate(value):
            try:
                if not isinstance(item, str):
                    raise ValueError
                result.append(IPv4Network(item, strict=True))
            except ValueError:
                raise ConfigError(
                    f"{self.key(name)}[{i}]: must be an IPv4 network in CIDR form with no host bits, e.g. 10.0.0.0/16"
                    f" (got {_show(item)})"
                ) from None
        if len(set(result)) != len(result):
            raise ConfigError(f"{self.key(name)}: duplicate network in the list, e.g. {example}")
        return tuple(result)

    def path(self, name: str, example: str) -> Path:
        value = self.raw(name, example)
        if not isinstance(value, str) or not value.startswith("/") or "\0" in value or len(value) > 4096:
            raise ConfigError(f"{self.key(name)}: must be an absolute path, e.g. {example} (got {_show(value)})")
        return Path(value)

    def sub(self, name: str, example: str) -> _Reader:
        return _Reader(self.raw(name, example), self.key(name))


def _show(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _ipv4(value: Any, key: str, example: str) -> IPv4Address:
    try:
        if not isinstance(value, str):
            raise ValueError
        return IPv4Address(value)
    except ValueError:
        raise ConfigError(f"{key}: must be an IPv4 address, e.g. {example} (got {_show(value)})") from None


def _tunnel(item: Any, index: int) -> TunnelConfig:
    r = _Reader(item, f"tunnels[{index}]")
    n = index + 1
    tunnel = TunnelConfig(
        name=r.string("name", _TUNNEL_NAME, "1-64 characters of A-Z a-z 0-9 _ . -", f'"tunnel{n}"'),
        interface=r.string("interface", _IFNAME, "an interface name of 1-15 characters A-Z a-z 0-9 _ . -",
                           f'"vti-aws{n}"'),
        mark=r.integer("mark", 1, 0xFFFFFFFF, str(100 * n)),
        remote_outside_ip=r.ipv4("remote_outside_ip", f'"198.51.100.{n}"'),
        gateway_inside_cidr=r.interface_cidr("gateway_inside_cidr", f'"169.254.1{n - 1}.2/30"'),
        aws_inside_ip=r.ipv4("aws_inside_ip", f'"169.254.1{n - 1}.1"'),
    )
    r.done()
    if tunnel.interface in (".", ".."):
        raise ConfigError(f"tunnels[{index}].interface: '.' and '..' are not interface names, e.g. \"vti-aws{n}\"")
    net = tunnel.gateway_inside_cidr.network
    if tunnel.aws_inside_ip not in net or tunnel.aws_inside_ip == tunnel.gateway_inside_ip:
        raise ConfigError(
            f"tunnels[{index}].aws_inside_ip: must be the other address of gateway_inside_cidr {net}"
            f" (got {tunnel.aws_inside_ip}), e.g. {next(h for h in net.hosts() if h != tunnel.gateway_inside_ip)}"
        )
    return tunnel


def parse_config(data: Any) -> AgentConfig:
    """Validate a decoded agent.json object; raise ConfigError naming the first bad key."""
    r = _Reader(data, "")
    version = r.raw("version", "1")
    if version != SUPPORTED_VERSION or isinstance(version, bool):
        raise ConfigError(f"version: this agent reads version {SUPPORTED_VERSION}, e.g. 1 (got {_show(version)})")
    ifname_rule = "an interface name of 1-15 characters A-Z a-z 0-9 _ . -"
    public_interface = r.string("public_interface", _IFNAME, ifname_rule, '"eth0"')
    vlan_interface = r.string("vlan_interface", _IFNAME, ifname_rule, '"eth1"')
    gateway_vlan_address = r.interface_cidr("gateway_vlan_address", '"172.16.1.1/24"')
    local_outside_ip = r.ipv4("local_outside_ip", '"10.8.0.2"')
    aws_cidrs = r.networks("aws_cidrs", 1, 100, '["10.0.0.0/16"]')
    vlan_cidrs = r.networks("vlan_cidrs", 1, 100, '["172.16.0.0/12"]')
    raw_tunnels = r.raw("tunnels", "[{...tunnel1...}, {...tunnel2...}]")
    if not isinstance(raw_tunnels, list) or not 1 <= len(raw_tunnels) <= 2:
        raise ConfigError("tunnels: must be a list of 1 or 2 tunnels (one AWS VPN connection), e.g. [{...}, {...}]")
    tunnels = tuple(_tunnel(item, i) for i, item in enumerate(raw_tunnels))
    distinct_examples = {"name": '"tunnel1" and "tunnel2"', "interface": '"vti-aws1" and "vti-aws2"',
                         "mark": "100 and 200", "remote_outside_ip": '"198.51.100.1" and "198.51.100.2"'}
    for attr, example in distinct_examples.items():
        values = [getattr(t, attr) for t in tunnels]
        if len(set(values)) != len(values):
            raise ConfigError(f"tunnels[1].{attr}: must differ between tunnels (both are {values[0]}),"
                              f" e.g. {example}")
    for i, t in enumerate(tunnels):
        # The agent owns the tunnel links (it recreates them and sets their addresses): naming the public or the VLAN
        # NIC here would strip the gateway's own address.
        for key, nic in (("public_interface", public_interface), ("vlan_interface", vlan_interface)):
            if t.interface == nic:
                raise ConfigError(f"tunnels[{i}].interface: {t.interface!r} is the {key}; a tunnel needs its own"
                                  f" VTI name the agent creates and owns, e.g. \"vti-aws{i + 1}\"")
    nets = [t.gateway_inside_cidr.network for t in tunnels]
    if len(nets) == 2 and nets[0].overlaps(nets[1]):
        raise ConfigError(f"tunnels[1].gateway_inside_cidr: overlaps tunnels[0] ({nets[0]}), e.g. \"169.254.11.2/30\"")
    mtu = r.integer("mtu", 576, 9000, "1419")
    primary = r.raw("primary_tunnel", '"tunnel1"')
    if primary not in [t.name for t in tunnels]:
        raise ConfigError(f"primary_tunnel: must be one of the tunnel names {[t.name for t in tunnels]}"
                          f" (got {_show(primary)})")

    p = r.sub("probe", '{"interval_ms": 200, ...}')
    interval = p.integer("interval_ms", 20, 60_000, "200")
    timeout = p.integer("timeout_ms", 10, 60_000, "600")
    down_after = p.integer("down_after", 1, 1000, "3")
    up_after = p.integer("up_after", 1, 1000, "5")
    hold = p.integer("failback_hold_seconds", 0, 86_400, "20")
    raw_targets = p.raw("extra_targets", "[]")
    if not isinstance(raw_targets, list) or len(raw_targets) > 16:
        raise ConfigError('probe.extra_targets: must be a list of at most 16 IPv4 addresses, e.g. ["10.0.4.85"]')
    extra = tuple(_ipv4(v, f"probe.extra_targets[{i}]", '"10.0.4.85"') for i, v in enumerate(raw_targets))
    # Optional (agent.json files written before it existed stay valid); the default is explained in health.py.
    repair_hold = (p.integer("repair_hold_seconds", 1, 3600, "5") if "repair_hold_seconds" in p.data
                   else DEFAULT_REPAIR_HOLD_SECONDS)
    p.used.add("repair_hold_seconds")
    p.done()
    probe = ProbeConfig(interval, timeout, down_after, up_after, float(hold), extra, float(repair_hold))

    o = r.sub("ownership", '{"route_table": 1519, ...}')
    table = o.integer("route_table", 1, 0xFFFFFFFF, "1519")
    if table in _RESERVED_TABLES:
        raise ConfigError(f"ownership.route_table: {table} is reserved by the kernel (0, 253 default, 254 main,"
                          " 255 local), e.g. 1519")
    ownership = Ownership(
        route_table=table,
        # 0-4 are the kernel's own protocols (unspec, redirect, kernel, boot, static).
        route_protocol=o.integer("route_protocol", 5, 255, "157"),
        # 0 is the local-table rule, 32766/32767 the main/default rules.
        rule_priority=o.integer("rule_priority", 1, 32765, "10100"),
        nft_table=o.string("nft_table", _NFT_TABLE, "an nftables table name (letter, then letters, digits, _)",
                           '"hybrid_vpn"'),
    )
    o.done()

    pa = r.sub("paths", f'{{"nft_ruleset": "{gp.NFT_RULESET.path}", ...}}')
    paths = Paths(
        nft_ruleset=pa.path("nft_ruleset", f'"{gp.NFT_RULESET.path}"'),
        state_dir=pa.path("state_dir", f'"{gp.STATE_DIR.path}"'),
        metrics_file=pa.path("metrics_file", f'"{gp.METRICS_FILE}"'),
        vici_socket=pa.path("vici_socket", f'"{gp.VICI_SOCKET}"'),
    )
    pa.done()
    r.done()

    if not any(gateway_vlan_address.ip in net for net in vlan_cidrs):
        raise ConfigError(f"gateway_vlan_address: {gateway_vlan_address.ip} is in none of vlan_cidrs"
                          f" {[str(n) for n in vlan_cidrs]}, e.g. \"172.16.1.1/24\" with vlan_cidrs"
                          " [\"172.16.0.0/12\"]")
    for i, cidr in enumerate(aws_cidrs):
        for t in tunnels:
            if cidr.overlaps(t.gateway_inside_cidr.network):
                raise ConfigError(f"aws_cidrs[{i}]: {cidr} overlaps the inside network of {t.name}; the probes"
                                  " to the AWS inside address must not follow the AWS routes")
    return AgentConfig(
        version=version, public_interface=public_interface, vlan_interface=vlan_interface,
        gateway_vlan_address=gateway_vlan_address, local_outside_ip=local_outside_ip, aws_cidrs=aws_cidrs,
        vlan_cidrs=vlan_cidrs, tunnels=tunnels, mtu=mtu, primary_tunnel=primary, probe=probe,
        ownership=ownership, paths=paths,
    )


def load_config(path: Path | str = DEFAULT_CONFIG_PATH) -> AgentConfig:
    """Read and validate agent.json; a missing, corrupt or partial file is a ConfigError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file (the agent configuration, written by delivery)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    if not text.strip():
        raise ConfigError(f"{path}: the file is empty; expected the agent configuration object, e.g. {_EXAMPLE}")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON (truncated or corrupt?) at line {exc.lineno} column {exc.colno}:"
                          f" {exc.msg}; expected one JSON object, e.g. {_EXAMPLE}") from None
    try:
        return parse_config(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
