"""`vpnctl doctor`: the guide's "Testing and Validation" checklist as one read-only command.

Two halves, so that most tests need no root:
- ``evaluate(config, facts)`` is pure: the expectations come from agent.json (through ``desired_state``, the same
  function the reconciler converges to), the observations from a ``DoctorFacts``; it returns one ``CheckResult`` per
  check with what was expected, what was found, and the likely cause and fix.
- ``gather_facts`` reads the gateway: netlink (the agent's ``Kernel`` readers), /proc/sys, ``nft``, ``ip xfrm``, VICI,
  the charon log, and one ICMP echo per tunnel. Every source may be unreadable; that becomes ``Unavailable(reason)``
  and the checks that need it fail (or skip) saying why. Nothing is ever changed on the gateway: the nftables file is
  compared with the loaded table by loading it into a throwaway network namespace (``unshare --net``), never into
  the gateway's own.

Secrets: ``ip xfrm state`` prints the ESP keys. Its output is parsed in memory into addresses, SPIs and marks only; it
is never logged or printed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path
from typing import Any, TypeVar

from hostconfig import gateway_paths as gp

from .config import AgentConfig, TunnelConfig
from .desired import (
    ACTIVE_METRIC,
    STANDBY_METRIC,
    UNREACHABLE_METRIC,
    ActualLink,
    ActualRoute,
    ActualRule,
    LinkMode,
    RuleSpec,
    TunnelView,
    desired_state,
    diff_rule,
)
from .vici_client import TunnelSaState

log = logging.getLogger(__name__)

OK, FAIL, SKIP = "ok", "FAIL", "skip"
DEFAULT_LOG_MINUTES = 60
DEFAULT_PROBE_TIMEOUT = 2.0
LOG_TAIL_LINES = 5000
COMMAND_TIMEOUT = 30
STRONGSWAN_UNITS = ("strongswan", "strongswan-starter")

T = TypeVar("T")


# ------------------------------------------------------------------------------------------------ results and facts


@dataclass(frozen=True)
class CheckResult:
    """One line of the report. ``name`` is stable (tests and scripts match on it)."""

    name: str
    status: str  # ok | FAIL | skip
    expected: str
    found: str
    hint: str = ""

    def line(self) -> str:
        if self.status == OK:
            return f"ok   {self.name}: {self.found}"
        if self.status == SKIP:
            return f"skip {self.name}: {self.hint or self.found}"
        return f"FAIL {self.name}: expected {self.expected}; found {self.found}. Likely: {self.hint}"


@dataclass(frozen=True)
class Unavailable:
    """A source that could not be read, and why (not root, tool missing, charon down, ...)."""

    reason: str


@dataclass(frozen=True)
class XfrmState:
    src: str
    dst: str
    proto: str
    spi: int
    reqid: int | None
    mark: int | None
    mask: int | None


@dataclass(frozen=True)
class XfrmPolicy:
    direction: str  # in | out | fwd (socket policies are not kept)
    mark: int | None
    mask: int | None
    tmpl_src: str | None
    tmpl_dst: str | None


@dataclass(frozen=True)
class NftFacts:
    """The loaded table's fingerprint and the fingerprint the ruleset file gives when loaded on its own."""

    loaded_sha256: str | None  # None: table not loaded
    expected_sha256: str | None  # None: could not be computed (see problem)
    method: str  # how expected_sha256 was obtained
    problem: str | None = None  # the ruleset file is unusable
    file_changed: bool = False  # the agent's record says the file changed since it was applied


@dataclass(frozen=True)
class SaFacts:
    states: dict[str, TunnelSaState]
    loaded_connections: frozenset[str] | None  # None: list-conns failed


@dataclass(frozen=True)
class LogFacts:
    source: str
    lines_read: int
    matches: dict[str, tuple[str, ...]]  # pattern name -> matching lines, oldest first


@dataclass(frozen=True)
class ProbeFacts:
    answered: bool
    rtt_seconds: float | None = None
    error: str | None = None
    route_dev: str | None = None  # the interface the kernel picks for inside address -> AWS inside address


@dataclass(frozen=True)
class DaemonFacts:
    running: bool
    active: str | None = None
    state_stale: bool = False  # running (holds its lock) but has not written its state file lately
    repairs: dict[str, dict[str, Any]] = field(default_factory=dict)  # tunnel -> daemon state "repair" (contracts §3)


@dataclass
class DoctorFacts:
    link_mode: LinkMode
    links: dict[str, ActualLink] | Unavailable
    addresses: dict[str, tuple[IPv4Interface, ...]] | Unavailable
    sysctls: dict[str, str | None] | Unavailable
    routes: list[ActualRoute] | Unavailable
    rules: list[ActualRule] | Unavailable
    nft: NftFacts | Unavailable
    xfrm_states: list[XfrmState] | Unavailable
    xfrm_policies: list[XfrmPolicy] | Unavailable
    sas: SaFacts | Unavailable
    log: LogFacts | Unavailable | None  # None: no log source found
    probes: dict[str, ProbeFacts] | Unavailable | None  # None: probing switched off
    daemon: DaemonFacts = field(default_factory=lambda: DaemonFacts(False))
    probe_timeout: float = DEFAULT_PROBE_TIMEOUT


# Charon log patterns the guide tells operators to look for, with what each one means here.
LOG_PATTERNS: dict[str, tuple[re.Pattern[str], str]] = {
    "NO_PROPOSAL_CHOSEN": (
        re.compile(r"NO_PROPOSAL_CHOSEN|no acceptable proposal found", re.IGNORECASE),
        "the proposals differ between the ends (phase 1, or phase 2 / PFS group at a CHILD_SA rekey): both come from "
        "the stack's crypto profile, so re-run `pulumi up` to push it to both ends; compare `swanctl --list-conns` "
        "with the VPN tunnel options in the AWS console",
    ),
    "AUTHENTICATION_FAILED": (
        re.compile(r"AUTHENTICATION_FAILED|MAC mismatched|authentication of '.*' with pre-shared key failed",
                   re.IGNORECASE),
        f"PSK or identity mismatch: the PSK in {gp.SWANCTL_CONF.path} differs from the AWS tunnel's, or "
        "the local id is not the customer gateway's public IP; re-push with `pulumi up` (see docs/operations.md, "
        "rotating a PSK)",
    ),
    "CHILD_SA not established": (
        re.compile(r"CHILD_SA\S*\s.*not established|no CHILD_SA built|failed to establish CHILD_SA|"
                   r"unable to install (inbound|outbound)", re.IGNORECASE),
        "phase 2 failed: ESP proposal or PFS group mismatch, traffic selectors refused (TS_UNACCEPTABLE), or the "
        "kernel cannot install ESP SAs ('unable to install': `modprobe esp4 ip_vti`)",
    ),
    "IKE_SA deleted": (
        re.compile(r"IKE_SA\S*\s.*deleted|deleting IKE_SA|received DELETE for IKE_SA", re.IGNORECASE),
        "the IKE_SA went away (DPD timeout, the peer deleted it, or charon restarted) and is not back: see the sa "
        "lines; AWS deletes an idle or mismatched tunnel, the Cloud Firewall must pass UDP 500/4500",
    ),
}


