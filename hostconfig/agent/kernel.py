"""Reading and writing the kernel state the agent owns, through netlink (pyroute2) and /proc/sys.

Readers return normalised values (``ipaddress`` objects, table ids, interface names instead of indexes) so the pure
diff in ``desired.py`` compares like with like. They are reusable by other commands (``vpnctl doctor``).
"""

from __future__ import annotations

import errno
import functools
import logging
import os
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any, TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkDumpInterrupted, NetlinkError

from .desired import ActualLink, ActualNexthop, ActualRoute, ActualRule, LinkSpec, NexthopSpec, RouteSpec
from .errors import AgentError
from .rtnl import DumpInterrupted, RawNexthop, Rtnl, RtnlError

log = logging.getLogger(__name__)

AF_INET = 2
RTN_TYPES = {1: "unicast", 2: "local", 3: "broadcast", 4: "anycast", 5: "multicast", 6: "blackhole",
             7: "unreachable", 8: "prohibit", 9: "throw", 10: "nat"}
FR_ACTIONS = {1: "to_tbl", 2: "goto", 3: "nop", 6: "blackhole", 7: "unreachable", 8: "prohibit"}
# Rule attributes that select traffic: a rule carrying any of them is not our plain "lookup <table>" rule.
RULE_SELECTORS = ("FRA_DST", "FRA_SRC", "FRA_IIFNAME", "FRA_OIFNAME", "FRA_FWMARK", "FRA_FWMASK", "FRA_FLOW",
                  "FRA_UID_RANGE", "FRA_IP_PROTO", "FRA_SPORT_RANGE", "FRA_DPORT_RANGE", "FRA_L3MDEV", "FRA_GOTO")
SYSCTL_ROOT = Path("/proc/sys")
RT_SCOPE_NOWHERE = 255
DUMP_RETRIES = 5

T = TypeVar("T")


class KernelError(AgentError):
    """A netlink or /proc/sys operation failed for a reason that is not 'already done'."""


class InterfaceMissing(KernelError):
    """ENODEV: the interface an operation names does not exist."""


