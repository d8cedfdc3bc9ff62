"""Fault matrix (issue 7, part 2), end to end in the lab, each with paced traffic VLAN host -> VPC host running.

Faults are injected where they happen in real life: on the "internet" between the gateway and AWS (nftables in the
lab's `inet` namespace, classified by the first 4 bytes after the UDP header: NAT-T puts ESP and IKE both on UDP 4500,
ESP starts with its non-zero SPI, IKE with a 4-byte zero non-ESP marker), or on the gateway itself (kill -9, a full
state dir, a missing VICI socket, an operator's stray route).

The AWS side behaves like AWS (issue 12): it moves its return traffic only when a tunnel is DOWN by IKE. A fault that
leaves IKE alive (ESP dropped) therefore never moves AWS: the gateway-side scenarios that drop tunnel1's ESP first make
AWS send on tunnel2 (`lab prefer tunnel2`), so they measure the gateway's reaction; the same fault on the tunnel AWS
sends on is test_lab_aws_faithful.py's.

Asserted is what is deterministic: traffic recovers, the final routes in table 1519 and the daemon's active tunnel, the
switch count within bounds, the daemon process never replaced. Loss and the longest gap are printed for the report
(`pytest -s`), never asserted against a time: the host is a loaded 2-core machine running QEMU TCG. Each test leaves
the lab as it found it (faults removed, daemon settled on tunnel1 with both tunnels up).
"""

from __future__ import annotations

import re
import shlex
import time
from collections.abc import Callable

import pytest

from hostconfig import gateway_paths as gp
from lab import driver, paths
from tests.e2e.conftest import (
    FAULT_TABLE,
    TUNNEL1_OUTSIDE,
    VPC_HOST,
    PingReport,
    Traffic,
    aws_status,
    daemon_state,
    drop_esp_of,
    fault_counters,
    lab_exec,
    lab_now,
    nft_inet,
    own_routes,
    remove_fault,
    sas,
    settled,
    wait_aws_sending,
    wait_settled,
)

pytestmark = [pytest.mark.vm, pytest.mark.root]

AWS_CIDR = "10.0.0.0/16"
FAILBACK_HOLD_SECONDS = 20  # the default failover.failback_hold_seconds the lab keeps
BREAK_TABLE = "lab_break_tunnel1"  # the table `lab break tunnel1` adds; `lab heal tunnel1` removes it
DAEMON_LOG = paths.STATE_DIR / "logs" / "gw-vpnctl-daemon.log"  # seen from the VM (`lab exec root`)
PID_DIR = paths.STATE_DIR / "pids"
STATE_DIR = gp.STATE_DIR.path  # agent.json paths.state_dir on the gateway
VICI_SOCKET = "/run/charon.vici"
RUN_FILLER = "/run/lab-filler"  # fills the gateway's /run in the state-dir-full scenario
METRICS_FILE = "/var/lib/prometheus/node-exporter/hybrid_vpn.prom"
UNREACHABLE_METRIC = 4294967295


# --- helpers --------------------------------------------------------------------------------------------------------

def switches() -> int:
    return int(daemon_state().get("switches_total", -1))


def daemon_pid() -> int | None:
    r = lab_exec("root", "cat", str(PID_DIR / "gw-vpnctl-daemon"), check=False)
    return int(r.out) if r.rc == 0 and r.out.strip().isdigit() else None


def process_alive(pid: int) -> bool:
    return lab_exec("root", "kill", "-0", str(pid), check=False).rc == 0


def log_size() -> int:
    r = lab_exec("root", "stat", "-c", "%s", str(DAEMON_LOG), check=False)
    return int(r.out) if r.rc == 0 else 0


def log_since(offset: int) -> str:
    return lab_exec("root", "tail", "-c", f"+{offset + 1}", str(DAEMON_LOG), check=False).out