# ------------------------------------------------------------------------------------------------ pure evaluation


def _mark(value: int) -> str:
    return f"0x{value:x}"


def _tunnel_health(config: AgentConfig, facts: DoctorFacts) -> dict[str, bool | None]:
    """Healthy = answered this run's probe; without probes, CHILD_SA INSTALLED; None when neither is known."""
    result: dict[str, bool | None] = {}
    for t in config.tunnels:
        if isinstance(facts.probes, dict) and t.name in facts.probes:
            result[t.name] = facts.probes[t.name].answered
        elif isinstance(facts.sas, SaFacts):
            st = facts.sas.states.get(t.name)
            result[t.name] = bool(st and st.child_state == "INSTALLED")
        else:
            result[t.name] = None
    return result


def _unavailable(name: str, expected: str, source: Unavailable, what: str) -> CheckResult:
    return CheckResult(name, FAIL, expected, f"cannot read {what} ({source.reason})",
                       "run `vpnctl doctor` as root on the gateway; the reason above names what is missing")


def check_links(config: AgentConfig, facts: DoctorFacts) -> list[CheckResult]:
    results = []
    desired = {spec.name: spec for spec in desired_state(config, TunnelView(frozenset(), None)).links}
    for t in config.tunnels:
        spec = desired[t.interface]
        expected = f"exists, up, mtu {spec.mtu}"
        name = f"link {t.interface}"
        if isinstance(facts.links, Unavailable):
            results.append(_unavailable(name, expected, facts.links, "links"))
            continue
        link = facts.links.get(t.interface)
        if link is None:
            hint = ("the agent creates it: `vpnctl reconcile` (if that fails with 'cannot create VTI', `modprobe "
                    "ip_vti`)" if facts.link_mode == "vti" else
                    "link mode 'given': whoever provides the tunnel links (the lab) did not create it")
            results.append(CheckResult(name, FAIL, expected, "missing", hint))
            continue
        problems = []
        if not link.up:
            problems.append("down")
        if link.mtu != spec.mtu:
            problems.append(f"mtu {link.mtu}")
        found = f"{link.kind or 'link'}, {'up' if link.up else 'down'}, mtu {link.mtu}"
        if problems:
            hint = ("someone set it down or changed its MTU (a wrong MTU fragments or black-holes large packets; "
                    f"AWS's tunnel MTU is {spec.mtu}): `vpnctl reconcile` sets it back")
            results.append(CheckResult(name, FAIL, expected, found, hint))
        else:
            results.append(CheckResult(name, OK, expected, found))
    return results


def check_vtis(config: AgentConfig, facts: DoctorFacts) -> list[CheckResult]:
    results = []
    for t in config.tunnels:
        name = f"vti {t.interface}"
        expected = (f"kind vti, local {config.local_outside_ip}, remote {t.remote_outside_ip}, "
                    f"ikey=okey={t.mark} ({_mark(t.mark)})")
        if facts.link_mode == "given":
            results.append(CheckResult(name, SKIP, expected, "not checked",
                                       "link mode 'given': the tunnel links are not VTIs made by the agent "
                                       "(kernel without ip_vti); kind, ends and key not checked"))
            continue
        if isinstance(facts.links, Unavailable):
            results.append(_unavailable(name, expected, facts.links, "links"))
            continue
        link = facts.links.get(t.interface)
        if link is None:
            results.append(CheckResult(name, SKIP, expected, "missing", "the link is missing (see the link line)"))
            continue
        found = f"kind {link.kind}, local {link.local}, remote {link.remote}, ikey {link.ikey}, okey {link.okey}"
        if link.kind != "vti":
            hint = (f"{t.interface} is not a VTI (something else holds the name): delete it (`ip link del "
                    f"{t.interface}`) and `vpnctl reconcile` creates the VTI; on a kernel without ip_vti, "
                    "`modprobe ip_vti`")
            results.append(CheckResult(name, FAIL, expected, found, hint))
        elif link.ikey != t.mark or link.okey != t.mark:
            hint = (f"the VTI key must equal the CHILD_SA mark {t.mark} (swanctl mark_in/mark_out): otherwise "
                    "decrypted packets never reach the VTI and nothing is encrypted into it; `vpnctl reconcile` "
                    "recreates the VTI with the right key")
            results.append(CheckResult(name, FAIL, expected, found, hint))
        elif link.local != config.local_outside_ip or link.remote != t.remote_outside_ip:
            hint = ("the VTI ends must be the gateway's private (VPC NIC) address and the AWS outside IP of this "
                    "tunnel, as in the XFRM states; `vpnctl reconcile` recreates it")
            results.append(CheckResult(name, FAIL, expected, found, hint))
        else:
            results.append(CheckResult(name, OK, expected, found))
    return results


def check_addresses(config: AgentConfig, facts: DoctorFacts) -> list[CheckResult]:
    results = []
    for t in config.tunnels:
        name = f"address {t.interface}"
        expected = str(t.gateway_inside_cidr)
        if isinstance(facts.addresses, Unavailable):
            results.append(_unavailable(name, expected, facts.addresses, "addresses"))
            continue
        have = facts.addresses.get(t.interface)
        if have is None:
            results.append(CheckResult(name, SKIP, expected, "link missing", "the link is missing (see the link line)"))
            continue
        found = ", ".join(str(a) for a in have) or "none"
        if tuple(have) == (t.gateway_inside_cidr,):
            results.append(CheckResult(name, OK, expected, found))
        else:
            hint = (f"the inside address is AWS's /30 for this tunnel (the probe binds to {t.gateway_inside_ip}, "
                    f"AWS answers at {t.aws_inside_ip}); `vpnctl reconcile` sets exactly this address")
            results.append(CheckResult(name, FAIL, expected, found, hint))
    return results


