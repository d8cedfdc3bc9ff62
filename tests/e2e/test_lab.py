"""End to end, in the lab: the real chain (program -> renderer -> SSH delivery -> charon + vpnctl) against the
emulated AWS side, on a real kernel data plane (in the lab VM when the host kernel has no VTI/ESP).

Every wait is on a condition with a generous deadline (TCG is ~7x slower than the host); the only time bound asserted
is a lower one (damped failback cannot happen before its hold time).
"""

from __future__ import annotations

import re
import time

import pytest

from lab import driver

pytestmark = [pytest.mark.vm, pytest.mark.root]

VPC_HOST = "10.0.4.85"
VLAN_HOST = "172.16.1.10"
AWS_CIDR_RE = re.compile(r"\b10\.0\.\d+\.\d+\b")
FAILBACK_HOLD_SECONDS = 20  # stacks/Pulumi.lab.yaml keeps the default failover.failback_hold_seconds


def test_both_tunnels_up(lab_up):
    # Counted per tunnel (lab/driver.py), so this is exactly "both tunnels have an installed CHILD_SA". A second,
    # separate read raced with a CHILD_SA being re-established right after `lab up` in a CI rehearsal (1 == 2).
    driver.wait_until(lambda: driver.installed_children() == 2, 300, "both tunnels with an installed CHILD_SA")
    status = driver.lab("status", check=True).out
    assert "tunnel1" in status and "tunnel2" in status


def test_traffic_both_ways(lab):
    assert lab.ping("vlan", VPC_HOST, count=3)
    assert lab.ping("vpc", VLAN_HOST, count=3)


def capture_on_gateway_public_nic(seconds: int, during, tail_seconds: float = 5.0) -> list[str]:
    """tcpdump on the gateway's VPC NIC (eth0) while `during()` runs and for ``tail_seconds`` after it (traffic still
    flowing then is captured too); returns the decoded packet lines. ``seconds`` is the capture's limit: tcpdump is
    stopped when `during()` is done, not made to run out its limit (that cost the boot guard test 3 idle minutes)."""
    pcap = "/run/lab-test-capture.pcap"
    cap = driver.lab_popen("exec", "gw", "timeout", str(seconds), "tcpdump", "-Z", "root", "-i", "eth0", "-n", "-U",
                           "-w", pcap)
    try:
        driver.wait_until(lambda: driver.lab("exec", "gw", "test", "-s", pcap).rc == 0, 120, "tcpdump started")
        during()
        time.sleep(tail_seconds)  # a capture window, not a wait for a condition
    finally:
        # SIGINT: tcpdump flushes and exits. By name (-x), not by command line: the lab's exec wrappers carry any
        # pattern in theirs. The test's capture is the only tcpdump in the lab VM.
        driver.lab("exec", "gw", "pkill", "-INT", "-x", "tcpdump")
        cap.wait(timeout=seconds + 300)
    lines = driver.lab("exec", "gw", "tcpdump", "-r", pcap, "-n", check=True).out.splitlines()
    driver.lab("exec", "gw", "rm", "-f", pcap)
    return lines


def test_public_nic_carries_only_ipsec_for_aws_traffic(lab):
    def traffic():
        assert lab.ping("vlan", VPC_HOST, count=5)
        assert lab.ping("vpc", VLAN_HOST, count=5)

    lines = capture_on_gateway_public_nic(40, traffic)
    clear = [line for line in lines if AWS_CIDR_RE.search(line)]
    assert not clear, "clear-text packets to/from the AWS CIDR on the public NIC:\n" + "\n".join(clear[:10])
    # positive control: the capture did see the tunnel traffic (NAT-T: UDP 4500 between the gateway and AWS)
    encapsulated = [line for line in lines if ".4500" in line and "198.51.100." in line]
    assert len(encapsulated) >= 10, f"expected ESP-in-UDP packets in the capture, got:\n{lines[:20]}"


@pytest.mark.parametrize("aws_prefers", ["tunnel1", "tunnel2"])
def test_break_active_tunnel_moves_traffic_then_damped_failback(lab, aws_prefers):
    lab.lab("prefer", aws_prefers, check=True)
    assert lab.wait_until(lambda: lab.active_vti() == "vti-aws1", 120, "tunnel1 active (primary)")
    lab.lab("break", "tunnel1", check=True)
    try:
        lab.wait_until(lambda: lab.active_vti() == "vti-aws2", 120, "the gateway switched to tunnel2")
        lab.wait_until(lambda: lab.ping("vlan", VPC_HOST), 120, "traffic through tunnel2")
        assert lab.ping("vpc", VLAN_HOST, count=2)
    finally:
        lab.lab("heal", "tunnel1", check=True)
    healed = time.monotonic()
    lab.wait_until(lambda: lab.active_vti() == "vti-aws1", 300, "failback to tunnel1", interval=1)
    assert time.monotonic() - healed >= FAILBACK_HOLD_SECONDS, "failback was not damped (hold time not respected)"
    assert lab.ping("vlan", VPC_HOST, count=2)


def test_both_tunnels_down_leaks_nothing_in_clear(lab):
    lab.lab("break", "tunnel1", check=True)
    lab.lab("break", "tunnel2", check=True)
    try:
        lab.wait_until(lambda: not lab.ping("vlan", VPC_HOST), 120, "traffic stops with both tunnels broken")

        def traffic():
            assert not lab.ping("vlan", VPC_HOST, count=5)

        lines = capture_on_gateway_public_nic(30, traffic)
        clear = [line for line in lines if AWS_CIDR_RE.search(line)]
        assert not clear, "with both tunnels down, clear text left the public NIC:\n" + "\n".join(clear[:10])
    finally:
        lab.lab("heal", "tunnel1", check=True)
        lab.lab("heal", "tunnel2", check=True)
    lab.wait_until(lambda: lab.ping("vlan", VPC_HOST), 300, "traffic after healing both tunnels", interval=1)


def test_charon_restart_recovers(lab):
    lab.lab("restart", "charon", check=True)
    lab.wait_until(lambda: lab.installed_children() >= 2, 300, "both CHILD_SAs after a charon restart")
    lab.wait_until(lambda: lab.ping("vlan", VPC_HOST), 300, "traffic after a charon restart")


def test_agent_restart_recovers(lab):
    lab.lab("restart", "agent", check=True)
    lab.wait_until(lambda: "daemon: running" in lab.lab("status").out, 300, "vpnctl daemon running again")
    lab.wait_until(lambda: lab.ping("vlan", VPC_HOST), 300, "traffic after an agent restart")
    assert lab.active_vti() == "vti-aws1"