def table_routes() -> list[tuple[str, int, str]]:
    """(destination, metric, dev or type) of every route in the agent's table."""
    rows = []
    for line in own_routes():
        words = line.split()
        metric = int(words[words.index("metric") + 1]) if "metric" in words else 0
        if words[0] == "unreachable":
            rows.append((words[1], metric, "unreachable"))
        else:
            rows.append((words[0], metric, words[words.index("dev") + 1]))
    return sorted(rows)


def assert_routes(active: str, standby: str | None) -> None:
    want = [(AWS_CIDR, 100, active)] + ([(AWS_CIDR, 200, standby)] if standby else [])
    want.append((AWS_CIDR, UNREACHABLE_METRIC, "unreachable"))
    assert table_routes() == sorted(want), "table 1519:\n" + "\n".join(own_routes())


def own_rules() -> list[str]:
    return [line for line in lab_exec("gw", "ip", "-4", "rule", "show").out.splitlines()
            if line.startswith("10100:")]


def report(scenario: str, flow: PingReport, switched: int, final: str) -> None:
    print(f"\nFAULT-MATRIX {scenario}: sent {flow.sent} lost {flow.lost} longest gap {flow.longest_gap_seconds} s; "
          f"switches {switched}; final: {final}", flush=True)


def read_metrics() -> str:
    return lab_exec("gw", "cat", METRICS_FILE, check=False).out


def wait_ping(what: str, timeout: float = 180) -> None:
    driver.wait_until(lambda: driver.ping("vlan", VPC_HOST), timeout, what)


def fail_tunnel1_esp(undo: list[Callable[[], object]], what: str) -> None:
    """Drop tunnel1's ESP (IKE alive; undone by the matrix fixture), wait for the daemon's switch to tunnel2 (`what`)
    and for traffic through it. AWS sends on tunnel2 first: its DPD is satisfied by IKE, so it would keep sending on
    tunnel1 into the dropped ESP (the `lab` fixture makes it prefer tunnel1 again for the next test)."""
    wait_aws_sending("tunnel2", 120)
    drop_esp_of(TUNNEL1_OUTSIDE)
    undo.append(remove_fault)
    driver.wait_until(lambda: driver.active_vti() == "vti-aws2", 120, what)
    wait_ping("traffic through tunnel2")


def let_traffic_start() -> None:
    time.sleep(3)  # pacing only (the `lab exec ping` is starting inside the VM), never an assertion


@pytest.fixture
def matrix(lab):
    """Give the test (started settled by the `lab` fixture) a list of undo actions, run them (newest first) and
    settle again afterwards."""
    undo: list[Callable[[], object]] = []
    try:
        yield undo
    finally:
        errors = []
        for action in reversed(undo):
            try:
                action()
            except Exception as exc:  # noqa: BLE001 - every undo runs, the first failure is reported below
                errors.append(exc)
        remove_fault()
        for tunnel in ("tunnel1", "tunnel2"):
            driver.lab("heal", tunnel, check=True)
        driver.wait_until(lambda: driver.installed_children() >= 2, 300, "both CHILD_SAs installed after the test")
        wait_settled(300, "daemon settled on tunnel1 again after the test")
        if errors:
            raise errors[0]


# --- 1. ESP dead, IKE alive -----------------------------------------------------------------------------------------

