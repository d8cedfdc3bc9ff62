"""Failover per failure kind and per direction, against the lab's faithful AWS side (prints numbers; asserts nothing).

Each run starts settled (both tunnels carry traffic, the gateway on tunnel1, AWS sending on the tunnel the kind needs),
runs lab/flows.py (UDP both ways, 50/s, each direction timed where it arrives), injects the fault, and reports the
blackout of each direction around it; then heals and times how long until both tunnels carry traffic again. Printed:
the median (and min/max) of the runs beside the physical bound (aws-vpn-facts.md, "Physical bounds of a failover").

    .venv/bin/python bench/failover_matrix.py [--runs 5] [--kinds cut-aws,cut-other,esp-dead,maintenance]
    .venv/bin/python bench/failover_matrix.py --cuts-in-a-row 10     # cuts of 35-60 s, how many recovered
Needs a running lab (`make lab`, HYBRID_VPN_LAB_RUN as for the tests), or --up to start one.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lab import driver, flows  # noqa: E402

TUNNEL1_OUTSIDE = "198.51.100.1"
FAULT_TABLE = "lab_bench_fault"
RECOVERY_TIMEOUT = 300.0
CUT_LENGTHS = (35, 48, 60, 41, 55)  # each longer than both ends' DPD (AWS 30 s, the gateway 10 + 14.2 s)


@dataclass
class Kind:
    name: str
    aws_sends_on: str
    window: float  # seconds of flows
    bound_to_aws: str
    bound_to_gw: str
    runs: list[tuple[float | None, float | None, float | None]] = field(default_factory=list)  # to_aws, to_gw, heal


def settle(aws_sends_on: str) -> None:
    driver.lab("heal", "tunnel1", check=True)
    driver.lab("exec", "inet", "sh", "-c", f"nft delete table inet {FAULT_TABLE} 2>/dev/null; true")
    driver.wait_until(lambda: driver.tunnel_carries("tunnel1") and driver.tunnel_carries("tunnel2"), RECOVERY_TIMEOUT,
                      "both tunnels carrying traffic", interval=1)
    driver.wait_until(lambda: driver.active_vti() == "vti-aws1", RECOVERY_TIMEOUT, "the gateway on tunnel1", 1)
    driver.wait_aws_sending(aws_sends_on, RECOVERY_TIMEOUT)
    driver.wait_until(driver.repairs_reset, RECOVERY_TIMEOUT, "the gateway's repair backoff reset", interval=5)


def recovery_after(heal: Callable[[], object]) -> float | None:
    heal()
    t0 = time.monotonic()
    try:
        driver.wait_until(lambda: driver.tunnel_carries("tunnel1") and driver.tunnel_carries("tunnel2"),
                          RECOVERY_TIMEOUT, "both tunnels carrying traffic after the heal", interval=1)
    except AssertionError:
        return None
    return time.monotonic() - t0


def blackout(direction: flows.Direction, at: float) -> float | None:
    """The blackout around the fault; None when nothing arrived after it (still out when the flows ended)."""
    if direction.last is None or direction.last <= at:
        return None
    return flows.outage_around(direction, at) or 0.0


def one_run(kind: Kind) -> tuple[float | None, float | None, float | None]:
    settle(kind.aws_sends_on)
    flow = driver.Flows(kind.window)
    time.sleep(2)  # a little steady traffic before the fault
    heal = None
    if kind.name.startswith("cut"):
        at = driver.lab_clock(driver.lab("break", "tunnel1", check=True))
        heal = lambda: driver.lab("heal", "tunnel1", check=True)  # noqa: E731
    elif kind.name == "esp-dead":
        # The clock is read in the same exec, right after the rule is in: a separate `lab exec` round trip (seconds
        # under load) put the fault's time before the gap by more than outage_around's slack, which read as 0 s.
        apply_then_clock = 'printf "%s\\n" "$1" | nft -f - && echo "lab clock $(date +%s.%N)"'
        applied = driver.lab("exec", "inet", "sh", "-c", apply_then_clock, "sh",
                             driver.esp_drop_ruleset(TUNNEL1_OUTSIDE, FAULT_TABLE), check=True)
        at = driver.lab_clock(applied)
        heal = lambda: driver.lab("exec", "inet", "nft", "delete", "table", "inet", FAULT_TABLE, check=True)  # noqa
    else:
        r = driver.lab("maintenance", "tunnel1", "15", check=True, timeout=900)
        at = driver.lab_clock(r)
    result = flow.result()
    to_aws, to_gw = blackout(result["gateway_to_aws"], at), blackout(result["aws_to_gateway"], at)
    healed = recovery_after(heal) if heal else recovery_after(lambda: None)
    return to_aws, to_gw, healed


def fmt(values: list[float | None], window: float) -> str:
    if any(v is None for v in values):
        never = sum(v is None for v in values)
        done = [v for v in values if v is not None]
        rest = f", others median {statistics.median(done):.2f} s" if done else ""
        return f"never within {window:.0f} s in {never}/{len(values)} runs{rest}"
    return f"{statistics.median(values):6.2f} s (min {min(values):.2f}, max {max(values):.2f})"


def matrix(kinds: list[Kind], runs: int) -> None:
    for kind in kinds:
        for i in range(runs):
            kind.runs.append(one_run(kind))
            to_aws, to_gw, healed = kind.runs[-1]
            print(f"{kind.name} run {i + 1}/{runs}: gateway -> AWS {to_aws}, AWS -> gateway {to_gw}, "
                  f"both tunnels carry traffic {healed} s after the heal", flush=True)
    print(f"\nfailover per failure kind and direction ({runs} runs each; UDP 50/s each way, timed at the receiver; "
          f"AWS DPD timeout {driver.AWS_DPD_TIMEOUT_SECONDS} s)")
    print(f"{'failure kind':36} {'direction':16} {'median blackout':48} physical bound")
    for kind in kinds:
        print(f"{kind.name:36} {'gateway -> AWS':16} {fmt([r[0] for r in kind.runs], kind.window):48} "
              f"{kind.bound_to_aws}")
        print(f"{'':36} {'AWS -> gateway':16} {fmt([r[1] for r in kind.runs], kind.window):48} {kind.bound_to_gw}")
        print(f"{'':36} {'recovery (heal)':16} {fmt([r[2] for r in kind.runs], RECOVERY_TIMEOUT):48} "
              "both tunnels carry traffic again")


def cuts_in_a_row(n: int) -> None:
    settle("tunnel1")
    recovered, times = 0, []
    for i in range(n):
        seconds = CUT_LENGTHS[i % len(CUT_LENGTHS)]
        driver.lab("break", "tunnel1", check=True)
        time.sleep(seconds)  # the cut's length
        back = recovery_after(lambda: driver.lab("heal", "tunnel1", check=True))
        recovered += back is not None
        times.append(back)
        verdict = (f"both tunnels carry traffic {back:.1f} s after the heal" if back is not None
                   else f"NOT recovered within {RECOVERY_TIMEOUT:.0f} s")
        print(f"cut {i + 1}/{n} ({seconds} s): {verdict}", flush=True)
    done = [t for t in times if t is not None]
    print(f"\n{recovered} of {n} cuts in a row recovered (both tunnels carrying traffic within "
          f"{RECOVERY_TIMEOUT:.0f} s of the heal); recovery median {statistics.median(done) if done else 0:.1f} s, "
          f"max {max(done) if done else 0:.1f} s")


KINDS = {
    "cut-aws": lambda: Kind("cut of the tunnel AWS sends on", "tunnel1", 60, "gateway detection ~0.6 s",
                            f"AWS DPD timeout {driver.AWS_DPD_TIMEOUT_SECONDS} s"),
    "cut-other": lambda: Kind("cut of the other tunnel", "tunnel2", 30, "gateway detection ~0.6 s", "0 s"),
    "esp-dead": lambda: Kind("esp-dead", "tunnel1", 60, "gateway detection ~0.6 s",
                             "indefinite unless the gateway deletes the IKE_SA"),
    "maintenance": lambda: Kind("maintenance with DELETE", "tunnel1", 30, "~0 s", "~0 s"),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--cuts-in-a-row", type=int, default=0, help="run N cuts of tunnel1 in a row instead")
    ap.add_argument("--up", action="store_true", help="run `lab up` first and `lab down` at the end")
    args = ap.parse_args()
    if args.up:
        driver.lab("up", timeout=1800, check=True)
    try:
        if args.cuts_in_a_row:
            cuts_in_a_row(args.cuts_in_a_row)
        else:
            matrix([KINDS[k]() for k in args.kinds.split(",")], args.runs)
    finally:
        driver.lab("heal", "tunnel1")
        driver.lab("exec", "inet", "sh", "-c", f"nft delete table inet {FAULT_TABLE} 2>/dev/null; true")
        if args.up:
            driver.lab("down", timeout=600)
    return 0


if __name__ == "__main__":
    sys.exit(main())
