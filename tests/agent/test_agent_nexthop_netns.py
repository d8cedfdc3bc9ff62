"""Nexthop objects and link ownership against a real kernel, in throwaway namespaces (root).

A switch must cost one nexthop change whatever the number of AWS CIDRs, never leave a moment without a route through
a tunnel or the unreachable route, change nothing the second time, and leave other people's nexthops, routes and links
alone. Every check reads the kernel through `ip`, not through the code under test.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest
from agent_testlib import config_dict, write_config

pytestmark = pytest.mark.root

BOTH = {"tunnel1", "tunnel2"}
CIDRS = [f"10.{i}.0.0/16" for i in range(100)]
ACTIVE, STANDBY = 1519101, 1519102


@pytest.fixture
def gateway100(gateway):
    """The gateway fixture with 100 AWS CIDRs."""
    data = config_dict(gateway.tmp, aws_cidrs=CIDRS)
    write_config(gateway.tmp, data)
    gateway.data = data
    return gateway


def nexthops(gw) -> dict[int, dict]:
    out = json.loads(gw.ip("-j", "nexthop", "show", check=False).stdout or "[]")
    return {n["id"]: n for n in out}


def table(gw) -> dict[int, dict[str, str]]:
    """metric -> {dst: dev or type}, every route of table 1519."""
    out: dict[int, dict[str, str]] = {}
    for r in json.loads(gw.ip("-j", "route", "show", "table", "1519", check=False).stdout or "[]"):
        out.setdefault(r.get("metric", 0), {})[r["dst"]] = r.get("dev") or r.get("type", "unicast")
    return out


def test_hundred_cidr_switch_is_one_nexthop_change_and_idempotent(gateway100):
    gw = gateway100
    changes, problems = gw.reconcile(BOTH, "tunnel1")
    assert problems == []
    assert sum(c.startswith("replace_route") for c in changes) == 300
    assert {i: (n.get("dev"), n.get("protocol")) for i, n in nexthops(gw).items()} == {
        ACTIVE: ("vti-aws1", "157"), STANDBY: ("vti-aws2", "157")}
    routes = json.loads(gw.ip("-j", "route", "show", "table", "1519").stdout)
    assert {(r["metric"], r.get("nhid")) for r in routes} == {(100, ACTIVE), (200, STANDBY), (4294967295, None)}
    assert gw.reconcile(BOTH, "tunnel1") == ([], [])

    # failback-style swap with both up: the two role nexthops are replaced, no route is touched
    changes, problems = gw.reconcile(BOTH, "tunnel2")
    assert problems == [] and [c.split(" (")[0] for c in changes] == [
        f"replace_nexthop id {ACTIVE} dev vti-aws2", f"replace_nexthop id {STANDBY} dev vti-aws1"]
    assert table(gw)[100] == {c: "vti-aws2" for c in CIDRS} and table(gw)[200] == {c: "vti-aws1" for c in CIDRS}

    # failover: tunnel2 dies while active -> one replace; the standby role goes with its nexthop (one delete)
    changes, problems = gw.reconcile({"tunnel1"}, "tunnel1")
    assert problems == [] and [c.split(" (")[0] for c in changes] == [
        f"replace_nexthop id {ACTIVE} dev vti-aws1", f"delete_nexthop id {STANDBY} dev vti-aws1 proto 157"]
    assert table(gw) == {100: {c: "vti-aws1" for c in CIDRS}, 4294967295: {c: "unreachable" for c in CIDRS}}
    assert gw.reconcile({"tunnel1"}, "tunnel1") == ([], [])

    # both down: one delete, only the leak guard stays
    changes, _ = gw.reconcile(set(), None)
    assert [c.split(" (")[0] for c in changes] == [f"delete_nexthop id {ACTIVE} dev vti-aws1 proto 157"]
    assert table(gw) == {4294967295: {c: "unreachable" for c in CIDRS}}
    assert gw.reconcile(set(), None) == ([], [])


def test_switch_never_leaves_a_moment_without_a_route(gateway100):
    """`ip monitor` records every route and nexthop event during repeated switches: no active or unreachable route
    of ours is ever deleted, and a route lookup for an AWS address always answers through a tunnel."""
    gw = gateway100
    gw.reconcile(BOTH, "tunnel1")
    monitor = subprocess.Popen(["ip", "-n", gw.ns, "monitor", "route", "nexthop"], stdout=subprocess.PIPE,
                               text=True)
    try:
        time.sleep(0.5)  # let the monitor subscribe before the switches (a missed event would hide a deletion)
        for _ in range(3):
            gw.reconcile({"tunnel2"}, "tunnel2")
            gw.reconcile(BOTH, "tunnel1")
            gw.reconcile(BOTH, "tunnel2")
            gw.reconcile(BOTH, "tunnel1")
    finally:
        monitor.terminate()
        events, _ = monitor.communicate(timeout=30)
    lines = events.splitlines()
    assert any(f"id {ACTIVE}" in line for line in lines), events  # the monitor did see our changes
    deleted_active = [line for line in lines if line.startswith("Deleted") and "metric 100" in line]
    deleted_guard = [line for line in lines if line.startswith("Deleted") and "unreachable" in line]
    deleted_active_nh = [line for line in lines if line.startswith("Deleted") and f"id {ACTIVE} " in line]
    assert deleted_active == [] and deleted_guard == [] and deleted_active_nh == [], events
    assert "dev vti-aws1" in gw.ip("route", "get", "10.57.4.85").stdout


def test_lookups_during_switches_always_find_a_tunnel(gateway100):
    """A second process resolves an AWS address in a loop while the reconciler switches back and forth."""
    gw = gateway100
    gw.reconcile(BOTH, "tunnel1")
    script = ("import subprocess, sys, time\n"
              "end = time.monotonic() + float(sys.argv[1])\n"
              "bad = []\n"
              "n = 0\n"
              "while time.monotonic() < end:\n"
              "    out = subprocess.run(['ip', 'route', 'get', '10.99.1.1'], capture_output=True, text=True)\n"
              "    n += 1\n"
              "    if out.returncode != 0 or ' dev vti-aws' not in out.stdout:\n"
              "        bad.append(out.stdout + out.stderr)\n"
              "print(n, len(bad), bad[:3])\n")
    watcher = subprocess.Popen(["ip", "netns", "exec", gw.ns, "python3", "-c", script, "6"], stdout=subprocess.PIPE,
                               text=True)
    deadline = time.monotonic() + 5
    switches = 0
    while time.monotonic() < deadline:
        gw.reconcile({"tunnel2"}, "tunnel2")
        gw.reconcile(BOTH, "tunnel1")
        switches += 2
    out, _ = watcher.communicate(timeout=60)
    lookups, bad, samples = out.split(" ", 2)
    assert int(lookups) > 10 and switches >= 2, out
    assert int(bad) == 0, samples


def test_foreign_nexthops_and_routes_are_left_alone(gateway):
    gw = gateway
    gw.reconcile(BOTH, "tunnel1")
    gw.ip("nexthop", "add", "id", "7", "dev", "vti-aws2")  # outside our id range
    gw.ip("nexthop", "add", "id", "1519150", "dev", "vti-aws2", "proto", "static")  # in range, not our protocol
    gw.ip("route", "add", "192.0.2.0/24", "nhid", "7", "table", "1519", "proto", "static")
    gw.ip("route", "add", "198.51.100.0/24", "nhid", "1519150", "table", "1519", "proto", "static")
    gw.ip("nexthop", "add", "id", "1519160", "dev", "vti-aws1", "proto", "157")  # ours, a stray
    changes, problems = gw.reconcile(BOTH, "tunnel1")
    assert problems == [] and [c.split(" (")[0] for c in changes] == [
        "delete_nexthop id 1519160 dev vti-aws1 proto 157"]
    have = nexthops(gw)
    assert set(have) == {7, 1519150, ACTIVE, STANDBY}
    routes = gw.ip("route", "show", "table", "1519").stdout
    assert "192.0.2.0/24 nhid 7 dev vti-aws2 proto static" in routes and "198.51.100.0/24 nhid 1519150" in routes
    assert gw.reconcile(BOTH, "tunnel1") == ([], [])

    # someone else's nexthop at our standby id: reported, left alone, the standby routes are not made
    gw.ip("nexthop", "del", "id", str(STANDBY))
    gw.ip("nexthop", "add", "id", str(STANDBY), "dev", "vti-aws1", "proto", "static")
    changes, problems = gw.reconcile(BOTH, "tunnel1")
    assert changes == [] and any("held by a nexthop of protocol 4" in p for p in problems), problems
    assert nexthops(gw)[STANDBY]["dev"] == "vti-aws1" and nexthops(gw)[STANDBY]["protocol"] == "static"
    assert 200 not in table(gw) and table(gw)[100] == {"10.0.0.0/16": "vti-aws1"}


def test_routes_of_an_old_agent_are_moved_onto_the_nexthop(gateway):
    """Routes made before nexthops existed (dev, no nhid) are replaced in place: make-before-break."""
    gw = gateway
    gw.reconcile(set(), None)  # links up and addressed, only the leak guard routed
    for metric, dev in ((100, "vti-aws1"), (200, "vti-aws2")):
        gw.ip("route", "add", "10.0.0.0/16", "dev", dev, "src", "172.16.1.1", "table", "1519", "proto", "157",
              "metric", str(metric))
    changes, problems = gw.reconcile(BOTH, "tunnel1")
    assert problems == [] and not any(c.startswith("delete_route") for c in changes)
    routes = json.loads(gw.ip("-j", "route", "show", "table", "1519").stdout)
    assert {(r["metric"], r.get("nhid"), r.get("dev")) for r in routes} == {
        (100, ACTIVE, "vti-aws1"), (200, STANDBY, "vti-aws2"), (4294967295, None, None)}


def test_a_non_vti_link_with_a_tunnel_name_is_never_touched(gateway):
    """Link mode 'vti' (production): a veth named like the tunnel is not the agent's VTI. It is neither deleted nor
    recreated, its addresses and sysctls stay, no route or nexthop goes through it, and the problem says why."""
    gw = gateway
    gw.ip("addr", "add", "192.0.2.10/24", "dev", "vti-aws1")
    gw.run("sysctl", "-w", "net.ipv4.conf.vti-aws1.rp_filter=1", check=True)
    index = json.loads(gw.ip("-j", "link", "show", "dev", "vti-aws1").stdout)[0]["ifindex"]
    changes, problems = gw.reconcile(BOTH, "tunnel1", link_mode="vti")
    assert any("link vti-aws1 is a veth link, not a VTI the agent made: left alone" in p for p in problems), problems
    assert not any("vti-aws1" in c for c in changes), changes
    link = json.loads(gw.ip("-j", "addr", "show", "dev", "vti-aws1").stdout)[0]
    assert link["ifindex"] == index and link.get("ifalias") is None  # same link, not recreated, not marked
    assert [(a["local"], a["prefixlen"]) for a in link["addr_info"] if a["family"] == "inet"] == [("192.0.2.10", 24)]
    assert gw.run("sysctl", "-n", "net.ipv4.conf.vti-aws1.rp_filter").stdout.strip() == "1"
    assert all(n.get("dev") != "vti-aws1" for n in nexthops(gw).values())
    assert "vti-aws1" not in gw.ip("route", "show", "table", "1519").stdout
    assert "unreachable 10.0.0.0/16" in gw.ip("route", "show", "table", "1519").stdout  # the leak guard still goes in
