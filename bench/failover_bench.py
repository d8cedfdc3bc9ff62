"""Failover blackout under a steady probe stream, in the lab (prints numbers; asserts nothing).

A 100 packets/s ICMP stream runs from the VLAN host to the VPC host while the gateway's active tunnel is broken
(`lab break tunnel1`); per break: packets lost and the longest gap between replies. Then the tunnel is healed and the
damped failback is awaited before the next break. Needs a running lab (`make lab`), or pass --up to start one.

    .venv/bin/python bench/failover_bench.py [--breaks 5] [--aws-prefers tunnel1|tunnel2] [--up]
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lab import driver  # noqa: E402

VPC_HOST = "10.0.4.85"
REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from .*icmp_seq=(\d+)")


def one_break(window: float, break_after: float) -> tuple[int, float, int]:
    """(packets lost, longest gap between replies in s, packets sent) for one break of tunnel1."""
    count = int(window * 100)
    stream = driver.lab_popen("exec", "vlan", "ping", "-n", "-D", "-i", "0.01", "-W", "1", "-c", str(count), VPC_HOST)
    time.sleep(break_after)
    driver.lab("break", "tunnel1", check=True)
    out, _ = stream.communicate(timeout=window + 600)
    replies = {}
    for line in out.splitlines():
        m = REPLY.match(line)
        if m:
            replies.setdefault(int(m.group(2)), float(m.group(1)))
    times = sorted(replies.values())
    gap = max((b - a for a, b in zip(times, times[1:], strict=False)), default=float("inf"))
    return count - len(replies), gap, count


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--breaks", type=int, default=5)
    ap.add_argument("--window", type=float, default=15.0, help="seconds of probe stream per break")
    ap.add_argument("--aws-prefers", default="tunnel1", choices=["tunnel1", "tunnel2"])
    ap.add_argument("--up", action="store_true", help="run `lab up` first and `lab down` at the end")
    args = ap.parse_args()
    if args.up:
        driver.lab("up", timeout=1800, check=True)
    try:
        driver.lab("prefer", args.aws_prefers, check=True)
        lost, gaps = [], []
        for i in range(args.breaks):
            driver.wait_until(lambda: driver.active_vti() == "vti-aws1", 300, "tunnel1 active before the break", 1)
            driver.wait_until(lambda: driver.ping("vlan", VPC_HOST), 120, "traffic before the break")
            n_lost, gap, sent = one_break(args.window, break_after=3.0)
            lost.append(n_lost)
            gaps.append(gap)
            print(f"break {i + 1}: lost {n_lost}/{sent} packets, longest gap {gap * 1000:.0f} ms", flush=True)
            driver.lab("heal", "tunnel1", check=True)
        print(f"failover blackout over {args.breaks} breaks (100 packets/s VLAN host -> VPC host, "
              f"AWS prefers {args.aws_prefers}):")
        print(f"  packets lost  min/median/max: {min(lost)}/{statistics.median(lost):g}/{max(lost)}")
        print(f"  longest gap   min/median/max: {min(gaps) * 1000:.0f}/{statistics.median(gaps) * 1000:.0f}/"
              f"{max(gaps) * 1000:.0f} ms")
    finally:
        driver.lab("heal", "tunnel1")
        if args.up:
            driver.lab("down", timeout=600)
    return 0


if __name__ == "__main__":
    sys.exit(main())
