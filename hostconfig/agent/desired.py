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

# Kernel nexthop objects the agent owns: an id in NEXTHOP_IDS carrying the agent's route protocol (contracts §3). One
# nexthop per role, not per tunnel: every active route references ACTIVE_NEXTHOP, so a switch replaces that one object
# (one netlink message, atomic in the kernel) whatever the number of AWS CIDRs, instead of replacing every route.
NEXTHOP_IDS = range(1_519_100, 1_519_200)
ACTIVE_NEXTHOP = 1_519_101
STANDBY_NEXTHOP = 1_519_102
# The agent's mark on a VTI it created (IFLA_IFALIAS), so that it never deletes or recreates a link it did not make.
LINK_ALIAS_PREFIX = "hybrid-vpn tunnel "

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

    @property
    def alias(self) -> str:
        return LINK_ALIAS_PREFIX + self.name


@dataclass(frozen=True)
class NexthopSpec:
    """A role nexthop: ``id`` ACTIVE_NEXTHOP or STANDBY_NEXTHOP, pointing at the tunnel link holding that role."""

    id: int
    role: Literal["active", "standby"]
    ifname: str

    def __str__(self) -> str:
        return f"id {self.id} dev {self.ifname} ({self.role})"


@dataclass(frozen=True)
class ActualNexthop:
    id: int
    protocol: int
    ifname: str | None
    kind: Literal["dev", "blackhole", "group", "gateway"] = "dev"

    def __str__(self) -> str:
        return f"id {self.id} {'dev ' + str(self.ifname) if self.kind == 'dev' else self.kind} proto {self.protocol}"


@dataclass(frozen=True)
class RouteSpec:
    dst: IPv4Network
    metric: int
    type: Literal["unicast", "unreachable"]
    ifname: str | None = None
    src: IPv4Address | None = None
    # A unicast route references a role nexthop; ``ifname`` is the link that nexthop points at (for display and the
    # link check), the route itself carries only the nexthop id.
    nhid: int | None = None

    @property
    def key(self) -> tuple[IPv4Network, int]:
        # The kernel identifies an IPv4 route by (table, dst, tos, metric); table and tos are fixed here.
        return (self.dst, self.metric)

    def __str__(self) -> str:
        via = f"dev {self.ifname}" + (f" src {self.src}" if self.src else "") if self.ifname else self.type
        nh = f"nhid {self.nhid} " if self.nhid is not None else ""
        return f"{self.dst} metric {self.metric} {nh}{via}"


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
    nexthops: tuple[NexthopSpec, ...] = ()


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
    alias: str | None = None


@dataclass(frozen=True)
class ActualRoute:
    dst: IPv4Network
    metric: int
    protocol: int
    type: str
    ifname: str | None = None
    src: IPv4Address | None = None
    nhid: int | None = None

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
    nexthops: list[NexthopSpec] = []
    src = config.gateway_vlan_address.ip
    standby = [t for t in config.tunnels if t.name in view.up and t.name != view.active]
    if view.active is not None:
        nexthops.append(NexthopSpec(ACTIVE_NEXTHOP, "active", config.tunnel(view.active).interface))
    if standby:
        nexthops.append(NexthopSpec(STANDBY_NEXTHOP, "standby", standby[0].interface))
    metrics = {ACTIVE_NEXTHOP: ACTIVE_METRIC, STANDBY_NEXTHOP: STANDBY_METRIC}
    for cidr in config.aws_cidrs:
        for nh in nexthops:
            routes.append(RouteSpec(cidr, metrics[nh.id], "unicast", nh.ifname, src, nh.id))
        routes.append(RouteSpec(cidr, UNREACHABLE_METRIC, "unreachable"))
    own = config.ownership
    return DesiredState(
        links=links, addresses=addresses, sysctls=sysctls, routes=tuple(routes),
        rule=RuleSpec(own.rule_priority, own.route_table), table=own.route_table, protocol=own.route_protocol,
        nexthops=tuple(nexthops),
    )


def not_ours(spec: LinkSpec, link: ActualLink, mode: LinkMode) -> str | None:
    """Why a link with a tunnel's name is not the agent's to change, or None when it is.

    In mode 'vti' the agent changes only VTIs it made: kind vti and either its alias mark or the tunnel's own key
    (VTIs made before the mark existed). Anything else with that name (the public NIC named by mistake, another
    tool's tunnel) is never deleted, recreated, re-addressed or routed through. In mode 'given' the links are made by
    someone else on purpose and configured as they are.
    """
    if mode == "given":
        return None
    if link.kind != "vti":
        return (f"link {spec.name} is a {link.kind or 'plain'} link, not a VTI the agent made: left alone (no delete,"
                " no recreate, no address change, no route through it); rename the tunnel interface in the stack or"
                " remove that link")
    if link.alias != spec.alias and (link.ikey, link.okey) != (spec.key, spec.key):
        return (f"link {spec.name} is a VTI the agent did not make (no mark '{spec.alias}', ikey {link.ikey} okey"
                f" {link.okey}, the tunnel's key is {spec.key}): left alone; delete it by hand if it is stale")
    return None


def owned_links(desired: tuple[LinkSpec, ...], actual: dict[str, ActualLink], mode: LinkMode) -> dict[str, ActualLink]:
    """The existing tunnel links the agent may change (see ``not_ours``)."""
    by_name = {spec.name: spec for spec in desired}
    return {name: link for name, link in actual.items()
            if name in by_name and not_ours(by_name[name], link, mode) is None}


