"""Time from `lab up` (what `make lab` runs) to the first packet VLAN host -> VPC host through the tunnel.

Prints the phases `lab up` reports (kernel ready, VM boot, operator side, tunnels up, first packet) with their
wall-clock offsets, then takes the lab down. --cold removes the cached VM kernel first (measures the download too).

    .venv/bin/python bench/lab_startup_bench.py [--runs 1] [--cold]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lab import driver, paths  # noqa: E402

MILESTONES = {
    "VM kernel ready": "kernel ready",
    "VM up in": "VM booted (controller serving)",
    "operator side ready": "operator side ready (program + render)",
    "both tunnels up": "both tunnels up",
    "first packet through": "first packet through",
    "lab is up": "lab up returned",
}


def one_run() -> dict[str, float]:
    t0 = time.monotonic()
    proc = driver.lab_popen("up")
    seen: dict[str, float] = {}
    for line in proc.stdout:
        for needle, name in MILESTONES.items():
            if needle in line and name not in seen:
                seen[name] = time.monotonic() - t0
    proc.wait()
    seen["total"] = time.monotonic() - t0
    if proc.returncode != 0:
        print(f"lab up failed (rc {proc.returncode}): {proc.stderr.read()[-2000:]}", file=sys.stderr)
    return seen


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--cold", action="store_true", help="remove the cached VM kernel before the first run")
    args = ap.parse_args()
    if driver.lab("status").rc == 0:
        print("a lab is running: `make lab down` first", file=sys.stderr)
        return 1
    if args.cold:
        for d in paths.CACHE_DIR.glob("linux-image-*"):
            shutil.rmtree(d)
    results = []
    for i in range(args.runs):
        r = one_run()
        results.append(r)
        print(f"run {i + 1}: " + ", ".join(f"{k} at {v:.1f} s" for k, v in r.items()), flush=True)
        driver.lab("down", timeout=600, check=True)
    firsts = [r["first packet through"] for r in results if "first packet through" in r]
    if firsts:
        print(f"`lab up` -> first packet through: min/median/max {min(firsts):.1f}/{statistics.median(firsts):.1f}/"
              f"{max(firsts):.1f} s over {len(firsts)} run(s)")
    else:
        print("no run reached the first packet")
    return 0 if firsts else 1


if __name__ == "__main__":
    sys.exit(main())