def _sysctl_hint(key: str) -> str:
    if key.endswith("ip_forward"):
        return ("the gateway does not forward: VLAN hosts cannot reach AWS. `vpnctl reconcile` sets it; "
                f"{gp.SYSCTL_CONF.path} keeps it across reboots (something reset it: another tool, "
                "`sysctl --system` with a conflicting file?)")
    if key.endswith("disable_policy"):
        return ("without it the kernel looks for an IPsec policy for packets leaving the VTI and drops them "
                "(XfrmOutPolBlock/XfrmInNoPols); `vpnctl reconcile` sets it")
    return ("strict reverse-path filtering drops replies AWS sends on the other tunnel (AWS may answer on either); "
            "the design needs 2 (loose); `vpnctl reconcile` sets it")


def check_sysctls(config: AgentConfig, facts: DoctorFacts) -> list[CheckResult]:
    results = []
    wanted = desired_state(config, TunnelView(frozenset(), None)).sysctls
    for key, value in wanted.items():
        name = f"sysctl {key.replace('/', '.')}"
        if isinstance(facts.sysctls, Unavailable):
            results.append(_unavailable(name, value, facts.sysctls, "/proc/sys"))
            continue
        have = facts.sysctls.get(key)
        if have is None:
            results.append(CheckResult(name, FAIL, value, "missing (interface absent)",
                                       "the interface does not exist (see the link line)"))
        elif have != value:
            results.append(CheckResult(name, FAIL, value, have, _sysctl_hint(key)))
        else:
            results.append(CheckResult(name, OK, value, have))
    return results


def check_rule(config: AgentConfig, facts: DoctorFacts) -> list[CheckResult]:
    own = config.ownership
    name = f"rule {own.rule_priority}"
    expected = f"one rule: pref {own.rule_priority} lookup {own.route_table}"
    if isinstance(facts.rules, Unavailable):
        return [_unavailable(name, expected, facts.rules, "rules")]
    rules = facts.rules
    found = "; ".join(f"pref {r.priority} {r.action} {r.table}" + (f" {dict(r.selectors)}" if r.selectors else "")
                      for r in rules) or "none"
    changes = diff_rule(RuleSpec(own.rule_priority, own.route_table), rules)
    if not changes:
        return [CheckResult(name, OK, expected, found)]
    if any(c.action == "add_rule" for c in changes):
        hint = (f"without it lookups never reach table {own.route_table}: traffic for AWS follows the main table "
                "(default route: dropped by the nftables leak guard, or sent in clear text without it); "
                "`vpnctl reconcile` adds it")
    else:
        hint = (f"another rule sits at the agent's priority {own.rule_priority} (added by hand or another tool): "
                "`vpnctl reconcile` removes rules at its priority that are not its own")
    return [CheckResult(name, FAIL, expected, found, hint)]


def _describe_route(r: ActualRoute) -> str:
    via = f"dev {r.ifname}" + (f" src {r.src}" if r.src else "") if r.type == "unicast" else r.type
    return f"metric {r.metric} {via} proto {r.protocol}"


def check_routes(config: AgentConfig, facts: DoctorFacts) -> list[CheckResult]:
    own = config.ownership
    src = config.gateway_vlan_address.ip
    if isinstance(facts.routes, Unavailable):
        return [_unavailable(f"route {cidr} {role}", "", facts.routes, f"table {own.route_table}")
                for cidr in config.aws_cidrs for role in ("active", "standby", "unreachable")]
    by_if = {t.interface: t for t in config.tunnels}
    health = _tunnel_health(config, facts)
    links = facts.links if isinstance(facts.links, dict) else {}
    results = []
    for cidr in config.aws_cidrs:
        ours = [r for r in facts.routes if r.dst == cidr and r.protocol == own.route_protocol]
        foreign = [r for r in facts.routes if r.dst == cidr and r.protocol != own.route_protocol]
        results.append(_check_active(config, cidr, ours, foreign, by_if, health, links, src))
        results.append(_check_standby(config, cidr, ours, by_if, health, src))
        results.append(_check_unreachable(config, cidr, ours))
    return results


def _check_active(config: AgentConfig, cidr: Any, ours: list[ActualRoute], foreign: list[ActualRoute],
                  by_if: dict[str, TunnelConfig], health: dict[str, bool | None], links: dict[str, ActualLink],
                  src: IPv4Address) -> CheckResult:
    name = f"route {cidr} active"
    expected = (f"metric {ACTIVE_METRIC} dev {'|'.join(by_if)} src {src} proto {config.ownership.route_protocol} "
                f"(table {config.ownership.route_table})")
    active = [r for r in ours if r.metric == ACTIVE_METRIC]
    healthy = [n for n, ok in health.items() if ok]
    if not active:
        clash = [r for r in foreign if r.metric == ACTIVE_METRIC]
        if clash:
            return CheckResult(name, FAIL, expected, f"only a foreign route: {_describe_route(clash[0])}",
                               "a route of another protocol holds the agent's destination and metric; the agent "
                               "leaves it alone: delete it by hand, then `vpnctl reconcile`")
        if not healthy and all(h is not None for h in health.values()):
            return CheckResult(name, FAIL, expected, "none",
                               f"no tunnel is healthy (see the sa and probe lines): traffic to {cidr} is refused by "
                               "the unreachable route, nothing leaks; fix the tunnels first")
        return CheckResult(name, FAIL, expected, "none",
                           f"tunnel(s) {', '.join(healthy) or 'of unknown health'} usable but no active route: is the "
                           "failover daemon running (`systemctl status hybrid-vpn-failover`)? `vpnctl reconcile` "
                           "installs it")
    r = active[0]
    found = _describe_route(r)
    tunnel = by_if.get(r.ifname or "")
    if r.type != "unicast" or tunnel is None:
        return CheckResult(name, FAIL, expected, found,
                           "the active route does not go through a tunnel: `vpnctl reconcile` replaces it")
    if r.src != src:
        return CheckResult(name, FAIL, expected, found,
                           f"gateway-originated traffic would leave with source {r.src}, which AWS routes nowhere "
                           "(the VPN connection's static routes are the VLAN CIDRs): `vpnctl reconcile`")
    link = links.get(r.ifname or "")
    if link is not None and not link.up:
        return CheckResult(name, FAIL, expected, f"{found} (link down)",
                           "the active route points at a link that is down: traffic to AWS is dropped; "
                           "`vpnctl reconcile`")
    others_ok = [n for n in healthy if n != tunnel.name]
    if health.get(tunnel.name) is False and others_ok:
        return CheckResult(name, FAIL, expected, f"{found} ({tunnel.name} does not answer)",
                           f"{others_ok[0]} answers but traffic still uses {tunnel.name}: the failover daemon should "
                           f"have switched after {config.probe.down_after} missed probes; check `vpnctl status` and "
                           "`journalctl -u hybrid-vpn-failover`")
    return CheckResult(name, OK, expected, f"{found} ({tunnel.name})")


