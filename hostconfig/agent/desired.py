"""Desired kernel state as a pure function of the config and the tunnels' health (contracts §3).

Nothing here touches the OS: ``desired_state`` builds the target, the ``diff_*`` functions compare it with normalised
actual state (read by ``kernel.py``) and return the ordered list of changes to apply.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Literal

from .config import AgentConfig

ACTIVE_METRIC = 100
STANDBY_METRIC = 200
UNREACHABLE_METRIC = 0xFFFFFFFF

# "vti": the agent creates the VTIs (production, the VM lab). "given": the tunnel links are made by someone else and
# the agent only configures them; the namespace tests on a kernel without ip_vti use veth pairs this way.
LinkMode = Literal["vti", "given"]


@dataclass(frozen=True)
class TunnelView:
    """The health input of the reconciler: which tunnels are usable and which one carries traffic."""

    up: frozenset[str]
    active: str | None

    def __post_init__(self) -> None:
        if self.active is not None and self.active not in self.up:
            raise ValueError(f"active tunnel {self.active!r} must be one of the up tunnels {sorted(self.up)}")


@dataclass(frozen=True)
class LinkSpec:
    name: str
    mtu: int
    local: IPv4Address
    remote: IPv4Address
    key: int


@dataclass(frozen=True)
class RouteSpec:
    dst: IPv4Network
    metric: int
    type: Literal["unicast", "unreachable"]
    ifname: str | None = None
    src: IPv4Address | None = None

    @property
    def key(self) -> tuple[IPv4Network, int]:
        # The kernel identifies an IPv4 route by (table, dst, tos, metric); table and tos are fixed here.
        return (self.dst, self.metric)

    def __str__(self) -> str:
        via = f"dev {self.ifname}" + (f" src {self.src}" if self.src else "") if self.ifname else self.type
        return f"{self.dst} metric {self.metric} {via}"


@dataclass(frozen=True)
class RuleSpec:
    priority: int
    table: int


@dataclass(frozen=True)
class DesiredState:
    links: tuple[LinkSpec, ...]
    addresses: dict[str, tuple[IPv4Interface, ...]]
    sysctls: dict[str, str]
    routes: tuple[RouteSpec, ...]
    rule: RuleSpec
    table: int
    protocol: int


@dataclass(frozen=True)
class ActualLink:
    name: str
    index: int
    kind: str | None
    mtu: int
    up: bool
    local: IPv4Address | None = None
    remote: IPv4Address | None = None
    ikey: int | None = None
    okey: int | None = None


@dataclass(frozen=True)
class ActualRoute:
    dst: IPv4Network
    metric: int
    protocol: int
    type: str
    ifname: str | None = None
    src: IPv4Address | None = None

    @property
    def key(self) -> tuple[IPv4Network, int]:
        return (self.dst, self.metric)


@dataclass(frozen=True)
class ActualRule:
    priority: int
    table: int
    action: str = "to_tbl"
    # Selectors (src, dst, fwmark, iif, oif, ...) the rule carries; our rule has none.
    selectors: tuple[tuple[str, object], ...] = ()


@dataclass(frozen=True)
class Change:
    """One kernel change; ``action`` is stable for tests, ``target`` says what, ``spec`` carries what to apply."""

    action: str
    target: str
    spec: object = field(default=None, compare=False)

    def __str__(self) -> str:
        return f"{self.action} {self.target}"


def sysctl_key(*parts: str) -> str:
    return "/".join(parts)


def desired_state(config: AgentConfig, view: TunnelView) -> DesiredState:
    """The target state for ``config`` when ``view`` says which tunnels are up and which is active."""
    unknown = (view.up | ({view.active} if view.active else set())) - set(config.tunnel_names)
    if unknown:
        raise ValueError(f"unknown tunnel names in the health view: {sorted(unknown)}")
    links = tuple(
        LinkSpec(name=t.interface, mtu=config.mtu, local=config.local_outside_ip, remote=t.remote_outside_ip,
                 key=t.mark)
        for t in config.tunnels
    )
    addresses = {t.interface: (t.gateway_inside_cidr,) for t in config.tunnels}
    # rp_filter is loosened on the VTIs only: the kernel applies max(conf/all, conf/<iface>), so "2" on a VTI is
    # loose whatever `all` says, and the public NIC keeps the operator's (strict) setting.
    sysctls = {sysctl_key("net", "ipv4", "ip_forward"): "1"}
    for t in config.tunnels:
        sysctls[sysctl_key("net", "ipv4", "conf", t.interface, "disable_policy")] = "1"
        sysctls[sysctl_key("net", "ipv4", "conf", t.interface, "rp_filter")] = "2"

    routes: list[RouteSpec] = []
    src = config.gateway_vlan_address.ip
    standby = [t for t in config.tunnels if t.name in view.up and t.name != view.active]
    for cidr in config.aws_cidrs:
        if view.active is not None:
            routes.append(RouteSpec(cidr, ACTIVE_METRIC, "unicast", config.tunnel(view.active).interface, src))
        if standby:
            routes.append(RouteSpec(cidr, STANDBY_METRIC, "unicast", standby[0].interface, src))
        routes.append(RouteSpec(cidr, UNREACHABLE_METRIC, "unreachable"))
    own = config.ownership
    return DesiredState(
        links=links, addresses=addresses, sysctls=sysctls, routes=tuple(routes),
        rule=RuleSpec(own.rule_priority, own.route_table), table=own.route_table, protocol=own.route_protocol,
    )


def diff_links(desired: tuple[LinkSpec, ...], actual: dict[str, ActualLink], mode: LinkMode) -> list[Change]:
    """Create missing VTIs, recreate ones with the wrong kind/ends/key, fix MTU and up state in place."""
    changes: list[Change] = []
    for spec in desired:
        link = actual.get(spec.name)
        if link is None:
            changes.append(Change("create_link" if mode == "vti" else "missing_link", spec.name, spec))
            continue
        if mode == "vti" and (link.kind != "vti" or link.local != spec.local or link.remote != spec.remote
                              or link.ikey != spec.key or link.okey != spec.key):
            # The key and ends of a VTI are its identity: rebuild it rather than patch it.
            changes.append(Change("recreate_link", f"{spec.name} (was {_describe_link(link)})", spec))
            continue
        if link.mtu != spec.mtu or not link.up:
            changes.append(Change("set_link", f"{spec.name} mtu {spec.mtu} up (was mtu {link.mtu}"
                                  f" {'up' if link.up else 'down'})", spec))
    return changes


def _describe_link(link: ActualLink) -> str:
    return f"{link.kind} local {link.local} remote {link.remote} ikey {link.ikey} okey {link.okey}"


def diff_addresses(desired: dict[str, tuple[IPv4Interface, ...]],
                   actual: dict[str, tuple[IPv4Interface, ...]]) -> list[Change]:
    """The tunnel links are ours: their IPv4 addresses are exactly the desired ones."""
    changes: list[Change] = []
    for ifname, wanted in desired.items():
        if ifname not in actual:
            continue  # link missing: reported by the link stage
        have = set(actual[ifname])
        for addr in have - set(wanted):
            changes.append(Change("delete_address", f"{addr} dev {ifname}", (ifname, addr)))
        for addr in wanted:
            if addr not in have:
                changes.append(Change("add_address", f"{addr} dev {ifname}", (ifname, addr)))
    return changes


def diff_sysctls(desired: dict[str, str], actual: dict[str, str | None]) -> list[Change]:
    return [
        Change("set_sysctl", f"{key}={value} (was {actual.get(key)})", (key, value))
        for key, value in desired.items()
        if actual.get(key) is not None and actual[key] != value
    ]


def diff_routes(desired: tuple[RouteSpec, ...], actual: list[ActualRoute], protocol: int,
                usable_links: set[str]) -> tuple[list[Change], list[str]]:
    """Replace what differs, delete our strays, leave routes of other protocols alone.

    Returns the changes and the problems (desired routes that cannot be applied now). Replacements come first, in
    metric order, deletions last: a switch is one replace of the metric-100 route, never a moment without a route.
    """
    problems: list[str] = []
    ours = {r.key: r for r in actual if r.protocol == protocol}
    foreign = {r.key: r for r in actual if r.protocol != protocol}
    changes: list[Change] = []
    wanted_keys = set()
    for spec in sorted(desired, key=lambda s: (s.metric, s.dst)):
        wanted_keys.add(spec.key)
        if spec.ifname is not None and spec.ifname not in usable_links:
            problems.append(f"route {spec}: link {spec.ifname} is missing or down")
            continue
        if spec.key in foreign:
            problems.append(f"route {spec}: a route with protocol {foreign[spec.key].protocol} holds the same"
                            " destination and metric in our table; left alone")
            continue
        have = ours.get(spec.key)
        if have is None or (have.type, have.ifname, have.src) != (spec.type, spec.ifname, spec.src):
            was = "" if have is None else f" (was {have.type} dev {have.ifname} src {have.src})"
            changes.append(Change("replace_route", f"{spec}{was}", spec))
    for key, route in sorted(ours.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        if key not in wanted_keys:
            changes.append(Change("delete_route", f"{route.dst} metric {route.metric} {route.type}"
                                  f" dev {route.ifname}", route))
    return changes, problems


def diff_rule(desired: RuleSpec, actual: list[ActualRule]) -> list[Change]:
    """We own every IPv4 rule at our priority: exactly one plain ``lookup <table>`` rule must be there."""
    changes: list[Change] = []
    good = [r for r in actual if r.table == desired.table and r.action == "to_tbl" and not r.selectors]
    if not good:
        changes.append(Change("add_rule", f"pref {desired.priority} lookup {desired.table}", desired))
    keep = actual.index(good[0]) if good else -1
    for extra in [r for i, r in enumerate(actual) if i != keep]:
        changes.append(Change("delete_rule", f"pref {extra.priority} lookup {extra.table} {dict(extra.selectors)}",
                              extra))
    return changes