def test_esp_dead_ike_alive_fails_over_by_probes_then_damped_failback(matrix):
    before = switches()
    flow = Traffic(45)
    let_traffic_start()
    fail_tunnel1_esp(matrix, "failover to tunnel2 (probes)")
    # The probes decided (IKE is alive: charon sees nothing). The gateway then rebuilds tunnel1 itself after its repair
    # hold (delete its IKE_SA, initiate again): an installed CHILD_SA that carries nothing is a failure to heal, and
    # the rebuild is what makes a real AWS, whose DPD IKE satisfies, move off it. Logged and counted in the state.
    assert daemon_state()["active"] == "tunnel2"

    def rebuilds() -> int:
        repair = daemon_state().get("tunnels", {}).get("tunnel1", {}).get("repair") or {}
        return repair.get("by_kind", {}).get("reestablish", 0)

    driver.wait_until(lambda: rebuilds() >= 1, 120, "the gateway's rebuild of tunnel1", interval=1)
    counters = fault_counters()
    remove_fault()
    healed = time.monotonic()
    driver.wait_until(lambda: driver.active_vti() == "vti-aws1", 300, "failback to tunnel1", interval=1)
    waited = time.monotonic() - healed
    result = flow.result()
    switched = switches() - before
    report("1 ESP dead/IKE alive", result, switched, f"failback {waited:.1f} s after heal; active "
           f"{daemon_state().get('active')}; routes {table_routes()}; counters {counters}")
    # Only the gateway's ESP is sure to be dropped: AWS sends on tunnel2 (fail_tunnel1_esp), and the probes' requests
    # never reach it, so nothing may come back on tunnel1 to drop.
    assert counters["esp_to_aws"] > 0, f"the fault dropped no ESP: {counters}"
    assert waited >= FAILBACK_HOLD_SECONDS, "failback was not damped (hold time not respected)"
    assert switched == 2, f"expected a failover and one failback, saw {switched} switches"
    assert_routes("vti-aws1", "vti-aws2")
    assert flow.tail_received(60) >= 0.9, f"traffic did not flow again at the end:\n{result.raw_tail}"


# --- 2. IKE dead, ESP alive -----------------------------------------------------------------------------------------

IKE_DEAD_WINDOW_SECONDS = 30  # three times the gateway's dpd_delay (10 s)


def test_ike_dead_esp_alive_keeps_traffic_and_the_tunnel(matrix):
    """charon sends DPD only on an idle SA (no inbound IKE/ESP for dpd_delay): with ESP flowing, a dead IKE path is
    invisible until the next IKE exchange (a rekey). The data path and the daemon must not care meanwhile."""
    before = switches()
    flow = Traffic(IKE_DEAD_WINDOW_SECONDS)
    let_traffic_start()
    nft_inet(f"""table inet {FAULT_TABLE} {{
    chain forward {{
        type filter hook forward priority -10;
        ip daddr {TUNNEL1_OUTSIDE} udp dport 500 counter drop comment "ike500_to_aws"
        ip saddr {TUNNEL1_OUTSIDE} udp sport 500 counter drop comment "ike500_from_aws"
        ip daddr {TUNNEL1_OUTSIDE} udp dport 4500 @th,64,32 0 counter drop comment "ike_to_aws"
        ip saddr {TUNNEL1_OUTSIDE} udp sport 4500 @th,64,32 0 counter drop comment "ike_from_aws"
        ip daddr {TUNNEL1_OUTSIDE} udp dport 4500 @th,64,32 != 0 counter comment "esp_to_aws"
        ip saddr {TUNNEL1_OUTSIDE} udp sport 4500 @th,64,32 != 0 counter comment "esp_from_aws"
    }}
}}""")
    matrix.append(remove_fault)
    result = flow.result()
    counters = fault_counters()
    state = daemon_state()
    switched = switches() - before
    report("2 IKE dead/ESP alive", result, switched, f"active {state.get('active')}; routes {table_routes()}; "
           f"counters {counters}")
    # positive control: the classifier saw tunnel1's ESP pass the path all along
    assert counters.get("esp_to_aws", 0) >= IKE_DEAD_WINDOW_SECONDS * 10 and counters.get("esp_from_aws", 0) > 0
    assert switched == 0 and state.get("active") == "tunnel1", state
    assert_routes("vti-aws1", "vti-aws2")
    assert result.sent >= IKE_DEAD_WINDOW_SECONDS * 20 * 0.9, result.raw_tail
    assert result.lost <= 2, f"{result.lost} packets lost with ESP alive:\n{result.raw_tail}"
    assert sas("gw")["tunnel1"]["installed"] >= 1


# --- 3. a flapping tunnel -------------------------------------------------------------------------------------------

FLAPS = 10
FLAP_DOWN_SECONDS = 3
FLAP_UP_SECONDS = 3


