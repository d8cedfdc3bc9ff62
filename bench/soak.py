#!/usr/bin/env python3
"""Soak benchmark of the failover daemon (not in CI; prints a table and a verdict; needs root).

Topology (network namespaces, veth pairs standing in for the VTIs: this host kernel has no ip_vti):
    lan (172.16.1.10) --eth1-- gw [vpnctl daemon] --vti-aws1/vti-aws2 (veth)-- aws (169.254.1x.1, host 10.0.4.85)
Traffic: ping from the VLAN host to the AWS host at 20 packets/s for the whole run (through our table, forwarded by
the gateway). Flaps: every --flap-every seconds the AWS side drops one tunnel's probes (nft, echo requests to that
tunnel's inside address only) for --flap-seconds, alternating tunnel1 / tunnel2, so the daemon switches away and back.
Every --sample seconds: daemon RSS, open fds (/proc/<pid>/fd), routes in our table, rules at our priority, nft tables,
switches so far, ping replies. Verdict after a warm-up (first 20% of the run): RSS growth within --rss-budget-kib, fds
flat, routes always between one and three per AWS CIDR, exactly one rule, exactly one table.

Usage: .venv/bin/python bench/soak.py [--minutes 30] [--minutes 1 for a quick check] [--cidrs 10]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # testlib
sys.path.insert(0, str(REPO / "tests" / "agent"))

from agent_testlib import config_dict, wait_for, wire_gateway, write_config  # noqa: E402

AWS_HOST = "10.0.4.85"
LAN_HOST = "172.16.1.10"


@dataclass
class Sample:
    t: float
    rss_kib: int
    fds: int
    routes: int
    rules: int
    nft_tables: int
    switches: int
    active: str
    replies: int
    sent: int
    flapping: str


def sh(*argv: str, check: bool = True, input: str | None = None) -> str:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check, input=input).stdout


def build(tmp: Path, cidrs: int, hold: int, made: list[str]) -> tuple[str, str, str, Path]:
    names = []
    for prefix in ("hvsgw", "hvsaws", "hvslan"):
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        sh("ip", "netns", "add", name)
        made.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        names.append(name)
    gw, aws, lan = names
    aws_cidrs = ["10.0.0.0/16", *[f"10.{i}.0.0/16" for i in range(1, cidrs)]]
    data = config_dict(tmp, aws_cidrs=aws_cidrs)
    data["probe"]["failback_hold_seconds"] = hold
    config = write_config(tmp, data)
    wire_gateway(gw, aws, data)
    # the VLAN host behind eth1
    sh("ip", "-n", gw, "link", "set", "lan0", "netns", lan)
    sh("ip", "-n", lan, "addr", "add", f"{LAN_HOST}/24", "dev", "lan0")
    sh("ip", "-n", lan, "link", "set", "lan0", "up")
    sh("ip", "-n", lan, "route", "add", "default", "via", "172.16.1.1")
    # the AWS host, answering through either tunnel (AWS may reply on the other one: asymmetric is fine)
    sh("ip", "-n", aws, "addr", "add", f"{AWS_HOST}/32", "dev", "lo")
    sh("ip", "-n", aws, "route", "add", "172.16.0.0/12", "via", "169.254.10.2", "dev", "aws1", "metric", "100")
    sh("ip", "-n", aws, "route", "add", "172.16.0.0/12", "via", "169.254.11.2", "dev", "aws2", "metric", "200")
    sh("ip", "netns", "exec", aws, "nft", "-f", "-", input="table inet flap {\n chain input {\n"
       "  type filter hook input priority 0; policy accept;\n }\n}\n")
    return gw, aws, lan, config


def flap(aws: str, tunnel: int | None) -> None:
    """Drop the echo requests to one tunnel's AWS inside address (its probes only), or stop dropping."""
    sh("ip", "netns", "exec", aws, "nft", "flush", "chain", "inet", "flap", "input")
    if tunnel is not None:
        sh("ip", "netns", "exec", aws, "nft", "add", "rule", "inet", "flap", "input",
           f"ip daddr 169.254.1{tunnel - 1}.1 icmp type echo-request drop")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def ping_counts(path: Path) -> tuple[int, int]:
    text = path.read_text(errors="replace") if path.exists() else ""
    seqs = [int(s) for s in re.findall(r"icmp_seq=(\d+)", text)]
    return len(re.findall(r"bytes from", text)), max(seqs, default=0)