def _check_standby(config: AgentConfig, cidr: Any, ours: list[ActualRoute], by_if: dict[str, TunnelConfig],
                   health: dict[str, bool | None], src: IPv4Address) -> CheckResult:
    name = f"route {cidr} standby"
    if len(config.tunnels) < 2:
        return CheckResult(name, SKIP, "", "", "one tunnel configured: no standby")
    active = next((r for r in ours if r.metric == ACTIVE_METRIC and r.type == "unicast"), None)
    active_if = active.ifname if active else None
    others = [t for t in config.tunnels if t.interface != active_if]
    expected = (f"metric {STANDBY_METRIC} dev {'|'.join(t.interface for t in others)} src {src} when that tunnel "
                "is healthy")
    standby = [r for r in ours if r.metric == STANDBY_METRIC]
    if standby:
        r = standby[0]
        found = _describe_route(r)
        tunnel = by_if.get(r.ifname or "")
        if r.type != "unicast" or tunnel is None or r.ifname == active_if or r.src != src:
            return CheckResult(name, FAIL, expected, found,
                               "the standby route must use the other tunnel with the VLAN source address: "
                               "`vpnctl reconcile`")
        if health.get(tunnel.name) is False:
            return CheckResult(name, FAIL, expected, f"{found} ({tunnel.name} does not answer)",
                               f"standby {tunnel.name} is not healthy: a failover to it would black-hole traffic; "
                               "the daemon removes it after missed probes (is it running?)")
        return CheckResult(name, OK, expected, f"{found} ({tunnel.name})")
    healthy_others = [t.name for t in others if health.get(t.name)]
    if healthy_others:
        return CheckResult(name, FAIL, expected, "none",
                           f"{healthy_others[0]} answers but is not standby: the daemon adds it after "
                           f"{config.probe.up_after} good probes (re-run in a few seconds); if it stays missing, is "
                           "hybrid-vpn-failover running?")
    if any(health.get(t.name) is None for t in others):
        return CheckResult(name, SKIP, expected, "none", "health of the other tunnel unknown (no probe, no VICI)")
    return CheckResult(name, OK, expected, f"none ({', '.join(t.name for t in others)} not healthy: none expected)")


def _check_unreachable(config: AgentConfig, cidr: Any, ours: list[ActualRoute]) -> CheckResult:
    name = f"route {cidr} unreachable"
    expected = f"unreachable metric {UNREACHABLE_METRIC} proto {config.ownership.route_protocol}"
    found = [r for r in ours if r.metric == UNREACHABLE_METRIC]
    if found and found[0].type == "unreachable":
        return CheckResult(name, OK, expected, _describe_route(found[0]))
    return CheckResult(name, FAIL, expected, _describe_route(found[0]) if found else "none",
                       f"leak protection missing: with both tunnels down, traffic to {cidr} would fall through to the "
                       "default route in clear text (only the nftables leak guard stops it); `vpnctl reconcile`")


def check_nft(config: AgentConfig, facts: DoctorFacts) -> list[CheckResult]:
    table = config.ownership.nft_table
    name = f"nftables inet {table}"
    expected = f"loaded and equal to {config.paths.nft_ruleset}"
    nf = facts.nft
    if isinstance(nf, Unavailable):
        return [_unavailable(name, expected, nf, "nftables")]
    if nf.problem:
        return [CheckResult(name, FAIL, expected, nf.problem,
                            "the ruleset file is missing or invalid: re-push the configuration (`pulumi up`)")]
    if nf.loaded_sha256 is None:
        return [CheckResult(name, FAIL, expected, "table not loaded",
                            "no forwarding, NAT exemption, MSS clamp or leak guard: `vpnctl reconcile` loads it "
                            "(something deleted it: `nft flush ruleset` by another tool or firewall service?)")]
    if nf.file_changed:
        return [CheckResult(name, FAIL, expected, f"loaded, but the file changed since it was applied ({nf.method})",
                            "a new ruleset was delivered and the agent has not applied it: `vpnctl reconcile` (or "
                            "`systemctl restart hybrid-vpn-failover`)")]
    if nf.expected_sha256 is None:
        return [CheckResult(name, SKIP, expected, "loaded; not compared", f"cannot compare ({nf.method})")]
    if nf.loaded_sha256 != nf.expected_sha256:
        return [CheckResult(name, FAIL, expected, f"loaded but different (compared via {nf.method})",
                            "the table was edited or flushed by hand, or the file changed and the agent has not "
                            "reapplied it: `vpnctl reconcile` replaces the table atomically")]
    return [CheckResult(name, OK, expected, f"loaded, equal to the file ({nf.method})")]


def _mark_matches(mark: int | None, mask: int | None, wanted: int) -> bool:
    if mark is None:
        return False
    mask = 0xFFFFFFFF if mask is None else mask
    return mask == 0xFFFFFFFF and mark == wanted


def check_xfrm(config: AgentConfig, facts: DoctorFacts) -> list[CheckResult]:
    results = []
    local = str(config.local_outside_ip)
    for t in config.tunnels:
        remote = str(t.remote_outside_ip)
        results.append(_check_xfrm_states(t, local, remote, facts))
        results.append(_check_xfrm_policies(t, remote, facts))
    return results


def _check_xfrm_states(t: TunnelConfig, local: str, remote: str, facts: DoctorFacts) -> CheckResult:
    name = f"xfrm state {t.name}"
    expected = f"ESP SA out {local}->{remote} mark {_mark(t.mark)} and in {remote}->{local}"
    if isinstance(facts.xfrm_states, Unavailable):
        return _unavailable(name, expected, facts.xfrm_states, "XFRM states")
    esp = [s for s in facts.xfrm_states if s.proto == "esp"]
    out = [s for s in esp if s.src == local and s.dst == remote]
    inn = [s for s in esp if s.src == remote and s.dst == local]
    out_marked = [s for s in out if _mark_matches(s.mark, s.mask, t.mark)]
    out_text = ", ".join(f"spi 0x{s.spi:08x} mark {_mark(s.mark) if s.mark is not None else 'none'}" for s in out)
    in_text = ", ".join(f"spi 0x{s.spi:08x}" for s in inn)
    found = f"out {out_text or 'none'}; in {in_text or 'none'}"
    if not out and not inn:
        return CheckResult(name, FAIL, expected, found,
                           "no CHILD_SA in the kernel for this tunnel (see the sa line); if charon says INSTALLED, "
                           "the kernel refused it (charon log 'unable to install': `modprobe esp4`)")
    if out and not out_marked:
        return CheckResult(name, FAIL, expected, found,
                           f"the outbound SA carries another mark: swanctl.conf mark_out must be {t.mark} (= the VTI "
                           "key); re-push the configuration (`pulumi up`), then `swanctl --load-all` and re-establish")
    if not out or not inn:
        return CheckResult(name, FAIL, expected, found,
                           "only one direction installed: a rekey in progress (re-run) or a half-failed install "
                           "(charon log)")
    return CheckResult(name, OK, expected, found)