def netlink_call(op: str, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> bool:
    """Run one netlink request; return True if it changed something, False if it was already so.

    EEXIST on add and ENOENT/ESRCH/EADDRNOTAVAIL on delete mean the kernel already has the state we want.
    ENODEV becomes InterfaceMissing; anything else is a KernelError naming what we tried. Both netlink clients
    (pyroute2's NetlinkError, ``rtnl``'s RtnlError) are mapped the same way.
    """
    try:
        fn(*args, **kwargs)
        return True
    except (NetlinkError, RtnlError) as exc:
        code = exc.code if isinstance(exc, NetlinkError) else exc.errno
        if op == "add" and code == errno.EEXIST:
            return False
        if op == "del" and code in (errno.ENOENT, errno.ESRCH, errno.EADDRNOTAVAIL):
            return False
        if code == errno.ENODEV:
            raise InterfaceMissing(f"{what}: no such interface") from None
        if code == errno.EOPNOTSUPP and "vti" in what:
            raise KernelError(f"{what}: this kernel cannot create VTI links (ip_vti module missing?)") from None
        if code == errno.EOPNOTSUPP and "nexthop" in what:
            raise KernelError(f"{what}: this kernel has no nexthop objects (Linux 5.3 or later needed)") from None
        raise KernelError(f"{what}: {os.strerror(code) if code else exc}") from None


def _dump(fn: Callable[[], Any]) -> list[Any]:
    """A netlink dump, retried a bounded number of times when the kernel reports it was interrupted."""
    for attempt in range(DUMP_RETRIES):
        try:
            return list(fn())
        except (NetlinkDumpInterrupted, DumpInterrupted):
            log.debug("netlink dump interrupted, retry %s", attempt + 1)
        except (NetlinkError, RtnlError) as exc:
            # A KernelError, so the reconciler reports it per stage and carries on (a raw NetlinkError escaped the
            # stage and ended the whole run, leak-protection stages included, with a traceback).
            code = exc.code if isinstance(exc, NetlinkError) else exc.errno
            raise KernelError(f"netlink dump: {os.strerror(code) if code else exc}") from None
    raise KernelError(f"netlink dump interrupted {DUMP_RETRIES} times in a row")


class Kernel:
    """One netlink handle plus the readers and writers the reconciler and the status commands need."""

    def __init__(self, ipr: IPRoute | None = None, rtnl: Rtnl | None = None):
        self.ipr = ipr or IPRoute()
        # Nexthop objects, routes that reference them, and the fast link/route dumps (pyroute2 0.9.7 lacks the first
        # two and is ~20x slower at the dumps a switch reads).
        self.rtnl = rtnl or Rtnl()

    def close(self) -> None:
        self.rtnl.close()
        self.ipr.close()

    def __enter__(self) -> Kernel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- readers -------------------------------------------------------------------------------------------------

    def link_names(self) -> dict[int, str]:
        return {link.index: link.name for link in _dump(self.rtnl.dump_links)}

    def read_links(self, names: set[str] | tuple[str, ...]) -> dict[str, ActualLink]:
        return self.link_snapshot(names)[1]

    def link_snapshot(self, names: set[str] | tuple[str, ...]) -> tuple[dict[int, str], dict[str, ActualLink]]:
        """One link dump: every index -> name, and the links named ``names`` in full."""
        result = {}
        all_names = {}
        for link in _dump(self.rtnl.dump_links):
            all_names[link.index] = link.name
            if link.name not in names:
                continue
            local, remote, ikey, okey = link.vti or (None, None, None, None)
            result[link.name] = ActualLink(name=link.name, index=link.index, kind=link.kind, mtu=link.mtu or 0,
                                           up=link.up, local=_ip_or_none(local), remote=_ip_or_none(remote),
                                           ikey=ikey, okey=okey, alias=link.alias)
        return all_names, result

    def read_link_counters(self, names: tuple[str, ...]) -> dict[str, dict[str, int]]:
        result = {}
        for msg in _dump(self.ipr.get_links):
            name = msg.get("ifname")
            if name in names:
                stats = msg.get("stats64") or msg.get("stats") or {}
                result[name] = {k: int(stats.get(k, 0)) for k in ("rx_bytes", "tx_bytes", "rx_packets",
                                                                   "tx_packets", "rx_dropped", "tx_dropped")}
        return result

    def read_addresses(self, links: dict[str, ActualLink]) -> dict[str, tuple[IPv4Interface, ...]]:
        by_index = {link.index: name for name, link in links.items()}
        result: dict[str, list[IPv4Interface]] = {name: [] for name in links}
        for msg in _dump(lambda: self.ipr.get_addr(family=AF_INET)):
            name = by_index.get(msg["index"])
            if name is not None:
                result[name].append(IPv4Interface(f"{msg.get('address')}/{msg['prefixlen']}"))
        return {name: tuple(sorted(addrs)) for name, addrs in result.items()}

    def read_routes(self, table: int, names: dict[int, str] | None = None) -> list[ActualRoute]:
        raw = _dump(lambda: self.rtnl.dump_routes(table))
        names = names if names is not None else self.link_names()
        nexthop_oif: dict[int, int | None] = {}
        if any(r.nh_id is not None and r.oif is None for r in raw):
            # net.ipv4.nexthop_compat_mode=0: routes via a nexthop carry only its id; the link is the nexthop's.
            nexthop_oif = {n.id: n.oif for n in _dump(self.rtnl.dump_nexthops)}
        routes = []
        for r in raw:
            oif = r.oif if r.oif is not None or r.nh_id is None else nexthop_oif.get(r.nh_id)
            routes.append(ActualRoute(
                dst=_network(r.dst, r.dst_len), metric=r.priority, protocol=r.protocol,
                type=RTN_TYPES.get(r.type, str(r.type)), ifname=names.get(oif) if oif else None,
                src=_address(r.prefsrc) if r.prefsrc else None, nhid=r.nh_id,
            ))
        return routes

    def read_nexthops(self, names: dict[int, str] | None = None) -> list[ActualNexthop]:
        names = names if names is not None else self.link_names()
        return [_nexthop(n, names) for n in _dump(self.rtnl.dump_nexthops)]

    def read_rules(self, priority: int) -> list[ActualRule]:
        rules = []
        for msg in _dump(lambda: self.ipr.get_rules(family=AF_INET)):
            if (msg.get("priority") or 0) != priority:
                continue
            selectors = [(name, msg.get_attr(name)) for name in RULE_SELECTORS if msg.get_attr(name) is not None]
            if msg["src_len"]:
                selectors.append(("src_len", msg["src_len"]))
            if msg["dst_len"]:
                selectors.append(("dst_len", msg["dst_len"]))
            if msg["tos"]:
                selectors.append(("tos", msg["tos"]))
            if msg["flags"]:
                selectors.append(("flags", msg["flags"]))
            table = msg.get_attr("FRA_TABLE") or msg["table"]
            rules.append(ActualRule(priority=priority, table=table, action=FR_ACTIONS.get(msg["action"], "other"),
                                    selectors=tuple(selectors)))
        return rules

    def active_interface(self, table: int, protocol: int, metric: int) -> str | None:
        """The link our best route uses (the same for every AWS CIDR when the agent converged)."""
        for route in self.read_routes(table):
            if route.protocol == protocol and route.metric == metric and route.type == "unicast":
                return route.ifname
        return None

    # ---- writers -------------------------------------------------------------------------------------------------

    def create_vti(self, spec: LinkSpec) -> None:
        netlink_call("add", f"create vti {spec.name}", self.ipr.link, "add", ifname=spec.name, kind="vti",
                     vti_local=str(spec.local), vti_remote=str(spec.remote), vti_ikey=spec.key, vti_okey=spec.key)
        self.set_link(spec, mark=True)

    def delete_link(self, name: str) -> None:
        index = self._index(name)
        if index is not None:
            netlink_call("del", f"delete link {name}", self.ipr.link, "del", index=index)

    def set_link(self, spec: LinkSpec, mark: bool) -> None:
        """MTU and up; with ``mark`` also the agent's alias (only on VTIs it owns, never on given links)."""
        index = self._index(spec.name)
        if index is None:
            raise InterfaceMissing(f"set link {spec.name}: no such interface")
        extra = {"ifalias": spec.alias} if mark else {}
        netlink_call("set", f"set link {spec.name} mtu {spec.mtu} up", self.ipr.link, "set", index=index,
                     mtu=spec.mtu, state="up", **extra)

    def add_address(self, ifname: str, addr: IPv4Interface) -> bool:
        index = self._require_index(ifname)
        return netlink_call("add", f"add address {addr} dev {ifname}", self.ipr.addr, "add", index=index,
                            address=str(addr.ip), prefixlen=addr.network.prefixlen)

    def delete_address(self, ifname: str, addr: IPv4Interface) -> bool:
        index = self._require_index(ifname)
        return netlink_call("del", f"delete address {addr} dev {ifname}", self.ipr.addr, "del", index=index,
                            address=str(addr.ip), prefixlen=addr.network.prefixlen)

    def replace_nexthop(self, spec: NexthopSpec, protocol: int, index: int) -> None:
        # NLM_F_CREATE|NLM_F_REPLACE: atomic in the kernel; every route using the id follows in the same instant.
        netlink_call("replace", f"replace nexthop {spec}", self.rtnl.replace_nexthop, spec.id, index, protocol)

    def delete_nexthop(self, nexthop: ActualNexthop) -> bool:
        return netlink_call("del", f"delete nexthop {nexthop}", self.rtnl.delete_nexthop, nexthop.id)

    def replace_route(self, spec: RouteSpec, table: int, protocol: int) -> None:
        if spec.nhid is not None:
            netlink_call("replace", f"replace route {spec} table {table}", self.rtnl.replace_route_via_nexthop,
                         str(spec.dst.network_address), spec.dst.prefixlen, table, protocol, spec.metric, spec.nhid,
                         spec.src)
            return
        kwargs: dict[str, Any] = dict(dst=str(spec.dst), table=table, proto=protocol, priority=spec.metric,
                                      family=AF_INET)
        if spec.type == "unreachable":
            kwargs["type"] = "unreachable"
        else:
            kwargs["oif"] = self._require_index(spec.ifname or "")
            if spec.src is not None:
                kwargs["prefsrc"] = str(spec.src)
        # replace = one atomic netlink call (NLM_F_CREATE|NLM_F_REPLACE): make-before-break by construction.
        netlink_call("replace", f"replace route {spec} table {table}", self.ipr.route, "replace", **kwargs)

    def delete_route(self, route: ActualRoute, table: int) -> bool:
        # scope RT_SCOPE_NOWHERE matches any scope, as `ip route del` does (a stray may be scope link).
        kwargs: dict[str, Any] = dict(dst=str(route.dst), table=table, proto=route.protocol, priority=route.metric,
                                      family=AF_INET, scope=RT_SCOPE_NOWHERE)
        if route.type != "unicast":
            kwargs["type"] = route.type
        return netlink_call("del", f"delete route {route.dst} metric {route.metric} table {table}", self.ipr.route,
                            "del", **kwargs)

    def add_rule(self, priority: int, table: int, protocol: int) -> bool:
        return netlink_call("add", f"add rule pref {priority} lookup {table}", self.ipr.rule, "add", family=AF_INET,
                            priority=priority, table=table, FRA_PROTOCOL=protocol)

    def delete_rule(self, rule: ActualRule) -> bool:
        # The kernel deletes the first rule matching every attribute we pass: pass them all so that only this one
        # goes (never the good rule at the same priority).
        kwargs: dict[str, Any] = {"family": AF_INET, "priority": rule.priority, "table": rule.table,
                                  "action": {v: k for k, v in FR_ACTIONS.items()}.get(rule.action, 1)}
        for name, value in rule.selectors:
            kwargs[name[len("FRA_"):].lower() if name.startswith("FRA_") else name] = value
        return netlink_call("del", f"delete rule pref {rule.priority} lookup {rule.table}", self.ipr.rule, "del",
                            **kwargs)

    def _index(self, name: str) -> int | None:
        found = self.ipr.link_lookup(ifname=name)
        return found[0] if found else None

    def _require_index(self, name: str) -> int:
        index = self._index(name)
        if index is None:
            raise InterfaceMissing(f"{name}: no such interface")
        return index


def _nexthop(raw: RawNexthop, names: dict[int, str]) -> ActualNexthop:
    kind = "group" if raw.group else "blackhole" if raw.blackhole else "gateway" if raw.gateway else "dev"
    return ActualNexthop(id=raw.id, protocol=raw.protocol, ifname=names.get(raw.oif) if raw.oif else None,
                         kind=kind)  # type: ignore[arg-type]


@functools.lru_cache(maxsize=4096)
def _network(address: str, prefixlen: int) -> IPv4Network:
    # Cached: every switch reads the whole table back, and ipaddress objects cost ~5 us each to build.
    return IPv4Network((address, prefixlen))


@functools.lru_cache(maxsize=256)
def _address(address: str) -> IPv4Address:
    return IPv4Address(address)


def _ip_or_none(value: str | None) -> IPv4Address | None:
    return IPv4Address(value) if value else None


def read_sysctls(keys: list[str], root: Path = SYSCTL_ROOT) -> dict[str, str | None]:
    """Current values; None when the key does not exist (for example the interface is missing)."""
    result: dict[str, str | None] = {}
    for key in keys:
        try:
            result[key] = (root / key).read_text().strip()
        except FileNotFoundError:
            result[key] = None
    return result


def write_sysctl(key: str, value: str, root: Path = SYSCTL_ROOT) -> None:
    path = root / key
    try:
        with open(path, "w") as handle:
            handle.write(value)
    except OSError as exc:
        raise KernelError(f"set sysctl {key}={value}: {exc.strerror}") from None
