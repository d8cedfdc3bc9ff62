"""routing.mode bgp in the lab (issue 16): the gateway's FRR (pushed frr.conf, steered by the agent) against the lab's
AWS side running real FRR with AWS's ASN, timers, route limit and no ECMP; bgpd's best path decides where AWS sends.

The lab is brought up once for this module, in bgp mode, after every static-mode e2e test (tests/e2e/conftest.py
orders this module last and stops the session's static lab first). Both directions are timed where the traffic
arrives (lab/flows.py); the bounds printed beside each figure are the physical ones (aws-vpn-facts.md).
"""

from __future__ import annotations

import json
import os
import re
import time

import pytest

from lab import awspeer, driver, flows
from lab.frr import AWS_HOLD_SECONDS
from tests.e2e import conftest, lab_session
from tests.e2e.conftest import (
    GATEWAY_TO_AWS_BOUND_SECONDS,
    VPC_HOST,
    Flows,
    aws_status,
    lab_clock,
    lab_now,
    remove_fault,
    wait_settled,
)

# bgp_lab: part of `make test` (last, tests/e2e/conftest.py); `make test-bgp-lab` runs this module alone
# (lab/README.md "routing.mode bgp" has the figures).
pytestmark = [pytest.mark.vm, pytest.mark.root, pytest.mark.bgp_lab]

TUNNELS = ("tunnel1", "tunnel2")
# The gateway's detection (its probes) plus one BGP UPDATE through bgpd and zebra on both ends, on a loaded TCG VM.
# Issue 16's target: AWS -> VLAN under 3 s for a cut of the tunnel AWS sends on (static mode: AWS's DPD, 30-40 s).
BGP_AWS_TO_GATEWAY_MAX = 3.0
RECOVERY_SECONDS = 300  # a heal or a restart: IKE + CHILD + BGP OPEN on TCG, then the agent's failback hold
AWS_FRR = awspeer.FRR_DIR


def aws_bgp(command: str) -> dict:
    """The AWS side's bgpd, asked directly (not through the route monitor)."""
    r = driver.lab("exec", "root", "vtysh", "--vty_socket", str(AWS_FRR), "-c", command, timeout=120)
    try:
        return json.loads(r.out or "{}")
    except ValueError:
        return {}


def aws_sessions() -> dict[str, str]:
    """bgpd's session states on the AWS side, as its route monitor last read them (within a second; lab/awsrouting.py):
    a file read, where a vtysh in the VM costs seconds of CPU."""
    return dict(aws_status().get("bgp", {}))


def gateway_sessions() -> dict[str, str]:
    status = driver.gateway_status()
    return dict(status.bgp.sessions) if status is not None and status.bgp is not None else {}


def all_established() -> bool:
    aws, gw = aws_sessions(), gateway_sessions()
    return (len(aws) == 2 and set(aws.values()) == {"Established"}
            and sorted(gw) == list(TUNNELS) and set(gw.values()) == {"Established"})


def aws_egress(address: str = "172.16.1.10") -> str:
    """The VTI the AWS namespace's kernel sends the VLAN host's traffic on ("" without a route)."""
    r = driver.lab("exec", "aws", "ip", "-4", "route", "get", address, timeout=120)
    words = r.out.split()
    return words[words.index("dev") + 1] if r.rc == 0 and "dev" in words else ""


COUNT_TABLE = "lab_test_towards_vlan"  # an nftables table in the aws namespace, removed by the test


def count_towards_vlan(vlan_cidr: str = "172.16.0.0/12") -> None:
    """Count, per VTI, what the AWS side sends towards the VLAN (the gateway's probe replies go to its inside
    addresses, not counted)."""
    rules = "".join(f'        oifname "{vti}" ip daddr {vlan_cidr} counter comment "{vti}"\n'
                    for vti in ("vti1", "vti2"))
    script = (f"table inet {COUNT_TABLE} {{\n    chain out {{\n        type filter hook postrouting priority 0;\n"
              f"{rules}    }}\n}}\n")
    driver.lab("exec", "aws", "sh", "-c", 'printf "%s" "$1" | nft -f -', "sh", script, check=True)


