"""The reconciler: desired state (pure) vs actual kernel state (read), apply only the difference.

Stages run in dependency order and re-read what an earlier stage may have changed (recreating a VTI flushes its
addresses and routes). A failing stage is reported and the later stages still run, so the leak-protection routes and
the rule are in place even when, for example, a VTI cannot be created. The list of applied changes is returned: a
second run over a converged system returns an empty list.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import nft
from .config import AgentConfig
from .desired import (
    ActualLink,
    Change,
    DesiredState,
    LinkMode,
    TunnelView,
    desired_state,
    diff_addresses,
    diff_links,
    diff_nexthops,
    diff_routes,
    diff_rule,
    diff_sysctls,
    owned_links,
)
from .kernel import SYSCTL_ROOT, Kernel, KernelError, read_sysctls, write_sysctl
from .state import NFT_RECORD

log = logging.getLogger(__name__)


@dataclass
class ReconcileResult:
    changes: list[Change] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems


class Reconciler:
    def __init__(self, config: AgentConfig, kernel: Kernel, link_mode: LinkMode = "vti",
                 sysctl_root: Path = SYSCTL_ROOT):
        self.config = config
        self.kernel = kernel
        self.link_mode = link_mode
        self.sysctl_root = sysctl_root

    def run(self, view: TunnelView, routes_only: bool = False, with_nft: bool = True) -> ReconcileResult:
        """Converge the kernel to the desired state for ``view``.

        ``routes_only`` is the failover fast path: nexthops and routes only. A switch there is one nexthop replace
        (plus one nexthop delete when the old tunnel is no standby), whatever the number of AWS CIDRs; the whole
        table is still read and compared, so it repairs what it finds. ``with_nft=False`` skips the ruleset (the
        daemon's fallback when the file is refused: links, routes and leak protection must still be kept).
        """
        started = time.perf_counter()
        desired = desired_state(self.config, view)
        result = ReconcileResult()
        ruleset = None
        if not routes_only and with_nft:
            # Read and check the ruleset before changing anything: a bad file applies nothing at all.
            ruleset = nft.read_ruleset(self.config.paths.nft_ruleset, self.config.ownership.nft_table)
        if not routes_only:
            self._stage(result, "links", self._links, desired)
            self._stage(result, "addresses", self._addresses, desired)
        self._stage(result, "routes", self._routes, desired)
        if not routes_only:
            self._stage(result, "rule", self._rule, desired)
        if ruleset is not None:
            self._stage(result, "nftables", self._nft, ruleset)
        if not routes_only:
            # Last: the sysctls turn forwarding on (the agent owns ip_forward), so the leak guard (unreachable routes,
            # the rule, the table) is in place before the first packet is forwarded.
            self._stage(result, "sysctls", self._sysctls, desired)
        result.seconds = time.perf_counter() - started
        if result.changes:
            log.info("reconcile applied %s change(s) in %.1f ms: %s", len(result.changes), result.seconds * 1000,
                     "; ".join(str(c) for c in result.changes))
        for problem in result.problems:
            log.error("reconcile: %s", problem)
        return result

    def _stage(self, result: ReconcileResult, name: str, fn, arg) -> None:  # noqa: ANN001 - internal dispatcher
        try:
            fn(arg, result)
        except (KernelError, nft.NftError, OSError) as exc:
            result.problems.append(f"{name}: {exc}")

    def _apply(self, result: ReconcileResult, change: Change, action) -> None:  # noqa: ANN001
        log.debug("apply %s", change)
        try:
            changed = action()
        except KernelError as exc:
            result.problems.append(str(exc))
            return
        if changed is not False:  # False: the kernel already had it (EEXIST on add, ENOENT/ESRCH on delete)
            result.changes.append(change)

    def _links(self, desired: DesiredState, result: ReconcileResult) -> None:
        names = tuple(spec.name for spec in desired.links)
        mark = self.link_mode == "vti"
        for change in diff_links(desired.links, self.kernel.read_links(names), self.link_mode):
            spec = change.spec
            if change.action == "missing_link":
                result.problems.append(f"link {spec.name} is missing (link mode 'given': created by someone else)")
            elif change.action == "foreign_link":
                result.problems.append(change.target)
            elif change.action == "create_link":
                self._apply(result, change, lambda s=spec: self.kernel.create_vti(s))
            elif change.action == "recreate_link":
                def recreate(s=spec) -> None:
                    self.kernel.delete_link(s.name)
                    self.kernel.create_vti(s)
                self._apply(result, change, recreate)
            elif change.action == "set_link":
                self._apply(result, change, lambda s=spec: self.kernel.set_link(s, mark))

    def _owned_links(self, desired: DesiredState) -> dict[str, ActualLink]:
        return owned_links(desired.links, self.kernel.read_links(tuple(s.name for s in desired.links)),
                           self.link_mode)

    def _addresses(self, desired: DesiredState, result: ReconcileResult) -> None:
        links = self._owned_links(desired)  # never strip the addresses of a link that is not ours
        wanted = {name: addrs for name, addrs in desired.addresses.items() if name in links}
        for change in diff_addresses(wanted, self.kernel.read_addresses(links)):
            ifname, addr = change.spec
            if change.action == "add_address":
                self._apply(result, change, lambda i=ifname, a=addr: self.kernel.add_address(i, a))
            else:
                self._apply(result, change, lambda i=ifname, a=addr: self.kernel.delete_address(i, a))

    def _sysctls(self, desired: DesiredState, result: ReconcileResult) -> None:
        links = self._owned_links(desired)
        foreign = {spec.name for spec in desired.links} - set(links)
        keys = [k for k in desired.sysctls if not any(f"/conf/{name}/" in k for name in foreign)]
        actual = read_sysctls(keys, self.sysctl_root)
        for key, value in actual.items():
            if value is None and "/conf/all/" not in key and key.count("/") > 2:
                result.problems.append(f"sysctl {key}: missing (interface absent)")
        for change in diff_sysctls({k: desired.sysctls[k] for k in keys}, actual):
            key, value = change.spec
            self._apply(result, change, lambda k=key, v=value: write_sysctl(k, v, self.sysctl_root))

    def _routes(self, desired: DesiredState, result: ReconcileResult) -> None:
        """Nexthops then routes, ordered so that no moment is without a route through a tunnel or the leak guard.

        1. add/replace the role nexthops (a switch: the active one now points at the new tunnel, all routes follow);
        2. add/replace routes that are missing or wrong (new role: its routes; leak-guard unreachable routes);
        3. delete our stray routes; 4. delete nexthops no role needs, which takes their routes with them.
        """
        names, tunnel_links = self.kernel.link_snapshot(tuple(s.name for s in desired.links))
        links = owned_links(desired.links, tunnel_links, self.link_mode)
        usable = {name for name, link in links.items() if link.up}
        nexthops = diff_nexthops(desired.nexthops, self.kernel.read_nexthops(names), desired.protocol, usable)
        result.problems.extend(nexthops.problems)
        route_changes, route_problems = diff_routes(desired.routes, self.kernel.read_routes(desired.table, names),
                                                    desired.protocol, nexthops.unavailable, nexthops.removed)
        result.problems.extend(route_problems)
        upserts = [c for c in nexthops.changes if c.action != "delete_nexthop"]
        for change in upserts:
            index = links[change.spec.ifname].index
            self._apply(result, change, lambda s=change.spec, i=index: self.kernel.replace_nexthop(s, desired.protocol,
                                                                                                    i))
        failed = {c.spec.id for c in upserts if c not in result.changes}
        for change in route_changes:
            if change.action == "replace_route":
                if change.spec.nhid in failed:
                    continue  # its nexthop could not be made: that problem is reported already
                self._apply(result, change,
                            lambda s=change.spec: self.kernel.replace_route(s, desired.table, desired.protocol))
            else:
                self._apply(result, change, lambda r=change.spec: self.kernel.delete_route(r, desired.table))
        for change in nexthops.changes:
            if change.action == "delete_nexthop":
                self._apply(result, change, lambda n=change.spec: self.kernel.delete_nexthop(n))

    def _rule(self, desired: DesiredState, result: ReconcileResult) -> None:
        for change in diff_rule(desired.rule, self.kernel.read_rules(desired.rule.priority)):
            if change.action == "add_rule":
                self._apply(result, change, lambda: self.kernel.add_rule(desired.rule.priority, desired.rule.table,
                                                                         desired.protocol))
            else:
                self._apply(result, change, lambda r=change.spec: self.kernel.delete_rule(r))

    def _nft(self, ruleset: str, result: ReconcileResult) -> None:
        table = self.config.ownership.nft_table
        record = self.config.paths.state_dir / NFT_RECORD
        needed, why = nft.needs_apply(ruleset, table, record)
        if needed:
            change = Change("apply_nft", f"table inet {table} ({why})")
            log.debug("apply %s", change)
            nft.apply_ruleset(ruleset, table, record)
            result.changes.append(change)
