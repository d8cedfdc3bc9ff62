"""How long the failover daemon's loop waits on charon: the Repairer's tick, called every 10 ms as the loop calls it,
first with charon answering, then with charon holding list-sas back for 3 s (as it does while an updown hook runs).

The fake charon is the agent tests' (tests/agent/fake_vici.py): the only VICI server that can hold a reply back on
purpose. Before the listing moved to a worker thread (hostconfig/agent/vici_worker.py) a held listing made one tick
last ~3 s, and the loop sent and read no probe meanwhile.

    .venv/bin/python bench/repair_tick_bench.py
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests" / "agent"), str(REPO / "tests"), str(REPO)]

from agent_testlib import config_dict, write_config  # noqa: E402
from fake_vici import FakeVici  # noqa: E402

from hostconfig.agent.config import load_config  # noqa: E402
from hostconfig.agent.daemon import Repairer  # noqa: E402
from hostconfig.agent.health import RepairPolicy, TunnelHealth  # noqa: E402

TICK_SECONDS = 0.01
RUN_SECONDS = 4.0
HOLD_SECONDS = 3.0


def main() -> int:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    tmp = Path(tempfile.mkdtemp())
    config = load_config(write_config(tmp, config_dict(tmp)))
    vici = FakeVici()
    for t in config.tunnels:
        vici.add(t.name, str(t.remote_outside_ip), t.mark)
    health = {t.name: TunnelHealth(t.name, 3, 5) for t in config.tunnels}
    for h in health.values():
        h.presume_up(time.monotonic(), "bench")
    repairer = Repairer(config, health, RepairPolicy(), vici.connect)
    for label, hold in (("charon answers", False), (f"list-sas held {HOLD_SECONDS:g} s", True)):
        if hold:
            vici.hold("list-sas")
            threading.Timer(HOLD_SECONDS, vici.release).start()
        took, began = [], time.monotonic()
        while time.monotonic() - began < RUN_SECONDS:
            t0 = time.monotonic()
            repairer.tick(t0, "tunnel1")
            took.append(time.monotonic() - t0)
            time.sleep(TICK_SECONDS)
        took.sort()
        print(f"{label:20s}: {len(took):4d} ticks in {RUN_SECONDS:g} s, tick median "
              f"{statistics.median(took) * 1000:.2f} ms, p99 {took[int(len(took) * 0.99)] * 1000:.2f} ms, "
              f"max {took[-1] * 1000:.1f} ms (bound: the probe interval, 100 ms by default)")
    repairer.close(time.monotonic())
    return 0


if __name__ == "__main__":
    sys.exit(main())