def test_flapping_tunnel_does_not_flap_routes(matrix):
    """10 flaps in a minute (3 s down / 3 s up), timed inside the VM by one shell loop. Probes see every flap (3 misses
    down, 5 replies up), but the failback hold (20 s healthy) never elapses, so the gateway stays on tunnel2. AWS,
    sending on tunnel1, never moves: 3 s of silence never reach its DPD timeout (30 s), so about half of the replies
    sent during the flapping are lost on tunnel1, as on AWS."""
    before = switches()
    log_at = log_size()
    cycle = FLAP_DOWN_SECONDS + FLAP_UP_SECONDS
    flow = Traffic(FLAPS * cycle + 10)
    let_traffic_start()
    rule = (f"table inet {BREAK_TABLE} {{\n chain forward {{\n  type filter hook forward priority -10;\n"
            f"  ip daddr {TUNNEL1_OUTSIDE} drop\n  ip saddr {TUNNEL1_OUTSIDE} drop\n }}\n}}")
    loop = (f"for i in $(seq {FLAPS}); do echo {shlex.quote(rule)} | nft -f - || exit 1; sleep {FLAP_DOWN_SECONDS}; "
            f"nft delete table inet {BREAK_TABLE} || exit 1; sleep {FLAP_UP_SECONDS}; done")
    flap_started = lab_now()
    flapper = driver.lab_popen("exec", "inet", "timeout", str(FLAPS * cycle + 120), "sh", "-c", loop)
    matrix.append(lambda: flapper.wait(timeout=FLAPS * cycle + 300))
    flapper.wait(timeout=FLAPS * cycle + 300)
    during = switches() - before
    flap_log = log_since(log_at)
    healed = time.monotonic()
    driver.wait_until(lambda: driver.active_vti() == "vti-aws1", 300, "failback to tunnel1 after the flapping",
                      interval=1)
    waited = time.monotonic() - healed
    result = flow.result()
    total = switches() - before
    seen_down = len(re.findall(r"tunnel1 down: ", flap_log))
    report("3 flapping tunnel1", result, total, f"{FLAPS} flaps, probes saw tunnel1 go down {seen_down} times, "
           f"{during} switch(es) during the flapping, failback {waited:.1f} s after the last heal; "
           f"routes {table_routes()}")
    assert flapper.returncode == 0, "the flap loop failed"
    assert seen_down >= FLAPS // 2, f"the probes did not see the flaps:\n{flap_log[-3000:]}"
    assert during <= 2, f"{during} switches during {FLAPS} flaps: routes flapped"
    assert total <= 3
    assert_routes("vti-aws1", "vti-aws2")
    aws = aws_status()
    assert aws["sending"] == "tunnel1" and aws["tunnels"]["tunnel1"]["since"] < flap_started, \
        f"AWS moved or saw tunnel1 DOWN during 3 s flaps (its DPD needs 30 s of silence): {aws}"
    # down 3 s of every 6 on the return path: about half of the flapping minute lost, none of the rest
    assert result.received >= result.sent * 0.35, f"traffic did not flow half of the time:\n{result.raw_tail}"
    assert flow.tail_received(60) >= 0.9, f"traffic did not flow again at the end:\n{result.raw_tail}"


# --- 4. charon killed -----------------------------------------------------------------------------------------------

def test_charon_sigkill_and_restart(matrix):
    agent = daemon_pid()
    assert agent is not None and process_alive(agent)
    before = switches()
    flow = Traffic(60)
    let_traffic_start()
    lab_exec("root", "sh", "-c", f"kill -9 $(cat {PID_DIR / 'gw-charon'})")
    killed = time.monotonic()
    driver.lab("restart", "charon", check=True)
    driver.wait_until(lambda: driver.installed_children() >= 2, 300, "both CHILD_SAs after charon was killed")
    wait_ping("traffic after charon was killed and restarted", 300)
    driver.wait_until(lambda: daemon_state().get("vici") == "connected", 300, "the daemon reconnected to VICI")
    recovered = time.monotonic() - killed
    result = flow.result()
    state = daemon_state()
    switched = switches() - before
    report("4 charon SIGKILL+restart", result, switched, f"SAs + VICI back {recovered:.1f} s after the kill; "
           f"active {state.get('active')}; routes {table_routes()}")
    assert daemon_pid() == agent and process_alive(agent), "the agent died with charon"
    wait_settled(300, "daemon settled on tunnel1")
    assert_routes("vti-aws1", "vti-aws2")
    assert flow.tail_received(60) >= 0.9, f"traffic did not flow again at the end:\n{result.raw_tail}"


