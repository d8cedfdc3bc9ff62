"""The failover daemon as a process in a namespace: real ICMP probes over veth 'tunnels' answered by an 'AWS'
namespace, failover by route replace, damped failback, restart without churn, state/metrics files (root)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from agent_testlib import REPO, wait_for, write_config

from hostconfig.agent.status_contract import DaemonState, StatusReport

pytestmark = pytest.mark.root


def start_daemon(gateway, *extra: str) -> subprocess.Popen[str]:
    log = open(gateway.tmp / f"daemon-{len(list(gateway.tmp.glob('daemon-*.log')))}.log", "w")  # noqa: SIM115
    return subprocess.Popen(
        ["ip", "netns", "exec", gateway.ns, sys.executable, "-m", "hostconfig.agent.cli", "daemon",
         "--tunnel-links", "given", "--config", str(gateway.config), *extra],
        env={"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO)}, stdout=log, stderr=subprocess.STDOUT, text=True)


def stop(proc: subprocess.Popen[str]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=60)


def state(gateway) -> dict:
    """The daemon's state file as JSON, after checking it against its definition (docs/contracts.md §3a)."""
    try:
        text = (gateway.tmp / "state" / "daemon-state.json").read_text()
    except OSError:
        return {}
    DaemonState.loads(text)  # raises, naming the field, when the daemon writes something else
    return json.loads(text)


def active_dev(gateway) -> str | None:
    proc = gateway.ip("-j", "route", "show", "table", "1519", check=False)
    for route in json.loads(proc.stdout) if proc.returncode == 0 else []:  # no table yet: "[" and an error
        if route.get("metric") == 100:
            return route.get("dev")
    return None


def break_tunnel(gateway, i: int) -> None:
    # drop the probes on the AWS side of tunnel i, like ESP loss: the link stays up
    gateway.aws_exec("nft", "-f", "-", input=f"table inet brk{i} {{\n chain input {{\n"
                     f"  type filter hook input priority 0; policy accept;\n  iifname \"aws{i}\" drop\n }}\n}}\n")


def heal_tunnel(gateway, i: int) -> None:
    gateway.aws_exec("nft", "delete", "table", "inet", f"brk{i}")


@pytest.fixture
def fast_gateway(gateway):
    data = gateway.data
    data["probe"].update({"interval_ms": 100, "timeout_ms": 300, "down_after": 3, "up_after": 3,
                          "failback_hold_seconds": 2})
    write_config(gateway.tmp, data)
    return gateway


