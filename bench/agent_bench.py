#!/usr/bin/env python3
"""Benchmark of the gateway agent (prints numbers; needs root for network namespaces).

1. Reconcile latency, cold (fresh namespace: links, addresses, sysctls, routes, rule, nft table) and warm (converged,
   nothing to apply), with 1 and 100 AWS CIDRs; plus a failover switch (routes-only reconcile).
   A switch is the failover (both up, tunnel1 active -> only tunnel2 up), routes-only, timed --switch-runs times.
2. Failover daemon CPU and RSS at the default probe rate (200 ms, two tunnels answered from an 'AWS' namespace).

The tunnel links are veth pairs (link mode 'given'): this host kernel has no ip_vti. Usage:
    .venv/bin/python bench/agent_bench.py [--seconds 20] [--warm-runs 20]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # testlib
sys.path.insert(0, str(REPO / "tests" / "agent"))

from agent_testlib import config_dict, run_in_netns, wire_gateway, write_config  # noqa: E402


def _netns(prefix: str, made: list[str]) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
    made.append(name)
    return name


def _switches_timed(config: str, runs: int) -> list[tuple[float, int]]:
    """Failover switches (both up, tunnel1 active -> only tunnel2, routes only), each after an untimed reset."""
    from hostconfig.agent.config import load_config
    from hostconfig.agent.desired import TunnelView
    from hostconfig.agent.kernel import Kernel
    from hostconfig.agent.reconcile import Reconciler

    cfg = load_config(config)
    out = []
    with Kernel() as kernel:
        reconciler = Reconciler(cfg, kernel, "given")
        for _ in range(runs):
            reconciler.run(TunnelView(frozenset({"tunnel1", "tunnel2"}), "tunnel1"), routes_only=True)
            started = time.perf_counter()
            result = reconciler.run(TunnelView(frozenset({"tunnel2"}), "tunnel2"), routes_only=True)
            out.append((time.perf_counter() - started, len(result.changes)))
            if result.problems:
                raise RuntimeError(result.problems)
    return out


def _reconcile_timed(config: str, up: frozenset[str], active: str | None, runs: int,
                     routes_only: bool = False) -> list[tuple[float, int]]:
    from hostconfig.agent.config import load_config
    from hostconfig.agent.desired import TunnelView
    from hostconfig.agent.kernel import Kernel
    from hostconfig.agent.reconcile import Reconciler

    cfg = load_config(config)
    out = []
    with Kernel() as kernel:
        reconciler = Reconciler(cfg, kernel, "given")
        for _ in range(runs):
            started = time.perf_counter()
            result = reconciler.run(TunnelView(up, active), routes_only=routes_only)
            out.append((time.perf_counter() - started, len(result.changes)))
            if result.problems:
                raise RuntimeError(result.problems)
    return out


def bench_reconcile(cidrs: int, warm_runs: int, switch_runs: int) -> None:
    made: list[str] = []
    try:
        with tempfile.TemporaryDirectory(prefix="agent-bench-") as tmp:
            gw, aws = _netns("hvbgw", made), _netns("hvbaws", made)
            data = config_dict(Path(tmp), aws_cidrs=[f"10.{i}.0.0/16" for i in range(cidrs)])
            config = str(write_config(Path(tmp), data))
            wire_gateway(gw, aws, data)
            both = frozenset({"tunnel1", "tunnel2"})
            (cold, cold_changes), = run_in_netns(gw, _reconcile_timed, config, both, "tunnel1", 1)
            warm = run_in_netns(gw, _reconcile_timed, config, both, "tunnel1", warm_runs)
            switch = run_in_netns(gw, _switches_timed, config, switch_runs)
            assert all(changes == 0 for _, changes in warm), "warm runs must apply nothing"
            times = [t for t, _ in warm]
            switch_times = [t for t, _ in switch]
            print(f"reconcile {cidrs:>3} AWS CIDR(s) ({3 * cidrs} routes): cold {cold * 1000:7.1f} ms "
                  f"({cold_changes} changes incl. nft) | warm median {statistics.median(times) * 1000:6.1f} ms, "
                  f"max {max(times) * 1000:6.1f} ms over {len(times)} runs (0 changes) | "
                  f"switch (routes only) median {statistics.median(switch_times) * 1000:6.1f} ms, max "
                  f"{max(switch_times) * 1000:6.1f} ms over {len(switch)} runs ({switch[0][1]} changes)")
    finally:
        for name in reversed(made):
            subprocess.run(["ip", "netns", "del", name], check=False)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def bench_daemon(seconds: float) -> None:
    made: list[str] = []
    proc = None
    try:
        with tempfile.TemporaryDirectory(prefix="agent-bench-") as tmp:
            gw, aws = _netns("hvbgw", made), _netns("hvbaws", made)
            data = config_dict(Path(tmp))
            config = write_config(Path(tmp), data)
            wire_gateway(gw, aws, data)
            proc = subprocess.Popen(
                ["ip", "netns", "exec", gw, sys.executable, "-m", "hostconfig.agent.cli", "daemon",
                 "--tunnel-links", "given", "--config", str(config)],
                env={"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO)}, stderr=subprocess.DEVNULL)
            state = Path(tmp) / "state" / "daemon-state.json"
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and '"active": "tunnel1"' not in (
                    state.read_text() if state.exists() else ""):
                time.sleep(0.1)
            cpu0, t0 = _cpu_seconds(proc.pid), time.monotonic()
            time.sleep(seconds)
            cpu1, t1 = _cpu_seconds(proc.pid), time.monotonic()
            rss = _rss_kib(proc.pid)
            print(f"daemon at {data['probe']['interval_ms']} ms probe interval, 2 tunnels, {t1 - t0:.1f} s: "
                  f"CPU {100 * (cpu1 - cpu0) / (t1 - t0):.2f} % of one core, RSS {rss / 1024:.1f} MiB")
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        for name in reversed(made):
            subprocess.run(["ip", "netns", "del", name], check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0, help="daemon measurement window")
    parser.add_argument("--warm-runs", type=int, default=20)
    parser.add_argument("--switch-runs", type=int, default=10)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("agent_bench: needs root (network namespaces)", file=sys.stderr)
        return 2
    for cidrs in (1, 100):
        bench_reconcile(cidrs, args.warm_runs, args.switch_runs)
    bench_daemon(args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