def sample(t: float, pid: int, gw: str, state: Path, ping_log: Path, flapping: str) -> Sample:
    routes = json.loads(sh("ip", "-n", gw, "-j", "route", "show", "table", "1519") or "[]")
    rules = [r for r in json.loads(sh("ip", "-n", gw, "-j", "rule", "show")) if r.get("priority") == 10100]
    tables = [ln for ln in sh("ip", "netns", "exec", gw, "nft", "list", "tables").splitlines() if ln.strip()]
    try:
        snap = json.loads(state.read_text())
    except (OSError, ValueError):
        snap = {}
    replies, sent = ping_counts(ping_log)
    return Sample(t, rss_kib(pid), len(os.listdir(f"/proc/{pid}/fd")), len(routes), len(rules), len(tables),
                  int(snap.get("switches_total", 0)), str(snap.get("active")), replies, sent, flapping)


def verdict(samples: list[Sample], cidrs: int, rss_budget_kib: int) -> list[str]:
    """The failures (empty list: pass)."""
    failures = []
    warm_index = max(1, len(samples) // 5)
    warm, after = samples[warm_index - 1], samples[warm_index:]
    if after:
        growth = max(s.rss_kib for s in after) - warm.rss_kib
        if growth > rss_budget_kib:
            failures.append(f"RSS grew {growth} KiB after warm-up (budget {rss_budget_kib} KiB)")
        if after[-1].fds > warm.fds + 1 or max(s.fds for s in after) > warm.fds + 4:
            failures.append(f"open fds grew: {warm.fds} at warm-up, max {max(s.fds for s in after)}, "
                            f"last {after[-1].fds}")
    for s in samples:
        if not cidrs <= s.routes <= 3 * cidrs:
            failures.append(f"t={s.t:.0f}s: {s.routes} routes in our table (expected {cidrs}..{3 * cidrs})")
        if s.rules != 1:
            failures.append(f"t={s.t:.0f}s: {s.rules} rules at priority 10100 (expected 1)")
        if s.nft_tables != 1:
            failures.append(f"t={s.t:.0f}s: {s.nft_tables} nft tables (expected 1)")
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--sample", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--flap-every", type=float, default=20.0, help="seconds between the starts of two flaps")
    parser.add_argument("--flap-seconds", type=float, default=6.0, help="how long a tunnel's probes are dropped")
    parser.add_argument("--hold", type=int, default=3, help="failback_hold_seconds in the agent config")
    parser.add_argument("--cidrs", type=int, default=10, help="AWS CIDRs (routes = 1..3 per CIDR)")
    parser.add_argument("--rss-budget-kib", type=int, default=2048)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("soak: needs root (network namespaces)", file=sys.stderr)
        return 2
    made: list[str] = []
    procs: list[subprocess.Popen] = []
    try:
        with tempfile.TemporaryDirectory(prefix="soak-") as tmp_name:
            tmp = Path(tmp_name)
            gw, aws, lan, config = build(tmp, args.cidrs, args.hold, made)
            daemon_log = tmp / "daemon.log"
            with daemon_log.open("w") as log_file:
                daemon = subprocess.Popen(
                    ["ip", "netns", "exec", gw, sys.executable, "-m", "hostconfig.agent.cli", "daemon",
                     "--tunnel-links", "given", "--config", str(config)],
                    env={"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO)}, stdout=log_file, stderr=log_file)
            procs.append(daemon)
            state = tmp / "state" / "daemon-state.json"
            wait_for(lambda: state.exists() and json.loads(state.read_text()).get("active") == "tunnel1",
                     timeout=60, what="the daemon to route through tunnel1")
            ping_log = tmp / "ping.log"
            with ping_log.open("w") as out:
                ping = subprocess.Popen(["ip", "netns", "exec", lan, "ping", "-n", "-i", "0.05", "-W", "1", AWS_HOST],
                                        stdout=out, stderr=subprocess.STDOUT)
            procs.append(ping)
            print(f"soak: {args.minutes:g} min, {args.cidrs} AWS CIDRs, flap {args.flap_seconds:g}s every "
                  f"{args.flap_every:g}s, sample every {args.sample:g}s; daemon pid {daemon.pid}")
            print(f"{'t s':>6} {'RSS KiB':>8} {'fds':>4} {'routes':>6} {'rules':>5} {'nft':>3} {'switch':>6} "
                  f"{'active':>8} {'replies':>8} {'sent':>6} {'loss %':>6}  flap")
            samples: list[Sample] = []
            started = time.monotonic()
            end = started + args.minutes * 60
            next_sample = started
            flaps = 0
            flapping: int | None = None
            flap_until = 0.0
            next_flap = started + args.flap_every / 2
            while time.monotonic() < end:
                now = time.monotonic()
                if daemon.poll() is not None:
                    print(f"soak: the daemon exited ({daemon.returncode}):\n{daemon_log.read_text()[-2000:]}")
                    return 1
                if flapping is None and now >= next_flap:
                    flapping = 1 + flaps % 2
                    flaps += 1
                    flap(aws, flapping)
                    flap_until, next_flap = now + args.flap_seconds, now + args.flap_every
                elif flapping is not None and now >= flap_until:
                    flap(aws, None)
                    flapping = None
                if now >= next_sample:
                    s = sample(now - started, daemon.pid, gw, state, ping_log,
                               f"tunnel{flapping}" if flapping else "")
                    samples.append(s)
                    loss = 100.0 * (1 - s.replies / s.sent) if s.sent else 0.0
                    print(f"{s.t:>6.0f} {s.rss_kib:>8} {s.fds:>4} {s.routes:>6} {s.rules:>5} {s.nft_tables:>3} "
                          f"{s.switches:>6} {s.active:>8} {s.replies:>8} {s.sent:>6} {loss:>6.2f}  {s.flapping}",
                          flush=True)
                    next_sample += args.sample
                time.sleep(0.05)
            flap(aws, None)
            failures = verdict(samples, args.cidrs, args.rss_budget_kib)
            warm = samples[max(1, len(samples) // 5) - 1]
            rss_after = [s.rss_kib for s in samples[max(1, len(samples) // 5):]] or [warm.rss_kib]
            last = samples[-1]
            print(f"\nflaps: {flaps}; switches: {last.switches}; ping replies {last.replies} of {last.sent} sent "
                  f"({100.0 * (1 - last.replies / last.sent) if last.sent else 0:.2f} % lost)")
            print(f"RSS: {samples[0].rss_kib} KiB at start, {warm.rss_kib} KiB after warm-up, max {max(rss_after)} "
                  f"KiB after (growth {max(rss_after) - warm.rss_kib} KiB); fds {warm.fds} after warm-up, "
                  f"{min(s.fds for s in samples)}..{max(s.fds for s in samples)} overall; routes "
                  f"{min(s.routes for s in samples)}..{max(s.routes for s in samples)}; rules "
                  f"{sorted({s.rules for s in samples})}; nft tables {sorted({s.nft_tables for s in samples})}")
            errors = [ln for ln in daemon_log.read_text().splitlines() if ln.startswith(("ERROR", "CRITICAL"))]
            print(f"daemon log: {len(daemon_log.read_text().splitlines())} lines, {len(errors)} ERROR")
            for line in errors[:5]:
                print(f"  {line}")
            if failures:
                print("VERDICT: FAIL")
                for failure in failures[:20]:
                    print(f"  - {failure}")
                return 1
            print("VERDICT: PASS (memory bounded, no leak of routes, rules, nft tables or file descriptors)")
            return 0
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=30)
        for name in reversed(made):
            subprocess.run(["ip", "netns", "del", name], check=False)


if __name__ == "__main__":
    sys.exit(main())