def test_failover_failback_restart_and_outputs(fast_gateway):
    gw = fast_gateway
    proc = start_daemon(gw)
    try:
        wait_for(lambda: state(gw).get("active") == "tunnel1" and state(gw).get("up") == ["tunnel1", "tunnel2"],
                 what="both tunnels up, tunnel1 active")
        assert active_dev(gw) == "vti-aws1"
        assert state(gw)["tunnels"]["tunnel1"]["rtt_seconds"] > 0
        base = state(gw)["switches_total"]  # "none -> tunnel1" at start counts too

        break_tunnel(gw, 1)
        wait_for(lambda: active_dev(gw) == "vti-aws2", what="failover to tunnel2")
        s = wait_for(lambda: state(gw) if state(gw).get("switches_total") == base + 1 else None,
                     what="state file update")
        assert s["last_switch"]["from"] == "tunnel1" and s["last_switch"]["to"] == "tunnel2"
        assert "tunnel1 is down" in s["last_switch"]["reason"]
        metrics = (gw.tmp / "metrics" / "hybrid_vpn.prom").read_text()
        wait_for(lambda: 'hybrid_vpn_active_tunnel{tunnel="tunnel2"} 1' in
                 (gw.tmp / "metrics" / "hybrid_vpn.prom").read_text(), what="metrics file")
        assert "hybrid_vpn_switches_total" in metrics

        heal_tunnel(gw, 1)
        wait_for(lambda: state(gw).get("up") == ["tunnel1", "tunnel2"], what="tunnel1 healthy again")
        assert active_dev(gw) == "vti-aws2" or state(gw)["switches_total"] == base + 2  # damped: not at once
        wait_for(lambda: active_dev(gw) == "vti-aws1", what="failback after the hold time")
        s = wait_for(lambda: state(gw) if state(gw).get("switches_total") == base + 2 else None,
                     what="failback recorded")
        assert "failback" in s["last_switch"]["reason"]
    finally:
        rc = stop(proc)
    assert rc == 0
    log = (gw.tmp / "daemon-0.log").read_text()
    assert log.count("switch tunnel1 -> tunnel2") == 1 and log.count("switch tunnel2 -> tunnel1") == 1

    # a restart rebuilds from the kernel: tunnel1 stays active, nothing is changed at start
    proc = start_daemon(gw)
    try:
        s = wait_for(lambda: state(gw) if state(gw).get("pid") not in (None, s["pid"]) else None,
                     what="the restarted daemon's state")
        assert s["active"] == "tunnel1" and s["last_reconcile"]["changes"] == []
        status = subprocess.run(["ip", "netns", "exec", gw.ns, sys.executable, "-m", "hostconfig.agent.cli",
                                 "status", "--json", "--config", str(gw.config)], capture_output=True, text=True,
                                env={"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO)})
        data = json.loads(status.stdout)
        assert StatusReport.loads(status.stdout).daemon.running  # what the operator's reader accepts
        roles = {t["name"]: t["role"] for t in data["tunnels"]}
        assert roles == {"tunnel1": "active", "tunnel2": "standby"}
        assert data["daemon"]["running"] is True and data["kernel"]["leak_protection"] is True
        assert data["tunnels"][0]["bytes"]["tx"] > 0 and data["tunnels"][0]["ike_sa"] == "unknown"
        assert data["vici"].startswith("unreachable")
    finally:
        rc = stop(proc)
    assert rc == 0
    assert "switch" not in (gw.tmp / "daemon-1.log").read_text().replace("switches", "")


def test_both_tunnels_down_leaves_only_the_unreachable_route(fast_gateway):
    gw = fast_gateway
    proc = start_daemon(gw)
    try:
        wait_for(lambda: active_dev(gw) == "vti-aws1", what="tunnel1 active")
        break_tunnel(gw, 1)
        break_tunnel(gw, 2)
        wait_for(lambda: state(gw).get("active") is None and state(gw).get("up") == [], what="both down")
        routes = gw.ip("route", "show", "table", "1519").stdout.strip().splitlines()
        assert routes == ["unreachable 10.0.0.0/16 proto 157 metric 4294967295"]
    finally:
        rc = stop(proc)
    assert rc == 0


def test_refused_ruleset_still_gets_routes_and_leak_protection(fast_gateway):
    gw = fast_gateway
    (gw.tmp / "nftables.nft").write_text("flush ruleset\n")
    proc = start_daemon(gw)
    try:
        wait_for(lambda: active_dev(gw) == "vti-aws1", what="tunnel1 active despite the refused ruleset")
        assert "unreachable 10.0.0.0/16 proto 157 metric 4294967295" in gw.ip("route", "show", "table", "1519").stdout
        assert gw.run("nft", "list", "tables").stdout.strip() == ""
    finally:
        rc = stop(proc)
    assert rc == 0
    assert "nftables ruleset refused" in (gw.tmp / "daemon-0.log").read_text()


def test_changes_by_others_are_repaired_from_notifications_not_the_periodic_backstop(fast_gateway):
    """An operator replaces our active route, deletes our rule and adds routes of their own. With the periodic full
    reconcile pushed out to an hour, only the netlink notifications can bring the daemon to repair ours; theirs stay."""
    gw = fast_gateway
    proc = start_daemon(gw, "--full-reconcile-seconds", "3600")
    try:
        wait_for(lambda: active_dev(gw) == "vti-aws1", what="tunnel1 active")
        wait_for(lambda: "running: active" in (gw.tmp / "daemon-0.log").read_text(), what="the daemon's loop")
        gw.ip("route", "replace", "10.0.0.0/16", "dev", "eth1", "table", "1519", "proto", "157", "metric", "100")
        gw.ip("rule", "del", "pref", "10100")
        gw.ip("route", "add", "10.99.0.0/16", "dev", "eth1", "table", "1519", "proto", "static")  # theirs
        gw.ip("rule", "add", "pref", "10200", "to", "10.99.0.0/16", "lookup", "main")  # theirs
        wait_for(lambda: active_dev(gw) == "vti-aws1" and "10100:" in gw.ip("rule", "show").stdout,
                 what="our route and rule repaired without the periodic reconcile")
        table = gw.ip("route", "show", "table", "1519").stdout
        assert "10.99.0.0/16 dev eth1 proto static" in table, table
        assert "10200:" in gw.ip("rule", "show").stdout
        log = (gw.tmp / "daemon-0.log").read_text()
        assert "changed by someone else: reconciling" in log, log[-2000:]
        # Our own reconciles notify too: they must not keep the daemon reconciling. Let 3 s of daemon time pass
        # (its state file is rewritten every second): a feedback loop would log about one line per second.
        before = log.count("changed by someone else")
        repaired_at = state(gw).get("updated_at", 0)
        wait_for(lambda: state(gw).get("updated_at", 0) >= repaired_at + 3, what="3 s of daemon time")
        assert (gw.tmp / "daemon-0.log").read_text().count("changed by someone else") <= before + 1
    finally:
        rc = stop(proc)
    assert rc == 0


def test_a_nexthop_replaced_by_hand_is_repaired_without_the_periodic_backstop(fast_gateway):
    """All AWS routes point at our active nexthop; an operator who re-points that one object moves every route at
    once. With the periodic full reconcile an hour away, the daemon still puts it back within seconds."""
    gw = fast_gateway
    proc = start_daemon(gw, "--full-reconcile-seconds", "3600")
    try:
        wait_for(lambda: active_dev(gw) == "vti-aws1", what="tunnel1 active")
        wait_for(lambda: "running: active" in (gw.tmp / "daemon-0.log").read_text(), what="the daemon's loop")
        gw.ip("nexthop", "replace", "id", "1519101", "dev", "vti-aws2", "proto", "157")
        wait_for(lambda: "dev vti-aws1" in gw.ip("nexthop", "show", "id", "1519101").stdout,
                 what="our active nexthop re-pointed at tunnel1 without the periodic reconcile")
        assert "changed by someone else: reconciling" in (gw.tmp / "daemon-0.log").read_text()
    finally:
        rc = stop(proc)
    assert rc == 0
