"""`vpnctl doctor`, the facts: what the gateway looks like, read without changing anything.

``gather_facts`` reads netlink (the agent's ``Kernel`` readers), /proc/sys, ``nft``, ``ip xfrm``, VICI, the charon
log, the daemon's state file (hostconfig.agent.status_contract) and sends one ICMP echo per tunnel. Every source may
be unreadable; that becomes ``Unavailable(reason)`` and the checks that need it fail (or skip) saying why. The
nftables file is compared with the loaded table by loading it into a throwaway network namespace (``unshare --net``),
never into the gateway's own. The parsers of tool output are pure (tests feed them text).

Secrets: ``ip xfrm state`` prints the ESP keys. Its output is parsed in memory into addresses, SPIs and marks only; it
is never logged or printed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import select
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Interface
from pathlib import Path
from typing import Any, TypeVar

from hostconfig import gateway_paths as gp

from .config import AgentConfig
from .desired import ActualLink, ActualRoute, ActualRule, LinkMode, TunnelView, desired_state
from .status_contract import RepairRecord
from .vici_client import TunnelSaState

log = logging.getLogger(__name__)

DEFAULT_LOG_MINUTES = 60
DEFAULT_PROBE_TIMEOUT = 2.0
LOG_TAIL_LINES = 5000
COMMAND_TIMEOUT = 30
STRONGSWAN_UNITS = ("strongswan", "strongswan-starter")

T = TypeVar("T")


# ------------------------------------------------------------------------------------------------ facts

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
    repairs: dict[str, RepairRecord] = field(default_factory=dict)  # tunnel -> its repairs in the daemon state
    state_error: str | None = None  # the state file is not a daemon state of this version


def daemon_facts(state_dir: Path) -> DaemonFacts:
    """The daemon as `vpnctl status` sees it (one reader: state.daemon_summary) plus its repairs per tunnel."""
    from .state import daemon_summary

    summary, state = daemon_summary(state_dir)
    return DaemonFacts(summary.running, summary.active, summary.state_file == "stale",
                       {name: t.repair for name, t in state.tunnels.items()} if state else {}, summary.state_error)


@dataclass(frozen=True)
class BgpFacts:
    """routing.mode bgp: bgpd's neighbors as vtysh reports them (address -> state, address -> outbound route-map)."""

    states: dict[str, str]
    route_maps: dict[str, str | None]


def read_bgp_facts(config: AgentConfig) -> BgpFacts:
    from .frr import BgpdVty, neighbor_states, outbound_route_maps

    assert config.bgp is not None
    bgpd = BgpdVty.of(config.bgp)
    return BgpFacts(neighbor_states(bgpd), outbound_route_maps(bgpd))


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
    bgp: BgpFacts | Unavailable | None = None  # None: not routing.mode bgp


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

    own = config.ownership
    names = tuple(t.interface for t in config.tunnels)
    wanted_sysctls = list(desired_state(config, TunnelView(frozenset(), None)).sysctls)
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
            daemon=daemon_facts(config.paths.state_dir),
            probe_timeout=probe_timeout,
            bgp=_read("bgpd (vtysh)", lambda: read_bgp_facts(config)) if config.bgp is not None else None,
        )
    finally:
        if not isinstance(kernel, Unavailable):
            kernel.close()

