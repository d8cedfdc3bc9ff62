"""Cut of the tunnel AWS sends on: routing.mode static vs bgp side by side, per direction (prints numbers; asserts
nothing).

For each mode the lab is brought up in that mode (`lab up --routing static|bgp`), settled (the gateway on tunnel1, AWS
sending on tunnel1: by `lab prefer` in static mode, by the gateway's AS-path prepend on tunnel2 in bgp mode), then
each run cuts tunnel1's underlay while lab/flows.py runs (UDP 50/s each way, timed where it arrives), heals, and waits
for both tunnels to carry traffic again. Printed: median (min/max) per direction beside the physical bound:
static AWS -> gateway is AWS's DPD timeout whatever the gateway does; bgp AWS -> gateway is the gateway's detection
plus one BGP UPDATE (the more-specific halves over tunnel2) through bgpd and zebra (AWS's real processing time of an
UPDATE is not published: the lab's is FRR's).

    .venv/bin/python bench/routing_modes_bench.py [--runs 3] [--modes static,bgp]
Brings its own lab up and down (HYBRID_VPN_LAB_RUN as for the tests); refuses to start while a lab is running.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from failover_matrix import Kind, fmt, one_run  # noqa: E402

from lab import driver  # noqa: E402

GATEWAY_BOUND = f"gateway detection ~{driver.GATEWAY_DETECTION_SECONDS:.1f} s (+1 s switch margin)"
MODES = {
    # static: AWS stays on the dead tunnel until its DPD declares it DOWN; the window covers it with room to spare
    "static": lambda: Kind("cut of the tunnel AWS sends on", "tunnel1", 60, GATEWAY_BOUND,
                           f"AWS's DPD timeout {driver.AWS_DPD_TIMEOUT_SECONDS} s"),
    "bgp": lambda: Kind("cut of the tunnel AWS sends on", "tunnel1", 25, GATEWAY_BOUND,
                        f"gateway detection ~{driver.GATEWAY_DETECTION_SECONDS:.1f} s + one BGP UPDATE"),
}


def run_mode(mode: str, runs: int) -> Kind:
    kind = MODES[mode]()
    up = driver.lab("up", "--routing", mode, timeout=1800)
    try:
        if up.rc != 0:
            raise RuntimeError(f"lab up --routing {mode} failed:\n{up.out[-3000:]}\n{up.err[-3000:]}")
        for i in range(runs):
            kind.runs.append(one_run(kind))
            to_aws, to_gw, healed = kind.runs[-1]
            print(f"{mode} run {i + 1}/{runs}: gateway -> AWS {to_aws}, AWS -> gateway {to_gw}, both tunnels carry "
                  f"traffic {healed} s after the heal", flush=True)
    finally:
        driver.lab("heal", "tunnel1")
        driver.lab("down", timeout=600)
    return kind


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--modes", default="static,bgp")
    args = ap.parse_args()
    if driver.lab("status", timeout=120).rc == 0:
        print("a lab is running: `lab down` first (this benchmark brings up a lab per routing mode)", file=sys.stderr)
        return 1
    results = {mode: run_mode(mode, args.runs) for mode in args.modes.split(",")}
    print(f"\ncut of the tunnel AWS sends on, static vs bgp ({args.runs} runs each; UDP 50/s each way, timed at the "
          f"receiver; AWS DPD timeout {driver.AWS_DPD_TIMEOUT_SECONDS} s)")
    print(f"{'mode':8} {'direction':16} {'median blackout':48} physical bound")
    for mode, kind in results.items():
        print(f"{mode:8} {'gateway -> AWS':16} {fmt([r[0] for r in kind.runs], kind.window):48} {kind.bound_to_aws}")
        print(f"{'':8} {'AWS -> gateway':16} {fmt([r[1] for r in kind.runs], kind.window):48} {kind.bound_to_gw}")
        print(f"{'':8} {'recovery (heal)':16} {fmt([r[2] for r in kind.runs], 300):48} both tunnels carry traffic")
    return 0


if __name__ == "__main__":
    sys.exit(main())