def diff_links(desired: tuple[LinkSpec, ...], actual: dict[str, ActualLink], mode: LinkMode) -> list[Change]:
    """Create missing VTIs, recreate ours with the wrong ends/key, fix MTU, up state and our mark in place.

    A link that is not ours (``not_ours``) gets a ``foreign_link`` entry (a problem, not a change) and nothing else.
    """
    changes: list[Change] = []
    for spec in desired:
        link = actual.get(spec.name)
        if link is None:
            changes.append(Change("create_link" if mode == "vti" else "missing_link", spec.name, spec))
            continue
        refused = not_ours(spec, link, mode)
        if refused is not None:
            changes.append(Change("foreign_link", refused, spec))
            continue
        if mode == "vti" and (link.local != spec.local or link.remote != spec.remote
                              or link.ikey != spec.key or link.okey != spec.key):
            # The key and ends of a VTI are its identity: rebuild it rather than patch it.
            changes.append(Change("recreate_link", f"{spec.name} (was {_describe_link(link)})", spec))
            continue
        if link.mtu != spec.mtu or not link.up or (mode == "vti" and link.alias != spec.alias):
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


@dataclass(frozen=True)
class NexthopDiff:
    changes: list[Change]  # add/replace first, in role order (active first), deletions last
    problems: list[str]
    unavailable: frozenset[int]  # desired role ids that cannot be applied now: their routes are skipped
    removed: frozenset[int]  # our ids being deleted: the kernel removes the routes using them


def diff_nexthops(desired: tuple[NexthopSpec, ...], actual: list[ActualNexthop], protocol: int,
                  usable_links: set[str]) -> NexthopDiff:
    """Add or replace the role nexthops, delete ours that no role needs; leave nexthops of others alone.

    Ours: id in NEXTHOP_IDS with our protocol. Deleting a nexthop makes the kernel remove every route using it: that
    is how a standby or active role goes away in one message.
    """
    ours = {n.id: n for n in actual if n.id in NEXTHOP_IDS and n.protocol == protocol}
    foreign = {n.id: n for n in actual if n.id in NEXTHOP_IDS and n.protocol != protocol}
    changes: list[Change] = []
    problems: list[str] = []
    unavailable = set()
    for spec in desired:
        if spec.id in foreign or spec.ifname not in usable_links:
            unavailable.add(spec.id)
        if spec.id in foreign:
            problems.append(f"nexthop {spec}: id {spec.id} is held by a nexthop of protocol {foreign[spec.id].protocol}"
                            " (not the agent's); left alone, the routes of that role are not applied")
            continue
        if spec.ifname not in usable_links:
            problems.append(f"nexthop {spec}: link {spec.ifname} is missing, down or not the agent's")
            continue
        have = ours.get(spec.id)
        if have is None:
            changes.append(Change("add_nexthop", str(spec), spec))
        elif (have.kind, have.ifname) != ("dev", spec.ifname):
            changes.append(Change("replace_nexthop", f"{spec} (was {have})", spec))
    wanted = {spec.id for spec in desired}
    removed = set()
    for nh_id, have in sorted(ours.items()):
        if nh_id not in wanted:
            removed.add(nh_id)
            changes.append(Change("delete_nexthop", f"{have} (the kernel removes the routes using it)", have))
    return NexthopDiff(changes, problems, frozenset(unavailable), frozenset(removed))


def diff_routes(desired: tuple[RouteSpec, ...], actual: list[ActualRoute], protocol: int,
                unavailable_nexthops: frozenset[int] = frozenset(),
                removed_nexthops: frozenset[int] = frozenset()) -> tuple[list[Change], list[str]]:
    """Replace what differs, delete our strays, leave routes of other protocols alone.

    A route through a tunnel is compared by nexthop id, not by link: the link is the nexthop's business, so a switch
    changes no route at all. Desired routes via a nexthop in ``unavailable_nexthops`` are skipped (the nexthop diff
    reported why); our routes via a nexthop in ``removed_nexthops`` are not deleted one by one (the kernel removes them
    with the nexthop). Returns the changes and the problems; replacements come first, in metric order, deletions last.
    """
    problems: list[str] = []
    ours = {r.key: r for r in actual if r.protocol == protocol}
    foreign = {r.key: r for r in actual if r.protocol != protocol}
    changes: list[Change] = []
    wanted_keys = set()
    # Sorting only what changes (not all desired routes): a switch compares hundreds of routes and changes none.
    for spec in desired:
        key = spec.key
        wanted_keys.add(key)
        if spec.nhid is not None and spec.nhid in unavailable_nexthops:
            continue
        if foreign and key in foreign:
            problems.append(f"route {spec}: a route with protocol {foreign[key].protocol} holds the same"
                            " destination and metric in our table; left alone")
            continue
        have = ours.get(key)
        if have is None or (have.type, have.nhid, have.src) != (spec.type, spec.nhid, spec.src):
            was = "" if have is None else f" (was {have.type} nhid {have.nhid} dev {have.ifname} src {have.src})"
            changes.append(Change("replace_route", f"{spec}{was}", spec))
    changes.sort(key=lambda c: (c.spec.metric, c.spec.dst))
    strays = [r for key, r in ours.items() if key not in wanted_keys and r.nhid not in removed_nexthops]
    for route in sorted(strays, key=lambda r: (r.metric, r.dst)):
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
