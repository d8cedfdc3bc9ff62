"""`vpnctl doctor` on the lab gateway, where VTIs, ESP and charon's SAs are real (issue 8).

Healthy: every check of the gateway's present state is ok, the VTI, XFRM and SA checks included (they cannot pass on
the host kernel). Broken: with the daemon stopped, ip_forward off, the active route deleted and tunnel2's ESP dropped on
the internet path, each fails its own line with its hint, and the doctor changes nothing. (No SA is torn down on
purpose: charon's updown hook would run `vpnctl updown`, whose reconcile repairs the sysctl and the route at once.)
"""

from __future__ import annotations

import json
import sys

import pytest

from lab import driver
from tests.e2e.conftest import TUNNEL2_OUTSIDE, drop_esp_of, lab_exec, remove_fault

pytestmark = pytest.mark.vm

CHARON_LOG = "/var/log/charon.log"  # the lab's charon logs to a file in the gateway's mount namespace
VPNCTL = "/usr/local/sbin/vpnctl"  # where delivery installs it (docs/contracts.md §4)
AGENT = "gw-vpnctl-daemon"  # the lab's name for the daemon process (lab/topology.py pid files)


def doctor() -> tuple[int, dict[str, dict]]:
    r = driver.lab("exec", "gw", VPNCTL, "doctor", "--json", "--charon-log", CHARON_LOG, timeout=600)
    report = json.loads(r.out)
    return r.rc, {c["name"]: c for c in report["checks"]}


def state_failures(checks: dict[str, dict]) -> dict[str, dict]:
    """FAIL lines about the gateway's present state. The `charon log` lines judge the recent log, which in a shared
    lab holds what earlier tests did on purpose (charon killed, tunnels broken), so they are printed, not asserted."""
    return {n: c for n, c in checks.items() if c["status"] == "FAIL" and not n.startswith("charon log")}


def test_doctor_on_a_healthy_lab_gateway_is_all_ok(lab):
    # The daemon decides within a second; wait until its routes and both SAs are there before judging.
    driver.wait_until(lambda: not state_failures(doctor()[1]), 300, "doctor to report a healthy gateway")
    rc, checks = doctor()
    print("\n".join(f"{c['status']:4} {name}: {c['found']}" for name, c in checks.items()))
    assert not state_failures(checks), state_failures(checks)
    assert rc == (1 if any(c["status"] == "FAIL" for c in checks.values()) else 0)
    # The VTI, XFRM and SA checks can only be ok here (the host kernel has neither VTI nor ESP): they must have run.
    for name in ("vti vti-aws1", "vti vti-aws2", "xfrm state tunnel1", "xfrm state tunnel2", "sa tunnel1",
                 "sa tunnel2", "probe tunnel1", "probe tunnel2"):
        assert checks[name]["status"] == "ok", checks[name]


def stop_agent() -> None:
    """What `systemctl stop hybrid-vpn-failover` does: SIGTERM, through the lab's own process table."""
    driver.lab("exec", "root", sys.executable, "-c", f"from lab import topology; topology.stop_process({AGENT!r})",
               timeout=300, check=True)
    driver.wait_until(lambda: "daemon: not running" in driver.lab("exec", "gw", VPNCTL, "status", timeout=300).out,
                      120, "`vpnctl status` saying the daemon is not running")


def test_doctor_names_each_broken_state_with_its_hint(lab):
    stop_agent()
    try:
        drop_esp_of(TUNNEL2_OUTSIDE)
        lab_exec("gw", "sysctl", "-w", "net.ipv4.ip_forward=0")
        lab_exec("gw", "ip", "route", "del", "10.0.0.0/16", "table", "1519", "metric", "100")
        before = lab_exec("gw", "ip", "-j", "route", "show", "table", "1519").out

        rc, checks = doctor()
        failed = state_failures(checks)
        print("\n".join(f"FAIL {n}: expected {c['expected']}; found {c['found']}. {c['hint']}"
                        for n, c in failed.items()))
        assert rc != 0
        assert "reconcile" in failed["sysctl net.ipv4.ip_forward"]["hint"], failed.get("sysctl net.ipv4.ip_forward")
        assert "route 10.0.0.0/16 active" in failed, sorted(failed)
        assert "probe tunnel2" in failed and "ESP does not pass" in failed["probe tunnel2"]["hint"], sorted(failed)
        assert "daemon" in failed and "hybrid-vpn-failover" in failed["daemon"]["hint"], sorted(failed)
        # only what was broken fails: tunnel1 answers, both SAs are up (IKE still passes for tunnel2)
        for name in ("probe tunnel1", "sa tunnel1", "sa tunnel2", "vti vti-aws1", "vti vti-aws2"):
            assert checks[name]["status"] == "ok", checks[name]
        assert lab_exec("gw", "ip", "-j", "route", "show", "table", "1519").out == before  # the doctor only reads
        assert lab_exec("gw", "sysctl", "-n", "net.ipv4.ip_forward").out.strip() == "0"
    finally:
        remove_fault()
        driver.lab("restart", "agent", timeout=300, check=True)  # its start-up reconcile repairs sysctl and routes
    driver.wait_until(lambda: not state_failures(doctor()[1]), 300, "doctor to report the repaired gateway healthy")