# --- 5. agent killed right after a switch ---------------------------------------------------------------------------

def test_agent_sigkill_after_a_switch_rebuilds_from_kernel_and_vici(matrix):
    wait_aws_sending("tunnel2", 120)  # see fail_tunnel1_esp
    flow = Traffic(30)
    let_traffic_start()
    drop_esp_of(TUNNEL1_OUTSIDE)
    matrix.append(remove_fault)
    driver.wait_until(lambda: driver.active_vti() == "vti-aws2", 120, "the switch to tunnel2", interval=0.2)
    agent = daemon_pid()
    lab_exec("gw", "kill", "-9", str(agent))
    matrix.append(lambda: None if (daemon_pid() and process_alive(daemon_pid())) else
                  driver.lab("restart", "agent", check=True))
    driver.wait_until(lambda: not process_alive(agent), 60, "the agent gone")
    driver.lab("restart", "agent", check=True)
    restarted = daemon_pid()
    driver.wait_until(lambda: daemon_state().get("pid") == restarted, 300, "the new daemon writing its state")
    state = driver.wait_until(lambda: (s := daemon_state()).get("active") == "tunnel2" and s.get("up") == ["tunnel2"]
                              and s, 300, "the new daemon on tunnel2 with tunnel1 down")
    wait_ping("traffic through tunnel2 after the agent restart")
    assert_routes("vti-aws2", None)
    assert len(own_rules()) == 1, own_rules()
    result = flow.result()
    report("5 agent SIGKILL after switch", result, state.get("switches_total"),
           f"restarted daemon: active {state.get('active')}, up {state.get('up')} ({state.get('reason')}); "
           f"routes {table_routes()}; rules {own_rules()}")
    assert restarted != agent
    assert flow.tail_received(60) >= 0.9, f"traffic did not flow again at the end:\n{result.raw_tail}"


# --- 6. stray routes and rules by an operator -----------------------------------------------------------------------

FOREIGN_DST = "203.0.113.128/25"  # documentation range, never sent to
FOREIGN_RULE = f"pref 10200 to {FOREIGN_DST} lookup main"


def test_operator_strays_repaired_only_where_owned(matrix):
    log_at = log_size()
    flow = Traffic(60)
    let_traffic_start()

    def remove_foreign() -> None:
        lab_exec("gw", "sh", "-c", f"ip rule del {FOREIGN_RULE}; ip route del {FOREIGN_DST}; true", check=False)

    matrix.append(remove_foreign)
    lab_exec("gw", "sh", "-ec", "ip rule del pref 10100\n"
             f"ip route replace {AWS_CIDR} table 1519 metric 100 proto 157 dev eth1\n"
             f"ip route add {FOREIGN_DST} via 10.8.0.1 dev eth0\n"
             f"ip rule add {FOREIGN_RULE}")
    broken = time.monotonic()
    # (No look at the damage here: the daemon may have repaired it before a `lab exec` returns.) Netlink notifications
    # make it reconcile within a second, the periodic full reconcile (30 s) being the backstop; it repairs what it
    # owns, and nothing else.
    driver.wait_until(lambda: len(own_rules()) == 1 and driver.active_vti() == "vti-aws1", 180,
                      "the daemon repairing its rule and route", interval=1)
    repaired = time.monotonic() - broken
    wait_ping("traffic after the repair")
    result = flow.result()
    main = lab_exec("gw", "ip", "-4", "route", "show", FOREIGN_DST).out
    rules = lab_exec("gw", "ip", "-4", "rule", "show").out
    daemon_log = log_since(log_at)
    repair_log = [line for line in daemon_log.splitlines() if "reconcile applied" in line]
    report("6 operator strays", result, 0, f"repaired {repaired:.1f} s after the damage: {repair_log}; "
           f"routes {table_routes()}")
    assert "changed by someone else: reconciling" in daemon_log, daemon_log[-3000:]
    assert any("add_rule pref 10100" in line for line in repair_log), repair_log
    assert "via 10.8.0.1 dev eth0" in main, f"the operator's route in main was touched: {main!r}"
    assert "10200:" in rules and FOREIGN_DST in rules, f"the operator's rule was touched:\n{rules}"
    assert len(own_rules()) == 1 and re.fullmatch(r"10100:\s+from all lookup 1519( proto 157)?", own_rules()[0]), \
        own_rules()
    assert_routes("vti-aws1", "vti-aws2")
    assert flow.tail_received(60) >= 0.9, f"traffic did not flow again at the end:\n{result.raw_tail}"
    again = lab_exec("gw", "/usr/local/sbin/vpnctl", "reconcile", "--json").out
    assert '"changes": []' in again, f"a second reconcile still changed something:\n{again}"


