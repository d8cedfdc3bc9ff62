"""`vpnctl doctor` on the lab gateway, where VTIs, ESP and charon's SAs are real (issue 8).

Healthy: every check ok. Broken by hand, with the failover daemon stopped so its periodic full reconcile cannot repair
the state under the doctor's feet: each broken state fails its own line with a hint, and the doctor changes nothing.
The gateway is restored (reconcile, SA re-initiated, daemon restarted) before the next test.
"""

from __future__ import annotations

import json
import sys

import pytest

from lab import driver

pytestmark = pytest.mark.vm

CHARON_LOG = "/var/log/charon.log"  # the lab's charon logs to a file in the gateway's mount namespace
AGENT = "gw-vpnctl-daemon"


def doctor() -> tuple[int, dict[str, dict]]:
    r = driver.lab("exec", "gw", "vpnctl", "doctor", "--json", "--charon-log", CHARON_LOG, timeout=600)
    report = json.loads(r.out)
    return r.rc, {c["name"]: c for c in report["checks"]}


def gw(*argv: str) -> driver.Result:
    return driver.lab("exec", "gw", *argv, timeout=300, check=True)


def stop_agent() -> None:
    # The lab's own process table (lab/topology.py) knows the daemon's pid; this is what `systemctl stop` would do.
    driver.lab("exec", "root", sys.executable, "-c",
               f"from lab import topology; topology.stop_process({AGENT!r})", timeout=300, check=True)


def test_doctor_on_a_healthy_lab_gateway_is_all_ok(lab):
    # The daemon decides within a second; wait until its routes and both SAs are there before judging.
    driver.wait_until(lambda: doctor()[0] == 0, 300, "doctor to report a healthy gateway")
    rc, checks = doctor()
    print("\n".join(f"{c['status']:4} {name}: {c['found']}" for name, c in checks.items()))
    assert rc == 0
    assert all(c["status"] != "FAIL" for c in checks.values()), [c for c in checks.values() if c["status"] == "FAIL"]
    # The VTI, XFRM and SA checks can only be ok here (the host kernel has neither VTI nor ESP): they must have run.
    for name in ("vti vti-aws1", "vti vti-aws2", "xfrm state tunnel1", "xfrm state tunnel2", "sa tunnel1",
                 "sa tunnel2", "probe tunnel1", "probe tunnel2"):
        assert checks[name]["status"] == "ok", checks[name]


def test_doctor_names_each_broken_state_with_its_hint(lab):
    stop_agent()
    try:
        gw("sysctl", "-w", "net.ipv4.ip_forward=0")
        gw("ip", "route", "del", "10.0.0.0/16", "table", "1519", "metric", "100")
        gw("swanctl", "--terminate", "--child", "tunnel2", "--force")
        before = gw("ip", "-j", "route", "show", "table", "1519").out

        rc, checks = doctor()
        failed = {name: c for name, c in checks.items() if c["status"] == "FAIL"}
        print("\n".join(f"FAIL {n}: expected {c['expected']}; found {c['found']}. {c['hint']}"
                        for n, c in failed.items()))
        assert rc != 0
        assert "sysctl net.ipv4.ip_forward" in failed and "reconcile" in failed["sysctl net.ipv4.ip_forward"]["hint"]
        active = [n for n in failed if n.startswith("route 10.0.0.0/16 active")]
        assert active, sorted(failed)
        assert any(n in failed for n in ("sa tunnel2", "xfrm state tunnel2")), sorted(failed)
        assert checks["sa tunnel1"]["status"] == "ok"  # only what was broken fails
        assert gw("ip", "-j", "route", "show", "table", "1519").out == before  # the doctor only reads
    finally:
        driver.lab("exec", "gw", "swanctl", "--initiate", "--child", "tunnel2", "--timeout", "60", timeout=300)
        driver.lab("restart", "agent", timeout=300, check=True)  # its start-up reconcile repairs sysctl and routes
    driver.wait_until(lambda: doctor()[0] == 0, 300, "doctor to report the repaired gateway healthy")