def _check_xfrm_policies(t: TunnelConfig, remote: str, facts: DoctorFacts) -> CheckResult:
    name = f"xfrm policy {t.name}"
    expected = f"dir out and dir in with mark {_mark(t.mark)}"
    if isinstance(facts.xfrm_policies, Unavailable):
        return _unavailable(name, expected, facts.xfrm_policies, "XFRM policies")
    marked = [p for p in facts.xfrm_policies if _mark_matches(p.mark, p.mask, t.mark)]
    dirs = sorted({p.direction for p in marked})
    found = f"dirs {', '.join(dirs)} with mark {_mark(t.mark)}" if dirs else f"none with mark {_mark(t.mark)}"
    if "out" in dirs and "in" in dirs:
        return CheckResult(name, OK, expected, found)
    others = sorted({_mark(p.mark) for p in facts.xfrm_policies
                     if remote in (p.tmpl_src, p.tmpl_dst) and p.mark is not None and p.mark != t.mark})
    if others:
        return CheckResult(name, FAIL, expected, f"{found}; policies to {remote} carry mark {', '.join(others)}",
                           f"charon installs this tunnel's policies with another mark: swanctl.conf mark_in/mark_out "
                           f"must be {t.mark} (= the VTI key); re-push the configuration (`pulumi up`)")
    return CheckResult(name, FAIL, expected, found,
                       "no policies for this tunnel: the CHILD_SA is not installed (see the sa line)")


def check_sas(config: AgentConfig, facts: DoctorFacts) -> list[CheckResult]:
    results = []
    for t in config.tunnels:
        name = f"sa {t.name}"
        expected = "IKE ESTABLISHED, CHILD INSTALLED"
        if isinstance(facts.sas, Unavailable):
            results.append(CheckResult(name, FAIL, expected, f"charon not reachable ({facts.sas.reason})",
                                       "start strongSwan (`systemctl status strongswan`); the VICI socket must be "
                                       f"{config.paths.vici_socket} (charon-hybrid-vpn.conf and agent.json agree)"))
            continue
        st = facts.sas.states.get(t.name)
        loaded = facts.sas.loaded_connections
        if st is None:
            if loaded is not None and t.name not in loaded:
                results.append(CheckResult(name, FAIL, expected, "no IKE SA; connection not loaded",
                                           f"charon has not loaded {gp.SWANCTL_CONF.path}: "
                                           "`swanctl --load-all` (errors there name the bad line)"))
            else:
                results.append(CheckResult(name, FAIL, expected, "no IKE SA (connection loaded)",
                                           "phase 1 does not come up: see the charon log lines (NO_PROPOSAL_CHOSEN = "
                                           "proposals, AUTHENTICATION_FAILED = PSK/identity), the Cloud Firewall "
                                           "(UDP 500/4500 from the AWS outside IPs) and AWS's view "
                                           "(`python -m hostconfig status`)"))
            continue
        found = f"IKE {st.ike_state}, CHILD {st.child_state}"
        if st.ike_state != "ESTABLISHED":
            results.append(CheckResult(name, FAIL, expected, found,
                                       "phase 1 is not (yet) established: re-run in a few seconds; if it stays, "
                                       "see the charon log lines"))
        elif st.child_state != "INSTALLED":
            results.append(CheckResult(name, FAIL, expected, found,
                                       "phase 2 failed: ESP proposal or PFS group differs from AWS's phase 2 options, "
                                       "or the kernel refused the SA (charon log 'unable to install')"))
        else:
            results.append(CheckResult(name, OK, expected, found))
    return results


def check_log(config: AgentConfig, facts: DoctorFacts) -> list[CheckResult]:
    results = []
    sas_fine = (isinstance(facts.sas, SaFacts) and all(
        (st := facts.sas.states.get(t.name)) is not None and st.ike_state == "ESTABLISHED"
        and st.child_state == "INSTALLED" for t in config.tunnels))
    for pattern, (_, hint) in LOG_PATTERNS.items():
        name = f"charon log {pattern}"
        expected = "no occurrence in the recent log"
        if facts.log is None:
            results.append(CheckResult(name, SKIP, expected, "",
                                       "no charon log found (no journald unit strongswan, no --charon-log FILE)"))
            continue
        if isinstance(facts.log, Unavailable):
            results.append(CheckResult(name, SKIP, expected, "", f"cannot read the charon log ({facts.log.reason})"))
            continue
        lines = facts.log.matches.get(pattern, ())
        if not lines:
            results.append(CheckResult(name, OK, expected, f"none in {facts.log.lines_read} lines of "
                                                           f"{facts.log.source}"))
            continue
        found = f"{len(lines)} line(s) in {facts.log.source}, last: {lines[-1].strip()[:200]}"
        if pattern == "IKE_SA deleted" and sas_fine:
            # Deletions happen on restarts and DPD; once every tunnel is back, they are history, not a fault.
            results.append(CheckResult(name, OK, expected, f"{found} (every tunnel re-established since)"))
        else:
            results.append(CheckResult(name, FAIL, expected, found, hint))
    return results


def check_probes(config: AgentConfig, facts: DoctorFacts) -> list[CheckResult]:
    results = []
    for t in config.tunnels:
        name = f"probe {t.name}"
        expected = (f"ICMP echo reply from {t.aws_inside_ip} to {t.gateway_inside_ip} through {t.interface} "
                    f"within {facts.probe_timeout:g}s")
        if facts.probes is None:
            results.append(CheckResult(name, SKIP, expected, "", "probing switched off (--no-probe)"))
            continue
        if isinstance(facts.probes, Unavailable):
            results.append(_unavailable(name, expected, facts.probes, "probe results"))
            continue
        p = facts.probes.get(t.name)
        if p is None:
            results.append(CheckResult(name, SKIP, expected, "", "not probed"))
            continue
        if p.route_dev is not None and p.route_dev != t.interface:
            results.append(CheckResult(name, FAIL, expected, f"the kernel routes it via {p.route_dev}",
                                       f"the probe would not go through {t.interface}: its inside address is "
                                       "missing (see the address line) or a more specific route exists"))
        elif p.answered:
            rtt = f"{p.rtt_seconds * 1000:.1f} ms" if p.rtt_seconds is not None else "?"
            results.append(CheckResult(name, OK, expected, f"reply in {rtt} via {p.route_dev or t.interface}"))
        elif p.error and p.error.startswith("bind"):
            results.append(CheckResult(name, FAIL, expected, f"not sent ({p.error})",
                                       f"the inside address {t.gateway_inside_ip} is not on the gateway (see the "
                                       "address line): `vpnctl reconcile`"))
        else:
            why = f" ({p.error})" if p.error else ""
            results.append(CheckResult(name, FAIL, expected, f"no reply{why}",
                                       "if the sa line is ok, ESP does not pass: Cloud Firewall (UDP 4500), the VTI "
                                       "key vs the SA mark, disable_policy on the VTI; if the sa line fails, fix "
                                       "that first"))
    return results