def counted_towards_vlan() -> dict[str, int]:
    out = driver.lab("exec", "aws", "nft", "list", "table", "inet", COUNT_TABLE, check=True).out
    return {m.group(2): int(m.group(1)) for m in re.finditer(r'counter packets (\d+) bytes \d+ comment "(\S+)"', out)}


@pytest.fixture(scope="module")
def bgp_lab():
    reason = driver.why_lab_cannot_run()
    if reason:
        pytest.skip(reason)
    if driver.lab("status", timeout=120).rc == 0:
        if os.environ.get("HYBRID_VPN_LAB_REUSE") == "1":
            if driver.aws_status().get("mode") != "bgp":
                pytest.skip("the running lab is in static mode (`lab up --routing bgp` for these tests)")
            yield driver.Result(0, "reused a running bgp lab", "")
            return
        if not lab_session.take_down():
            pytest.skip("a lab is already running (`make lab down` first, or HYBRID_VPN_LAB_REUSE=1 to test it)")
    up = driver.lab("up", "--routing", "bgp", timeout=1800)
    try:
        yield up
    finally:
        down = driver.lab("down", timeout=600)
        assert down.rc == 0, f"lab down failed:\n{down.out}\n{down.err}"


@pytest.fixture
def bgp(bgp_lab):
    """The bgp lab, healthy: both tunnels and both BGP sessions up, the daemon on tunnel1, AWS sending on it."""
    if bgp_lab.rc != 0:
        pytest.fail(f"`lab up --routing bgp` failed (rc {bgp_lab.rc}):\n{bgp_lab.out[-4000:]}\n{bgp_lab.err[-4000:]}")
    remove_fault()
    for tunnel in TUNNELS:
        driver.lab("heal", tunnel, check=True)
    driver.wait_until(lambda: driver.installed_children() >= 2, RECOVERY_SECONDS, "both CHILD_SAs installed")
    wait_settled(RECOVERY_SECONDS, "daemon settled on tunnel1 with both tunnels up")
    driver.wait_until(all_established, RECOVERY_SECONDS, "both BGP sessions Established on both sides", interval=2)
    driver.wait_until(lambda: aws_egress() == "vti1", RECOVERY_SECONDS, "AWS's kernel sending to the VLAN on vti1")
    driver.wait_until(lambda: driver.ping("vlan", VPC_HOST), 180, "VLAN host -> VPC host ping")
    yield driver
    remove_fault()
    for tunnel in TUNNELS:
        driver.lab("heal", tunnel, check=True)


def outages(result: dict[str, flows.Direction], at: float, what: str, bound_to_gw: str,
            slack: float = 1.0) -> tuple[float, float]:
    """Each direction's blackout that began within ``slack`` s of the event at lab-clock ``at`` (0 if none)."""
    to_aws = flows.outage_around(result["gateway_to_aws"], at, slack) or 0.0
    to_gw = flows.outage_around(result["aws_to_gateway"], at, slack) or 0.0
    up, down = result["gateway_to_aws"], result["aws_to_gateway"]
    print(f"\nBGP {what}: gateway -> AWS out {to_aws:.2f} s (bound: the gateway's detection + switch, "
          f"{GATEWAY_TO_AWS_BOUND_SECONDS:.1f} s; {up.received}/{up.sent}), AWS -> gateway out {to_gw:.2f} s "
          f"(bound: {bound_to_gw}; {down.received}/{down.sent})", flush=True)
    return to_aws, to_gw


