#!/usr/bin/env python3
"""Benchmark of `lab restart frr` on the gateway (routing.mode bgp, issue 16: in the lab the sessions were not back
within 300 s): real FRR 8.4 in two namespaces over veth 'tunnels' (root, Debian's frr), the gateway's restarted the
way lab/gateway.py does it (stop; zebra and bgpd started without config; `vtysh -b` applies the integrated frr.conf).

Two orders are timed until both sessions are Established on both sides:
- ``answering``: each daemon waited for until it answers vtysh (lab.frr.answers_argv, what the lab does now);
- ``zebra-only``: `vtysh -b` runs while zebra answers and bgpd has not started listening yet, which is what the old
  wait (for the vty socket file, which FRR leaves behind when it stops) allowed on a slow (TCG) machine.
FRR's own timers are printed too (advertisement interval, connect-retry), and what one vtysh call costs. Usage:
    .venv/bin/python bench/bgp_restart_bench.py [--give-up 200]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from frr_testlib import frr_missing, frr_pair, wire_tunnels  # noqa: E402
from testlib import wait_for  # noqa: E402

FIXTURE = REPO / "tests" / "fixtures" / "host_config.default.json"
ESTABLISHED = ["Established"] * 2


def one(order: str, give_up: float) -> str:
    from hostconfig.plan import GatewayPlan
    from hostconfig.render import render_frr_conf

    obj = json.loads(FIXTURE.read_text())
    obj["routing"] = {"mode": "bgp", "customer_asn": 65000, "amazon_side_asn": 64512}
    plan = GatewayPlan.from_host_config(obj)
    gw, aws = f"hvbench-{uuid.uuid4().hex[:6]}", f"hvbench-{uuid.uuid4().hex[:6]}"
    for ns in (gw, aws):
        subprocess.run(["ip", "netns", "add", ns], check=True)
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
    try:
        wire_tunnels(gw, aws, plan)
        with frr_pair(gw, aws, plan) as (gateway, amazon):
            def both() -> bool:
                return (list(amazon.neighbor_states().values()) == ESTABLISHED
                        and list(gateway.neighbor_states().values()) == ESTABLISHED)
            wait_for(both, timeout=120, what="both sessions up")
            timers = {a: (i.get("minBtwnAdvertisementRunsTimerMsecs"), i.get("connectRetryTimer"))
                      for a, i in gateway.json("show bgp neighbors json").items()}
            if order == "answering":  # what one call costs here: a vtysh process vs bgpd's socket (the steerer's)
                from hostconfig.agent.frr import BgpdVty

                for what, run in (("vtysh process", gateway.vtysh), ("socket to bgpd (BgpdVty)",
                                                                     BgpdVty(vty_socket=str(gateway.dir)))):
                    took = []
                    for _ in range(10):
                        t0 = time.monotonic()
                        run(["-c", "show bgp neighbors json"])
                        took.append(time.monotonic() - t0)
                    print(f"  one call through a {what} (show bgp neighbors json): median "
                          f"{statistics.median(took) * 1000:.1f} ms, max {max(took) * 1000:.1f} ms over 10")
            t0 = time.monotonic()
            if order == "answering":
                gateway.restart_as_the_lab_does(render_frr_conf(plan))
            else:
                (gateway.dir / "frr.conf").write_text(render_frr_conf(plan))
                (gateway.dir / "vtysh.conf").write_text("service integrated-vtysh-config\n")
                (gateway.dir / "bgpd.conf").write_text("!\n")
                gateway.stop_daemons()
                (gateway.dir / "zebra.vty").unlink()  # so that _daemon waits for the new zebra's socket
                gateway._daemon("zebra")
                boot = subprocess.run(["vtysh", "--vty_socket", str(gateway.dir), "--config_dir", str(gateway.dir),
                                       "-b"], capture_output=True, text=True)
                print(f"  zebra-only: `vtysh -b` exit {boot.returncode}")
                gateway._daemon("bgpd")
            while not both():
                if time.monotonic() - t0 > give_up:
                    return (f"{order}: NOT back after {give_up:.0f} s (AWS side {amazon.neighbor_states()}, "
                            f"gateway {gateway.neighbor_states()}); timers (MRAI ms, connect-retry s) {timers}")
                time.sleep(0.2)
            return (f"{order}: both sessions Established {time.monotonic() - t0:.1f} s after the restart; "
                    f"gateway timers (MRAI ms, connect-retry s) {timers}")
    finally:
        for ns in (gw, aws):
            subprocess.run(["ip", "netns", "del", ns], check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--give-up", type=float, default=200.0)
    args = parser.parse_args()
    if reason := frr_missing():
        print(f"skipped: {reason}")
        return 0
    for order in ("answering", "zebra-only"):
        print(one(order, args.give_up), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