def check_daemon(config: AgentConfig, facts: DoctorFacts) -> list[CheckResult]:
    expected = "hybrid-vpn-failover running (fresh state file)"
    if facts.daemon.running:
        if facts.daemon.state_stale:
            return [CheckResult("daemon", FAIL, expected, f"running, but no fresh state in {config.paths.state_dir}",
                                "it cannot write its state: a full or read-only state dir (`df`, its log says "
                                "'cannot write state'); it still probes and switches, but status and metrics "
                                "are old")]
        return [CheckResult("daemon", OK, expected, f"running, active {facts.daemon.active or 'none'}")]
    return [CheckResult("daemon", FAIL, expected, f"no fresh state in {config.paths.state_dir}",
                        "nobody probes or switches tunnels: `systemctl status hybrid-vpn-failover`, "
                        "`journalctl -u hybrid-vpn-failover`")]


def check_repairs(config: AgentConfig, facts: DoctorFacts) -> list[CheckResult]:
    """The daemon's data-path repairs (health.plan_repairs): fine when none was needed or the last one healed the
    tunnel; a FAIL when repairs keep failing or one is held back because the tunnel is the last one with a CHILD_SA."""
    if not facts.daemon.running:
        return []  # repairs are the daemon's: the daemon line already says it is not running
    results = []
    for t in config.tunnels:
        name = f"repair {t.name}"
        expected = "no data-path repair pending (a probe-dead tunnel with an installed CHILD_SA is rebuilt)"
        r = facts.daemon.repairs.get(t.name) or {}  # nothing recorded: nothing repaired
        last = r.get("last") or {}
        history = (f"{r.get('total', 0)} repair(s), last {last.get('kind')}: {last.get('reason')}" if last
                   else "no repair needed")
        waiting, attempts = r.get("waiting"), int(r.get("attempts") or 0)
        if waiting and "only tunnel" in waiting:
            results.append(CheckResult(name, FAIL, expected, f"{waiting}; {history}",
                                       "both tunnels are probe-dead and this one is not rebuilt so as not to cut the "
                                       "last SA AWS may still send on: check the other tunnel first (its sa and probe "
                                       "lines), then `swanctl --terminate --ike <tunnel>` and `swanctl --initiate "
                                       "--child <tunnel>` by hand if you accept the risk"))
        elif attempts >= 2 and last.get("kind") == "reestablish":
            results.append(CheckResult(name, FAIL, expected, f"{attempts} repairs in a row did not heal it"
                                       f"{f' ({waiting})' if waiting else ''}; {history}",
                                       "rebuilding the SAs does not help: ESP is blocked between the ends (Cloud "
                                       "Firewall UDP 4500, an upstream filter) or the VTI/mark is wrong (see the vti "
                                       "and xfrm lines); the daemon keeps retrying with backoff"))
        else:
            results.append(CheckResult(name, OK, expected, history + (f"; now: {waiting}" if waiting else "")))
    return results


CHECKS: tuple[Callable[[AgentConfig, DoctorFacts], list[CheckResult]], ...] = (
    check_links, check_vtis, check_addresses, check_sysctls, check_rule, check_routes, check_nft, check_xfrm,
    check_sas, check_log, check_probes, check_daemon, check_repairs,
)


def evaluate(config: AgentConfig, facts: DoctorFacts) -> list[CheckResult]:
    """Every check, in the order of the guide's checklist: pure, no I/O."""
    return [result for check in CHECKS for result in check(config, facts)]


def render_text(results: list[CheckResult]) -> str:
    counts = {s: sum(1 for r in results if r.status == s) for s in (OK, FAIL, SKIP)}
    lines = [r.line() for r in results]
    lines.append(f"{counts[OK]} ok, {counts[FAIL]} FAIL, {counts[SKIP]} skip")
    return "\n".join(lines) + "\n"


def render_json(results: list[CheckResult]) -> str:
    counts = {s: sum(1 for r in results if r.status == s) for s in (OK, FAIL, SKIP)}
    return json.dumps({"ok": counts[FAIL] == 0, "counts": counts, "checks": [asdict(r) for r in results]},
                      indent=2) + "\n"


# ------------------------------------------------------------------------------------------------ parsers (pure)


_MARK = re.compile(r"^mark (0x[0-9a-fA-F]+|\d+)(?:/(0x[0-9a-fA-F]+|\d+))?")


def _parse_mark(line: str) -> tuple[int, int | None] | None:
    m = _MARK.match(line)
    if not m:
        return None
    return int(m.group(1), 0), int(m.group(2), 0) if m.group(2) else None


def parse_xfrm_states(text: str) -> list[XfrmState]:
    """`ip xfrm state` text -> addresses, SPI, reqid, mark. Key lines (auth/enc/aead) are skipped, never kept."""
    states: list[XfrmState] = []
    block: dict[str, Any] | None = None

    def flush() -> None:
        if block and "spi" in block:
            states.append(XfrmState(block["src"], block["dst"], block.get("proto", ""), block["spi"],
                                    block.get("reqid"), block.get("mark"), block.get("mask")))

    for raw in text.splitlines():
        if raw and not raw[0].isspace():
            flush()
            words = raw.split()
            block = {"src": words[words.index("src") + 1], "dst": words[words.index("dst") + 1]} \
                if "src" in words and "dst" in words else None
            continue
        if block is None:
            continue
        line = raw.strip()
        words = line.split()
        if words[:1] == ["proto"] and "spi" in words:
            block["proto"] = words[1]
            block["spi"] = int(words[words.index("spi") + 1], 0)
            if "reqid" in words:
                block["reqid"] = int(words[words.index("reqid") + 1])
        elif words[:1] == ["mark"]:
            parsed = _parse_mark(line)
            if parsed:
                block["mark"], block["mask"] = parsed
    flush()
    return states


