"""`vpnctl updown` as charon runs it: environment only, serialised, never failing because of the lock (root)."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import threading

import pytest
from agent_testlib import REPO, wait_for

pytestmark = pytest.mark.root

ENV1 = {"PLUTO_VERB": "up-client", "PLUTO_CONNECTION": "tunnel1", "PLUTO_PEER": "198.51.100.1",
        "PLUTO_MARK_IN": "100/0xffffffff", "PLUTO_UNIQUEID": "1"}
ENV2 = {"PLUTO_VERB": "up-client", "PLUTO_CONNECTION": "tunnel2", "PLUTO_PEER": "198.51.100.2",
        "PLUTO_MARK_IN": "200/0xffffffff", "PLUTO_UNIQUEID": "2"}


def table(gw) -> str:
    return gw.ip("route", "show", "table", "1519", check=False).stdout


def ifindex(gw, dev: str) -> int:
    return json.loads(gw.ip("-j", "link", "show", "dev", dev).stdout)[0]["ifindex"]


def test_up_events_route_and_repeated_up_changes_nothing(gateway):
    first = gateway.vpnctl("updown", "--tunnel-links", "given", env=ENV1)
    assert first.returncode == 0, first.stderr
    assert "10.0.0.0/16 nhid 1519101 dev vti-aws1 proto 157 src 172.16.1.1 metric 100" in table(gateway)
    assert gateway.vpnctl("updown", "--tunnel-links", "given", env=ENV2).returncode == 0
    assert "nhid 1519102 dev vti-aws2 proto 157 src 172.16.1.1 metric 200" in table(gateway)
    before, index = table(gateway), ifindex(gateway, "vti-aws1")
    again = gateway.vpnctl("updown", "--tunnel-links", "given", env=ENV1)
    assert again.returncode == 0
    assert "reconcile applied" not in again.stderr  # no change at all: no link churn, no route churn
    assert table(gateway) == before and ifindex(gateway, "vti-aws1") == index
    recorded = json.loads((gateway.tmp / "state" / "updown-tunnel1.json").read_text())
    assert recorded["verb"] == "up-client" and recorded["mark_in"] == 100
    # the active tunnel goes down: traffic moves at once, the link stays (no VTI teardown)
    down = gateway.vpnctl("updown", "--tunnel-links", "given", env=dict(ENV1, PLUTO_VERB="down-client"))
    assert down.returncode == 0
    assert "10.0.0.0/16 nhid 1519101 dev vti-aws2 proto 157 src 172.16.1.1 metric 100" in table(gateway)
    assert "vti-aws1" not in table(gateway) and ifindex(gateway, "vti-aws1") == index


def test_hostile_environment_is_refused_and_nothing_runs(gateway):
    marker = gateway.tmp / "pwned"
    env = dict(ENV1, PLUTO_CONNECTION=f"tunnel1;touch {marker}", PLUTO_PEER=f"$(touch {marker})")
    proc = gateway.vpnctl("updown", "--tunnel-links", "given", env=env)
    assert proc.returncode == 2 and "PLUTO_CONNECTION" in proc.stderr
    assert not marker.exists()
    assert table(gateway) == ""
    assert not (gateway.tmp / "state" / "updown-events.log").exists()


def test_concurrent_hooks_are_serialised_and_all_succeed(gateway):
    procs = []
    for i in range(8):
        env = ENV1 if i % 2 == 0 else ENV2
        procs.append(subprocess.Popen(
            ["ip", "netns", "exec", gateway.ns, sys.executable, "-m", "hostconfig.agent.cli", "updown",
             "--tunnel-links", "given", "--config", str(gateway.config)],
            env={"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO), **env, "PLUTO_UNIQUEID": str(i)},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    assert all(rc == 0 for rc, _ in results), results
    assert "metric 100" in table(gateway) and "metric 200" in table(gateway)
    log = (gateway.tmp / "state" / "updown-events.log").read_text().splitlines()
    assert sorted(json.loads(line)["unique_id"] for line in log) == [str(i) for i in range(8)]
    # whichever event came first decided the active tunnel; the result is converged either way
    again = json.loads(gateway.vpnctl("reconcile", "--tunnel-links", "given", "--json").stdout)
    assert again["changes"] == [] and again["problems"] == [] and again["up"] == ["tunnel1", "tunnel2"]


def test_hook_waits_for_the_lock_instead_of_failing(gateway):
    (gateway.tmp / "state").mkdir(exist_ok=True)
    holder = open(gateway.tmp / "state" / "reconcile.lock", "w")  # noqa: SIM115 - held across the test
    fcntl.flock(holder, fcntl.LOCK_EX)
    done = threading.Event()
    result: dict[str, subprocess.CompletedProcess[str]] = {}

    def run() -> None:
        result["proc"] = gateway.vpnctl("updown", "--tunnel-links", "given", env=ENV1)
        done.set()

    thread = threading.Thread(target=run)
    thread.start()
    # while we hold the lock the hook has recorded its event but cannot have touched the routes
    events = gateway.tmp / "state" / "updown-tunnel1.json"
    wait_for(events.exists, what="the hook to record its event")
    assert not done.is_set() and table(gateway) == ""
    fcntl.flock(holder, fcntl.LOCK_UN)
    holder.close()
    thread.join(timeout=120)
    assert result["proc"].returncode == 0, result["proc"].stderr
    assert "dev vti-aws1" in table(gateway)


def test_with_a_daemon_running_the_hook_only_records_and_never_loads_netlink(gateway):
    """charon waits for its hook while holding the SA: with the daemon alive (it holds its lock and gets the same event
    over VICI) the hook records the event and returns, without a reconcile and without importing pyroute2, whose import
    alone took seconds in the lab's VM and stalled charon's IKE exchanges."""
    from hostconfig.agent.state import acquire_daemon_lock

    daemon_lock = acquire_daemon_lock(gateway.tmp / "state", 5)  # stands in for a running `vpnctl daemon`
    try:
        proc = gateway.vpnctl("updown", "--tunnel-links", "given", env={**ENV1, "PYTHONPROFILEIMPORTTIME": "1"})
    finally:
        os.close(daemon_lock)
    assert proc.returncode == 0, proc.stderr
    assert "the failover daemon acts on it" in proc.stderr
    assert "import time:" in proc.stderr  # positive control: the import trace was on
    assert "pyroute2" not in proc.stderr
    assert "hostconfig.agent.doctor" not in proc.stderr  # the largest module, not needed to parse the hook's arguments
    assert table(gateway) == ""  # nothing reconciled
    assert json.loads((gateway.tmp / "state" / "updown-tunnel1.json").read_text())["verb"] == "up-client"
    # the daemon gone, the same hook reconciles itself again
    fallback = gateway.vpnctl("updown", "--tunnel-links", "given", env=ENV1)
    assert fallback.returncode == 0 and "no failover daemon running" in fallback.stderr
    assert "dev vti-aws1" in table(gateway)