def test_bgp_sessions_are_established_on_both_tunnels_and_aws_prefers_the_active_one(bgp):
    assert all_established()
    learned = aws_bgp("show bgp ipv4 unicast 172.16.0.0/12 json")
    paths = {p["peer"]["peerId"]: p for p in learned.get("paths", [])}
    # one route per tunnel; the standby's AS path is prepended, so bgpd's best is the active tunnel's
    assert sorted(paths) == ["169.254.10.2", "169.254.11.2"], learned
    best = [peer for peer, p in paths.items() if p.get("bestpath", {}).get("overall")]
    assert best == ["169.254.10.2"], learned
    assert paths["169.254.11.2"]["aspath"]["length"] > paths["169.254.10.2"]["aspath"]["length"]
    status = aws_status()
    assert status["mode"] == "bgp" and status["sending"] == "tunnel1", status
    lab_status = driver.lab("status", check=True).out
    assert lab_status.count("Established") >= 4, lab_status  # both sessions, gateway side and AWS side


def test_steady_state_is_symmetric_aws_sends_on_the_gateways_active_tunnel(bgp):
    assert driver.active_vti() == "vti-aws1"
    count_towards_vlan()
    try:
        result = Flows(10).result()
        sent = counted_towards_vlan()
    finally:
        driver.lab("exec", "aws", "nft", "delete", "table", "inet", COUNT_TABLE)
    to_gw = result["aws_to_gateway"]
    print(f"\nBGP steady state: AWS sent {sent} packets per VTI while the flow sent {to_gw.sent} towards the VLAN",
          flush=True)
    assert to_gw.received >= 0.95 * to_gw.sent
    assert sent["vti1"] >= 0.95 * to_gw.sent, sent
    assert sent["vti2"] == 0, f"AWS sent towards the VLAN on the standby tunnel too: {sent}"


FAULT_FLOW_SECONDS = 15  # 2 s of steady traffic, the fault, then 13 s: several times the 3 s target, on TCG


def test_cut_of_the_tunnel_aws_sends_on_moves_aws_within_seconds(bgp):
    flow = Flows(FAULT_FLOW_SECONDS)
    time.sleep(2)  # a little steady traffic before the fault (pacing, never an assertion)
    cut = lab_clock(driver.lab("break", "tunnel1", check=True))
    result = flow.result()
    egress_after = aws_egress()
    routes = aws_status().get("routes", {})
    to_aws, to_gw = outages(result, cut, "cut of tunnel1 (AWS sends on it)",
                            f"{BGP_AWS_TO_GATEWAY_MAX:.1f} s: the gateway's detection + a BGP UPDATE; static mode: "
                            f"AWS's DPD, {conftest.AWS_DPD_TIMEOUT_SECONDS} s")
    assert egress_after == "vti2", f"AWS still sends on {egress_after!r}; its BGP routes: {routes}"
    assert any(prefix.endswith("/13") and dev == "vti2" for prefix, dev in routes.items()), routes
    assert to_aws < GATEWAY_TO_AWS_BOUND_SECONDS, f"gateway -> AWS out {to_aws:.2f} s"
    assert to_gw < BGP_AWS_TO_GATEWAY_MAX, f"AWS -> gateway out {to_gw:.2f} s"
    driver.lab("heal", "tunnel1", check=True)
    # failback: once tunnel1 is back and the hold is over, the more-specifics are withdrawn and AWS returns to tunnel1
    driver.wait_until(lambda: aws_egress() == "vti1" and not any(p.endswith("/13") for p in aws_status()["routes"]),
                      RECOVERY_SECONDS, "AWS back on vti1 with the more-specifics withdrawn", interval=2)


def test_a_bgp_session_flap_on_the_aws_side_keeps_traffic_and_steering_comes_back(bgp):
    flow = Flows(FAULT_FLOW_SECONDS)
    time.sleep(2)
    at = float(driver.lab("exec", "root", "date", "+%s.%N", check=True).out)
    driver.lab("exec", "root", "vtysh", "--vty_socket", str(AWS_FRR), "-c", "clear bgp 169.254.10.2", check=True)
    result = flow.result()
    _, to_gw = outages(result, at, "AWS clears its tunnel1 session",
                       "~0: AWS falls back to the standby's prepended route at once")
    assert to_gw < BGP_AWS_TO_GATEWAY_MAX, f"AWS -> gateway out {to_gw:.2f} s"
    driver.wait_until(all_established, RECOVERY_SECONDS, "both sessions Established again", interval=2)
    driver.wait_until(lambda: aws_egress() == "vti1", RECOVERY_SECONDS, "AWS back on vti1", interval=2)