def parse_xfrm_policies(text: str) -> list[XfrmPolicy]:
    """`ip xfrm policy` text -> direction, mark and template ends (socket policies are dropped)."""
    policies: list[XfrmPolicy] = []
    block: dict[str, Any] | None = None

    def flush() -> None:
        if block and block.get("dir") in ("in", "out", "fwd"):
            policies.append(XfrmPolicy(block["dir"], block.get("mark"), block.get("mask"), block.get("tsrc"),
                                       block.get("tdst")))

    for raw in text.splitlines():
        if raw and not raw[0].isspace():
            flush()
            block = {}
            continue
        if block is None:
            continue
        words = raw.split()
        if words[:1] == ["dir"] and len(words) > 1:
            block["dir"] = words[1]
        elif words[:1] == ["socket"]:
            block["dir"] = "socket"
        elif words[:1] == ["mark"]:
            parsed = _parse_mark(raw.strip())
            if parsed:
                block["mark"], block["mask"] = parsed
        elif words[:1] == ["tmpl"] and "src" in words and "dst" in words:
            block["tsrc"] = words[words.index("src") + 1]
            block["tdst"] = words[words.index("dst") + 1]
    flush()
    return policies


def match_log_lines(lines: list[str]) -> dict[str, tuple[str, ...]]:
    return {name: tuple(line for line in lines if pattern.search(line))
            for name, (pattern, _) in LOG_PATTERNS.items()}


def nft_fingerprint(list_json: str) -> str:
    """The agent's fingerprint of `nft -j list table` output (handles and counters removed)."""
    from .nft import normalise  # the same normalisation the agent records after applying

    data = json.loads(list_json)
    items = [normalise(item) for item in data.get("nftables", []) if "metainfo" not in item]
    return hashlib.sha256(json.dumps(items, sort_keys=True).encode()).hexdigest()


# ------------------------------------------------------------------------------------------------ fact gathering (I/O)


def _read(what: str, fn: Callable[[], T]) -> T | Unavailable:
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - every failure becomes a reported, named Unavailable
        log.debug("doctor: cannot read %s: %s", what, exc)
        return Unavailable(f"{type(exc).__name__}: {exc}" if not str(exc).startswith(what) else str(exc))


def _run(argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False)


def read_xfrm(kind: str) -> str:
    ip = shutil.which("ip")
    if ip is None:
        raise RuntimeError("ip (iproute2) not installed")
    proc = _run([ip, "xfrm", kind])
    if proc.returncode != 0:
        # stderr of `ip xfrm` carries no key material (keys are only printed on stdout).
        raise RuntimeError(f"ip xfrm {kind}: {proc.stderr.strip() or f'exit {proc.returncode}'}")
    return proc.stdout


def read_nft_facts(config: AgentConfig) -> NftFacts:
    from . import nft
    from .state import NFT_RECORD

    table = config.ownership.nft_table
    loaded = nft.loaded_fingerprint(table)
    try:
        ruleset = nft.read_ruleset(config.paths.nft_ruleset, table)
    except nft.NftError as exc:
        return NftFacts(loaded, None, "ruleset file", problem=str(exc))
    unshare = shutil.which("unshare")
    problem = "unshare (util-linux) not installed"
    if unshare is not None:
        # Load the file into a throwaway network namespace (gone when the process exits) and list it there: the same
        # nft, the same normalisation, so equal rulesets give equal fingerprints. The gateway's own table is untouched.
        proc = _run([unshare, "--net", "--", "sh", "-c", 'nft -f - && nft -j list table inet "$1"', "sh", table],
                    stdin=ruleset)
        if proc.returncode == 0:
            return NftFacts(loaded, nft_fingerprint(proc.stdout), "file loaded in a scratch namespace")
        problem = f"scratch namespace: {proc.stderr.strip()[:200]}"
        if "syntax error" in proc.stderr.lower() or "error:" in proc.stderr.lower():
            return NftFacts(loaded, None, "scratch namespace", problem=f"nft refuses the ruleset file: "
                                                                        f"{proc.stderr.strip()[:300]}")
    # Fallback: what the agent recorded when it last applied the file.
    record = nft.read_record(config.paths.state_dir / NFT_RECORD)
    if record is None:
        return NftFacts(loaded, None, f"{problem}; no agent record either")
    if record.source_sha256 != hashlib.sha256(ruleset.encode()).hexdigest():
        return NftFacts(loaded, None, "agent record of the last apply", file_changed=True)
    return NftFacts(loaded, record.loaded_sha256, "agent record of the last apply")


def read_sa_facts(config: AgentConfig) -> SaFacts:
    import vici

    from .vici_client import ViciUnavailable, connect_unix, list_sas, tunnel_sa_states

    states = tunnel_sa_states(config, list_sas(config.paths.vici_socket))
    loaded: frozenset[str] | None
    try:
        sock = connect_unix(config.paths.vici_socket, 2.0)
        try:
            names: set[str] = set()
            for conn in vici.Session(sock).list_conns():
                names.update(k.decode() if isinstance(k, bytes) else str(k) for k in conn)
            loaded = frozenset(names)
        finally:
            sock.close()
    except (ViciUnavailable, OSError, Exception) as exc:  # noqa: BLE001 - the SA states above still count
        log.debug("doctor: list-conns failed: %s", exc)
        loaded = None
    return SaFacts(states, loaded)


_SYSLOG_TIME = re.compile(r"^(?P<ts>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[+-]\d{2}:?\d{2}|Z)?)")


def _recent(lines: list[str], minutes: int, now: float) -> list[str]:
    """Lines with an ISO timestamp older than the window are dropped; lines without one are kept (the tail)."""
    import datetime as dt

    cutoff = now - minutes * 60
    kept = []
    for line in lines:
        m = _SYSLOG_TIME.match(line)
        if m:
            try:
                stamp = dt.datetime.fromisoformat(m.group("ts").replace("Z", "+00:00"))
                if stamp.tzinfo is None:
                    stamp = stamp.astimezone()
                if stamp.timestamp() < cutoff:
                    continue
            except ValueError:
                pass
        kept.append(line)
    return kept


