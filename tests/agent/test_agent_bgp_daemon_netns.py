"""The failover daemon steering AWS through real FRR (routing.mode bgp, issue 16), without the VM (root).

The daemon runs in the gateway namespace with real ICMP probes over veth 'tunnels' (tests/agent/conftest.py); the
gateway's bgpd runs the rendered frr.conf, the 'AWS' namespace an FRR with AWS's ASN, timers and no ECMP, its zebra
installing FRR's best path. When the active tunnel's data path dies (the AWS side drops everything arriving on it, as
ESP loss; the link stays up), the daemon's own verdict must move AWS's return path: more-specific halves over the
healthy tunnel, long before AWS's BGP hold time (30 s); failback withdraws them after the (shortened) hold.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from agent_testlib import write_config
from frr_testlib import FrrInstance, aws_egress, aws_frr_conf, best, frr_missing
from test_agent_daemon_netns import break_tunnel, heal_tunnel, start_daemon, stop
from testlib import wait_for

from hostconfig.agent.status_contract import StatusReport
from hostconfig.plan import GatewayPlan
from hostconfig.render import render_frr_conf

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests" / "fixtures" / "host_config.default.json"
VLAN_HOST = "172.16.1.10"


def test_daemon_moves_awss_return_path_when_the_active_tunnel_dies(gateway):
    if reason := frr_missing():
        pytest.skip(reason)
    obj = json.loads(FIXTURE.read_text())
    obj["routing"] = {"mode": "bgp", "customer_asn": 65000, "amazon_side_asn": 64512}
    plan = GatewayPlan.from_host_config(obj)
    assert [(t.interface, str(t.aws_inside_ip)) for t in plan.tunnels] == [
        (t["interface"], t["aws_inside_ip"]) for t in gateway.data["tunnels"]]  # the same tunnels as the daemon's
    ends = {t.name: str(t.gateway_inside_ip) for t in plan.tunnels}
    started: list[FrrInstance] = []
    proc = None
    try:
        frr_gw = FrrInstance(gateway.ns, render_frr_conf(plan))
        started.append(frr_gw)
        data = gateway.data
        data["probe"].update({"interval_ms": 100, "timeout_ms": 300, "down_after": 3, "up_after": 3,
                              "failback_hold_seconds": 2})
        data["bgp"] = {"customer_asn": 65000, "vty_socket": str(frr_gw.dir)}
        write_config(gateway.tmp, data)
        proc = start_daemon(gateway)
        log = gateway.tmp / "daemon-0.log"
        wait_for(lambda: "running: active" in log.read_text(), timeout=120, what="the daemon's loop")
        # The daemon put the inside addresses on the links; now both bgpd can bind and connect.
        frr_gw.start()
        frr_aws = FrrInstance(gateway.aws, aws_frr_conf(plan))
        started.append(frr_aws)
        frr_aws.start()
        wait_for(lambda: list(frr_aws.neighbor_states().values()) == ["Established"] * 2, timeout=120,
                 what="both sessions Established")
        wait_for(lambda: best(frr_aws, VLAN_HOST) == ("172.16.0.0/12", ends["tunnel1"])
                 and aws_egress(gateway.aws, VLAN_HOST) == "aws1", timeout=60, what="AWS on the primary tunnel")
        # Until FRR ran, the daemon's steering failed, was logged and retried (that is the design); from now on none.
        frr_up_at = len(log.read_text())

        t0 = time.monotonic()
        break_tunnel(gateway, 1)
        wait_for(lambda: aws_egress(gateway.aws, VLAN_HOST) == "aws2", timeout=60, interval=0.01,
                 what="AWS's return path on tunnel2")
        moved = time.monotonic() - t0
        print(f"\ndata path of tunnel1 dead -> AWS side sends on tunnel2 after {moved * 1000:.0f} ms (probes "
              "3 x 100 ms + kernel switch + bgpd vty call + BGP UPDATE + AWS-side zebra)")
        assert best(frr_aws, VLAN_HOST) == ("172.16.0.0/13", ends["tunnel2"])
        assert "bgp: tunnel2 (neighbor 169.254.11.1) now hybrid-vpn-primary-more-specific" in log.read_text()

        t0 = time.monotonic()
        heal_tunnel(gateway, 1)
        wait_for(lambda: aws_egress(gateway.aws, VLAN_HOST) == "aws1"
                 and frr_aws.json("show bgp ipv4 unicast 172.16.0.0/13 json") == {}, timeout=90, interval=0.05,
                 what="failback: AWS on tunnel1, the halves withdrawn")
        print(f"tunnel1 healed -> AWS back on tunnel1 after {(time.monotonic() - t0) * 1000:.0f} ms (3 good probes "
              "+ 2 s failback hold + BGP)")
        assert (time.monotonic() - t0) >= 2.0  # not before the failback hold
        assert "bgp steering not applied" not in log.read_text()[frr_up_at:]
        # What the daemon reports: its state file and metrics say what each tunnel advertises.
        wait_for(lambda: (json.loads((gateway.tmp / "state" / "daemon-state.json").read_text()).get("bgp") or {})
                 .get("advertise") == {"tunnel1": "hybrid-vpn-primary", "tunnel2": "hybrid-vpn-standby"},
                 timeout=30, what="the state file's bgp section")
        metrics = Path(data["paths"]["metrics_file"])
        wait_for(lambda: 'hybrid_vpn_bgp_advertisement{tunnel="tunnel1",route_map="hybrid-vpn-primary"} 1'
                 in metrics.read_text(), timeout=30, what="the bgp metrics")
        assert "hybrid_vpn_bgp_steering_changes_total 4" in metrics.read_text()  # 2 at failover + 2 at failback
        # vpnctl status: the live sessions from bgpd and the daemon's steering, in JSON and text.
        env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO)}
        base = ["ip", "netns", "exec", gateway.ns, sys.executable, "-m", "hostconfig.agent.cli", "status", "--config",
                str(gateway.config)]
        report = StatusReport.loads(subprocess.run([*base, "--json"], capture_output=True, text=True, env=env,
                                                   timeout=120).stdout)
        assert report.bgp is not None and report.bgp.error is None
        assert report.bgp.sessions == {"tunnel1": "Established", "tunnel2": "Established"}
        assert report.bgp.steering.advertise == {"tunnel1": "hybrid-vpn-primary", "tunnel2": "hybrid-vpn-standby"}
        text = subprocess.run(base, capture_output=True, text=True, env=env, timeout=120).stdout
        assert "bgp sessions: tunnel1 Established, tunnel2 Established" in text
        assert "bgp steering (AS 65000): tunnel1 hybrid-vpn-primary, tunnel2 hybrid-vpn-standby" in text
        # vpnctl doctor: one check per tunnel's BGP session (the other checks are test_doctor_netns's business).
        doctor = subprocess.run(["ip", "netns", "exec", gateway.ns, sys.executable, "-m", "hostconfig.agent.cli",
                                 "doctor", "--config", str(gateway.config), "--tunnel-links", "given",
                                 "--probe-timeout", "5", "--json"], capture_output=True, text=True, env=env,
                                timeout=120)
        checks = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}
        assert checks["bgp tunnel1"]["status"] == "ok" and checks["bgp tunnel2"]["status"] == "ok", doctor.stdout
        assert checks["bgp tunnel1"]["found"] == "Established, advertising hybrid-vpn-primary"
    finally:
        if proc is not None:
            stop(proc)
        for frr in reversed(started):
            frr.stop()