def aws_session(address: str) -> dict:
    return aws_bgp(f"show bgp neighbors {address} json").get(address, {})


def test_aws_withdraws_a_tunnels_bgp_routes_the_moment_ike_declares_it_down(bgp):
    """aws-vpn-facts.md: DOWN by IKE (here an endpoint replacement with an IKE DELETE) removes that tunnel's routes at
    once; they do not wait for the BGP hold timer (30 s). The lab's AWS side sets that tunnel's VTI down
    (lab.awsrouting.vti_link_commands), so its bgpd resets the session for the interface going down."""
    window = 15  # the endpoint stays unreachable this long: the gateway cannot bring tunnel1 back meanwhile
    proc = driver.lab_popen("maintenance", "tunnel1", str(window))
    try:
        down = driver.wait_until(lambda: not aws_status().get("tunnels", {}).get("tunnel1", {}).get("up", True)
                                 and aws_status(), 120, "AWS's IKE declaring tunnel1 DOWN", interval=0.5)
        driver.wait_until(lambda: aws_sessions().get("169.254.10.2") not in (None, "Established"), 60,
                          "AWS's tunnel1 session down", interval=0.5)
        gone_at = lab_now()
        session = aws_session("169.254.10.2")
        routes = aws_status().get("routes", {})
    finally:
        out, err = proc.communicate(timeout=window + 600)
    assert proc.returncode == 0, f"lab maintenance failed:\n{out}\n{err}"
    print(f"\nBGP: AWS's tunnel1 session {session.get('bgpState')} ({session.get('lastResetDueTo')}) "
          f"{gone_at - down['tunnels']['tunnel1']['since']:.1f} s after IKE declared it DOWN (at most the polling "
          f"here; the hold timer would take up to {AWS_HOLD_SECONDS} s)",
          flush=True)
    # bgpd's reason is the link going down, not the hold timer's expiry (tests/test_bgp_netns.py shows both strings)
    assert session.get("lastResetDueTo") in ("Interface down", "Waiting for NHT"), session
    assert "vti1" not in routes.values(), f"AWS still has BGP routes through the DOWN tunnel: {routes}"
    driver.wait_until(all_established, RECOVERY_SECONDS, "both sessions Established after the maintenance", interval=2)


def test_a_restart_of_frr_on_the_gateway_restores_sessions_and_steering(bgp):
    flow = Flows(40)
    time.sleep(2)
    at = float(driver.lab("exec", "root", "date", "+%s.%N", check=True).out)
    t0 = time.monotonic()
    driver.lab("restart", "frr", check=True, timeout=600)
    restarted = time.monotonic() - t0
    driver.wait_until(all_established, RECOVERY_SECONDS, "both sessions Established after the restart", interval=1)
    established = time.monotonic() - t0
    driver.wait_until(lambda: aws_egress() == "vti1", RECOVERY_SECONDS, "AWS back on vti1", interval=1)
    steered = time.monotonic() - t0
    result = flow.result()
    # the sessions drop somewhere within the restart (AWS then has no route towards the VLAN until they are back):
    # the blackout that began while it ran
    _, to_gw = outages(result, at, "restart of frr on the gateway",
                       "the restart + BGP OPEN (no graceful restart: AWS withdraws the sessions' routes)",
                       slack=restarted)
    print(f"BGP restart of frr: `lab restart frr` took {restarted:.1f} s; sessions Established {established:.1f} s, "
          f"AWS on vti1 {steered:.1f} s after its start", flush=True)
    status = driver.gateway_status()
    assert status is not None and status.bgp is not None and status.bgp.steering is not None
    assert status.bgp.steering.advertise.get("tunnel1") != status.bgp.steering.advertise.get("tunnel2")
    assert driver.ping("vlan", VPC_HOST)