def read_log_facts(charon_log: Path | None, minutes: int) -> LogFacts | None:
    """Charon's recent lines: from --charon-log FILE, else journald's strongswan units, else /var/log/charon.log."""
    if charon_log is None:
        journalctl = shutil.which("journalctl")
        if journalctl and Path("/run/systemd/system").is_dir():
            argv = [journalctl, "--no-pager", "-q", "-o", "short-iso", "--since", f"-{minutes}min"]
            for unit in STRONGSWAN_UNITS:
                argv += ["-u", unit]
            proc = _run(argv)
            if proc.returncode == 0:
                lines = proc.stdout.splitlines()[-LOG_TAIL_LINES:]
                return LogFacts(f"journal (units {', '.join(STRONGSWAN_UNITS)}, last {minutes} min)", len(lines),
                                match_log_lines(lines))
        for candidate in (Path("/var/log/charon.log"), Path("/var/log/syslog")):
            if candidate.is_file():
                charon_log = candidate
                break
        else:
            return None
    with open(charon_log, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        handle.seek(max(0, size - 4 * 1024 * 1024))
        text = handle.read().decode("utf-8", "replace")
    lines = _recent(text.splitlines()[-LOG_TAIL_LINES:], minutes, time.time())
    if charon_log.name == "syslog":
        lines = [line for line in lines if "charon" in line]
    return LogFacts(f"{charon_log} (last {len(lines)} lines)", len(lines), match_log_lines(lines))


def probe_tunnels(config: AgentConfig, timeout: float, kernel: Any) -> dict[str, ProbeFacts]:
    """One ICMP echo per tunnel, from its inside address to AWS's: the reply can only come back through it."""
    from .probe import IcmpProber

    base = (os.getpid() * 7 + 0x5A5A) & 0xFFFF
    probers = {t.name: IcmpProber(t.name, t.gateway_inside_ip, t.aws_inside_ip, base + i, timeout)
               for i, t in enumerate(config.tunnels)}
    devs: dict[str, str | None] = {}
    names = kernel.link_names()
    for t in config.tunnels:
        try:
            msg = kernel.ipr.route("get", dst=str(t.aws_inside_ip), src=str(t.gateway_inside_ip))[0]
            devs[t.name] = names.get(msg.get_attr("RTA_OIF"))
        except Exception as exc:  # noqa: BLE001 - no route / source not local: the probe result says the rest
            log.debug("doctor: route get %s: %s", t.aws_inside_ip, exc)
            devs[t.name] = None
    done: dict[str, ProbeFacts] = {}
    try:
        start = time.monotonic()
        for name, prober in probers.items():
            if prober.send(start):
                done[name] = ProbeFacts(False, error=prober.last_error, route_dev=devs[name])
        deadline = start + timeout
        while len(done) < len(probers):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            waiting = [p for n, p in probers.items() if n not in done and p.sock is not None]
            if not waiting:
                break
            readable, _, _ = select.select(waiting, [], [], remaining)
            now = time.monotonic()
            for prober in readable:
                for result in prober.receive(now):
                    if result.ok and result.key not in done:
                        done[result.key] = ProbeFacts(True, result.rtt, route_dev=devs[result.key])
        for name, prober in probers.items():
            if name not in done:
                done[name] = ProbeFacts(False, error=prober.last_error or f"timeout {timeout:g}s",
                                        route_dev=devs[name])
    finally:
        for prober in probers.values():
            prober.close()
    return done


def gather_facts(config: AgentConfig, link_mode: LinkMode = "vti", charon_log: Path | None = None,
                 log_minutes: int = DEFAULT_LOG_MINUTES, probe: bool = True,
                 probe_timeout: float = DEFAULT_PROBE_TIMEOUT) -> DoctorFacts:
    """Read everything the checks need; every source that fails becomes Unavailable with the reason."""
    from .kernel import Kernel, read_sysctls
    from .state import DAEMON_STATE, daemon_liveness, read_json

    own = config.ownership
    names = tuple(t.interface for t in config.tunnels)
    wanted_sysctls = list(desired_state(config, TunnelView(frozenset(), None)).sysctls)
    daemon = read_json(config.paths.state_dir / DAEMON_STATE)
    liveness = daemon_liveness(config.paths.state_dir, daemon)
    repairs = {name: t["repair"] for name, t in ((daemon or {}).get("tunnels") or {}).items()
               if isinstance(t, dict) and isinstance(t.get("repair"), dict)}
    facts_daemon = DaemonFacts(liveness != "stopped", (daemon or {}).get("active"), liveness == "stale", repairs)
    kernel = _read("netlink", Kernel)
    try:
        if isinstance(kernel, Unavailable):
            links = addresses = routes = rules = probes = kernel  # type: ignore[assignment]
        else:
            links = _read("links", lambda: kernel.read_links(names))
            addresses = (_read("addresses", lambda: kernel.read_addresses(links))
                         if isinstance(links, dict) else links)
            routes = _read("routes", lambda: kernel.read_routes(own.route_table))
            rules = _read("rules", lambda: kernel.read_rules(own.rule_priority))
            probes = _read("probes", lambda: probe_tunnels(config, probe_timeout, kernel)) if probe else None
        return DoctorFacts(
            link_mode=link_mode,
            links=links,
            addresses=addresses,
            sysctls=_read("sysctls", lambda: read_sysctls(wanted_sysctls)),
            routes=routes,
            rules=rules,
            nft=_read("nftables", lambda: read_nft_facts(config)),
            xfrm_states=_read("xfrm states", lambda: parse_xfrm_states(read_xfrm("state"))),
            xfrm_policies=_read("xfrm policies", lambda: parse_xfrm_policies(read_xfrm("policy"))),
            sas=_read("VICI", lambda: read_sa_facts(config)),
            log=_read("charon log", lambda: read_log_facts(charon_log, log_minutes)),
            probes=probes,
            daemon=facts_daemon,
            probe_timeout=probe_timeout,
        )
    finally:
        if not isinstance(kernel, Unavailable):
            kernel.close()


# ------------------------------------------------------------------------------------------------ CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable report")
    parser.add_argument("--charon-log", type=Path, default=None, metavar="FILE",
                        help="read charon's log from FILE (default: journald units strongswan/strongswan-starter, "
                             "else /var/log/charon.log or /var/log/syslog)")
    parser.add_argument("--log-minutes", type=int, default=DEFAULT_LOG_MINUTES,
                        help=f"how far back log errors count (default {DEFAULT_LOG_MINUTES})")
    parser.add_argument("--probe-timeout", type=float, default=DEFAULT_PROBE_TIMEOUT,
                        help=f"seconds to wait for each tunnel's echo reply (default {DEFAULT_PROBE_TIMEOUT:g})")
    parser.add_argument("--no-probe", action="store_true", help="send no ICMP probes")


def run(config: AgentConfig, args: argparse.Namespace) -> int:
    """`vpnctl doctor`: exit 0 when no check fails, 1 otherwise."""
    facts = gather_facts(config, getattr(args, "tunnel_links", "vti"), args.charon_log, args.log_minutes,
                         not args.no_probe, args.probe_timeout)
    results = evaluate(config, facts)
    sys.stdout.write(render_json(results) if args.json else render_text(results))
    return 1 if any(r.status == FAIL for r in results) else 0