# --- 7. state dir full ----------------------------------------------------------------------------------------------

def test_state_dir_full_daemon_still_switches(matrix):
    agent = daemon_pid()
    before = switches()
    # The filesystem the state dir lives on (the gateway's /run) fills up: shrink it to what it holds + 64 KiB, then
    # fill that. Its files stay where they are (the daemon's lock, charon's VICI socket), as on a real full disk.
    size_kib, used_kib = (int(x) for x in lab_exec("gw", "sh", "-c", "df -k --output=size,used /run | tail -1")
                          .out.split())
    refill = f"rm -f {RUN_FILLER}; mount -o remount,size={size_kib}k /run"
    matrix.append(lambda: lab_exec("gw", "sh", "-c", refill))
    lab_exec("gw", "sh", "-ec", f"mount -o remount,size={used_kib + 64}k /run\n"
             f"dd if=/dev/zero of={RUN_FILLER} bs=1k count=256 2>/dev/null || true\n")
    full = lab_exec("gw", "dd", "if=/dev/zero", f"of={STATE_DIR}/probe-write", "bs=1k", "count=1", check=False)
    assert full.rc != 0 and "No space" in full.err, f"the state dir is not full: {full.err}"
    flow = Traffic(30)
    let_traffic_start()
    fail_tunnel1_esp(matrix, "the switch to tunnel2 with the state dir full")
    status = driver.wait_until(
        lambda: "state file is stale" in (r := lab_exec("gw", "/usr/local/sbin/vpnctl", "status", check=False)).out
        and r, 60, "`vpnctl status` saying the daemon runs with a stale state file")
    # Monitoring lives on another filesystem: the textfile metrics must still show the switch.
    metrics = driver.wait_until(lambda: 'hybrid_vpn_active_tunnel{tunnel="tunnel2"} 1' in (m := read_metrics()) and m,
                                60, "the metrics file showing tunnel2 active while the state dir is full")
    result = flow.result()
    # The disk is freed: the daemon writes its state again, and it counted the switch it made meanwhile.
    lab_exec("gw", "sh", "-c", refill)
    state = driver.wait_until(lambda: (s := daemon_state()).get("active") == "tunnel2" and s, 120,
                              "the daemon's state file written again")
    warnings = [line for line in log_since(0).splitlines()[-400:] if "cannot write state" in line]
    report("7 state dir full", result, state["switches_total"] - before,
           f"vpnctl status rc {status.rc}: {status.out.strip().splitlines()[-5:]}; log: {warnings[-1:]}; "
           f"metrics: {[m for m in metrics.splitlines() if m.startswith('hybrid_vpn_switches_total')]}")
    assert "Traceback" not in status.err and status.rc in (0, 1), status.err
    assert "tunnel1" in status.out and "kernel: rule present" in status.out, status.out
    assert warnings, "the daemon did not report that it cannot write its state"
    assert state["pid"] == agent and state["switches_total"] - before == 1
    assert_routes("vti-aws2", None)
    assert flow.tail_received(60) >= 0.9, f"traffic did not flow again at the end:\n{result.raw_tail}"


