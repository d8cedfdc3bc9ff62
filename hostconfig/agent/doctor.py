"""`vpnctl doctor`: the guide's "Testing and Validation" checklist as one read-only command.

Three parts, so that most tests need no root: ``doctor_facts`` gathers what the gateway looks like (netlink,
/proc/sys, nft, ip xfrm, VICI, the charon log, the daemon's state, one probe per tunnel) into a ``DoctorFacts``;
``doctor_checks.evaluate`` turns those facts into verdicts (pure); this module is the command line and the report.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from .config import AgentConfig
from .doctor_checks import FAIL, OK, SKIP, CheckResult, evaluate
from .doctor_facts import DEFAULT_LOG_MINUTES, DEFAULT_PROBE_TIMEOUT, gather_facts


def render_text(results: list[CheckResult]) -> str:
    counts = {s: sum(1 for r in results if r.status == s) for s in (OK, FAIL, SKIP)}
    lines = [r.line() for r in results]
    lines.append(f"{counts[OK]} ok, {counts[FAIL]} FAIL, {counts[SKIP]} skip")
    return "\n".join(lines) + "\n"


def render_json(results: list[CheckResult]) -> str:
    counts = {s: sum(1 for r in results if r.status == s) for s in (OK, FAIL, SKIP)}
    return json.dumps({"ok": counts[FAIL] == 0, "counts": counts, "checks": [asdict(r) for r in results]},
                      indent=2) + "\n"



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
