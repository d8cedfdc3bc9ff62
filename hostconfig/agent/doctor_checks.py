"""`vpnctl doctor`, the checks: pure functions from ``DoctorFacts`` to verdicts, no I/O (most tests need no root).

The expectations come from agent.json through ``desired_state`` (the same function the reconciler converges to); each
check returns one ``CheckResult`` per item with what was expected, what was found, and the likely cause and fix.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any

from hostconfig import gateway_paths as gp

from .bgp import Advertisement
from .config import AgentConfig, TunnelConfig
from .desired import (
    ACTIVE_METRIC,
    STANDBY_METRIC,
    UNREACHABLE_METRIC,
    ActualLink,
    ActualRoute,
    RuleSpec,
    TunnelView,
    desired_state,
    diff_rule,
)
from .doctor_facts import LOG_PATTERNS, DoctorFacts, SaFacts, Unavailable

OK, FAIL, SKIP = "ok", "FAIL", "skip"


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
    if facts.daemon.state_error:
        return [CheckResult("daemon", FAIL, expected, facts.daemon.state_error,
                            "the state file was written by another vpnctl version than this one (a push half done? "
                            "re-run `pulumi up`), or by something else: `systemctl restart hybrid-vpn-failover` "
                            "rewrites it within a second")]
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
        r = facts.daemon.repairs.get(t.name)  # nothing recorded: nothing repaired
        last = r.last if r is not None else None
        history = f"{r.total} repair(s), last {last.kind}: {last.reason}" if r and last else "no repair needed"
        waiting, attempts = (r.waiting, r.attempts) if r is not None else (None, 0)
        if waiting and "only tunnel" in waiting:
            results.append(CheckResult(name, FAIL, expected, f"{waiting}; {history}",
                                       "both tunnels are probe-dead and this one is not rebuilt so as not to cut the "
                                       "last SA AWS may still send on: check the other tunnel first (its sa and probe "
                                       "lines), then `swanctl --terminate --ike <tunnel>` and `swanctl --initiate "
                                       "--child <tunnel>` by hand if you accept the risk"))
        elif attempts >= 2 and last is not None and last.kind == "reestablish":
            results.append(CheckResult(name, FAIL, expected, f"{attempts} repairs in a row did not heal it"
                                       f"{f' ({waiting})' if waiting else ''}; {history}",
                                       "rebuilding the SAs does not help: ESP is blocked between the ends (Cloud "
                                       "Firewall UDP 4500, an upstream filter) or the VTI/mark is wrong (see the vti "
                                       "and xfrm lines); the daemon keeps retrying with backoff"))
        else:
            results.append(CheckResult(name, OK, expected, history + (f"; now: {waiting}" if waiting else "")))
    return results


def check_bgp(config: AgentConfig, facts: DoctorFacts) -> list[CheckResult]:
    """routing.mode bgp: each tunnel's BGP session Established, with one of the route-maps frr.conf defines."""
    if facts.bgp is None:
        return []
    known = {a.route_map for a in Advertisement}
    out = []
    for t in config.tunnels:
        name, address = f"bgp {t.name}", str(t.aws_inside_ip)
        expected = f"session to {address} Established, outbound route-map one of {', '.join(sorted(known))}"
        if isinstance(facts.bgp, Unavailable):
            out.append(_unavailable(name, expected, facts.bgp, "bgpd"))
            continue
        state = facts.bgp.states.get(address)
        route_map = facts.bgp.route_maps.get(address)
        if state is None:
            out.append(CheckResult(name, FAIL, expected, f"bgpd has no neighbor {address}",
                                   f"{gp.FRR_CONF.path} is not the rendered one, or FRR was reconfigured by hand: "
                                   "re-run `pulumi up`; `vtysh -c 'show running-config'`"))
        elif state != "Established":
            out.append(CheckResult(name, FAIL, expected, f"session {state}",
                                   f"AWS does not learn the VLAN CIDRs over {t.name}: is the tunnel up (sa lines)? "
                                   "`vtysh -c 'show bgp neighbors'`; AWS's side: the tunnel's BGP status in the "
                                   "console (VgwTelemetry)"))
        elif route_map not in known:
            out.append(CheckResult(name, FAIL, expected, f"Established, outbound route-map {route_map}",
                                   "someone changed it by hand: the daemon puts its own back at its next full "
                                   "reconcile (30 s)"))
        else:
            out.append(CheckResult(name, OK, expected, f"Established, advertising {route_map}"))
    return out


CHECKS: tuple[Callable[[AgentConfig, DoctorFacts], list[CheckResult]], ...] = (
    check_links, check_vtis, check_addresses, check_sysctls, check_rule, check_routes, check_nft, check_xfrm,
    check_sas, check_log, check_probes, check_daemon, check_repairs, check_bgp,
)


def evaluate(config: AgentConfig, facts: DoctorFacts) -> list[CheckResult]:
    """Every check, in the order of the guide's checklist: pure, no I/O."""
    return [result for check in CHECKS for result in check(config, facts)]