# --- 8. VICI socket missing -----------------------------------------------------------------------------------------

def test_vici_socket_missing_daemon_still_probes_and_switches(matrix):
    aside = f"{VICI_SOCKET}.aside"
    lab_exec("gw", "mv", VICI_SOCKET, aside)
    matrix.append(lambda: lab_exec("gw", "sh", "-c", f"test -S {VICI_SOCKET} || mv {aside} {VICI_SOCKET}"))
    driver.lab("restart", "agent", check=True)
    agent = daemon_pid()
    state = driver.wait_until(lambda: (s := daemon_state()).get("pid") == agent and s, 300,
                              "the restarted daemon writing its state")
    assert str(state["vici"]).startswith("unreachable"), state["vici"]
    settled_again = driver.wait_until(settled, 120, "the daemon on tunnel1 by probes alone", interval=1)
    before = settled_again["switches_total"]
    flow = Traffic(30)
    let_traffic_start()
    fail_tunnel1_esp(matrix, "the switch to tunnel2 without VICI")
    result = flow.result()
    state = daemon_state()
    report("8 VICI socket missing", result, state["switches_total"] - before,
           f"vici {state['vici']!r}; active {state['active']}; routes {table_routes()}")
    assert state["pid"] == agent and state["active"] == "tunnel2" and state["switches_total"] - before == 1
    assert str(state["vici"]).startswith("unreachable")
    assert_routes("vti-aws2", None)
    assert flow.tail_received(60) >= 0.9, f"traffic did not flow again at the end:\n{result.raw_tail}"
    # socket back: the daemon reconnects by itself (backoff at most 30 s)
    lab_exec("gw", "mv", aside, VICI_SOCKET)
    driver.wait_until(lambda: daemon_state().get("vici") == "connected", 180, "the daemon back on VICI")


# --- 9. both tunnels dead, then back --------------------------------------------------------------------------------

def test_both_tunnels_dead_then_back(matrix):
    """Both tunnels cut on the internet path (IKE and ESP): the daemon withdraws both, the unreachable route answers
    (nothing in clear: test_lab checks the public NIC), and traffic comes back on its own when the path heals."""
    before = switches()
    flow = Traffic(60)
    let_traffic_start()
    for tunnel in ("tunnel1", "tunnel2"):
        driver.lab("break", tunnel, check=True)
        matrix.append(lambda tunnel=tunnel: driver.lab("heal", tunnel, check=True))
    broke = time.monotonic()
    down = driver.wait_until(lambda: (s := daemon_state()).get("up") == [] and s, 120,
                             "the daemon seeing both tunnels down")
    seen_down = time.monotonic() - broke
    assert down.get("active") is None, down
    assert table_routes() == [(AWS_CIDR, UNREACHABLE_METRIC, "unreachable")], own_routes()
    for tunnel in ("tunnel1", "tunnel2"):
        driver.lab("heal", tunnel, check=True)
    healed = time.monotonic()
    wait_ping("traffic after both tunnels are back", 300)
    back = time.monotonic() - healed
    settled_state = wait_settled(300, "daemon settled on tunnel1 after both tunnels came back")
    result = flow.result()
    report("9 both dead, then back", result, switches() - before,
           f"both down seen {seen_down:.1f} s after the cut; traffic back {back:.1f} s after the heal; "
           f"active {settled_state.get('active')}; routes {table_routes()}")
    assert result.sent >= flow.count * 0.95, f"the flow stopped early (ICMP errors?):\n{result.raw_tail}"
    assert result.lost > 0, "no packet was lost: the tunnels were not really cut"
    assert "Unreachable" in flow.output, "the gateway's unreachable route did not answer while both were down"
    assert_routes("vti-aws1", "vti-aws2")
    assert flow.tail_received(60) >= 0.9, f"traffic did not flow again at the end:\n{result.raw_tail}"
