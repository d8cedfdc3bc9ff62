"""One lab per pytest session: `lab up` once (VM boot included), every e2e test shares it, `lab down` at the end."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from hostconfig.agent.state import DAEMON_STATE
from hostconfig.gateway_paths import STATE_DIR
from lab import driver, paths
from tests.e2e import lab_session


@pytest.fixture(scope="session")
def lab_up():
    reason = driver.why_lab_cannot_run()
    if reason:
        pytest.skip(reason)
    if driver.lab("status", timeout=120).rc == 0:
        if os.environ.get("HYBRID_VPN_LAB_REUSE") == "1":  # iterate on the tests against a lab you started
            yield driver.Result(0, "reused a running lab", "")
            return
        pytest.skip("a lab is already running (`make lab down` first, or HYBRID_VPN_LAB_REUSE=1 to test it)")
    up = driver.lab("up", timeout=1800)
    lab_session.brought_up()
    try:
        yield up
    finally:
        lab_session.take_down()


# Modules run after every other e2e test, in this order (every other test keeps its place). The rekey module leaves
# short lifetimes behind on the session's own lab (no static test follows it, so putting them back would cost two
# charon restarts for nothing); the bgp module brings up a lab of its own (routing.mode bgp), so the session's static
# lab is brought up once and taken down once, before it (one VM at a time on the CI machine), and the tests collected
# after tests/e2e run with no lab VM left running.
LATE_MODULES = ("test_lab_rekey.py", "test_lab_bgp.py")


def pytest_collection_modifyitems(items):
    late = sorted((item for item in items if item.path.name in LATE_MODULES),
                  key=lambda item: LATE_MODULES.index(item.path.name))
    rest = [item for item in items if item.path.name not in LATE_MODULES]
    here = Path(__file__).parent
    after_e2e = max((n + 1 for n, item in enumerate(rest) if item.path.parent == here), default=len(rest))
    items[:] = rest[:after_e2e] + late + rest[after_e2e:]


@pytest.fixture
def lab(lab_up, request, tmp_path_factory):
    """The running lab, healthy: both tunnels installed and traffic flowing before each test starts."""
    if lab_up.rc != 0:
        pytest.fail(f"`lab up` failed (rc {lab_up.rc}):\n{lab_up.out[-4000:]}\n{lab_up.err[-4000:]}")
    if _unhealthy:
        # Once the lab could not be brought back, every later test would wait out the same deadlines (an hour of CI
        # for one fault): fail at once, pointing at the first failure and its diagnostics.
        pytest.fail(f"the lab is unhealthy since {_unhealthy[0]}")
    remove_fault()
    for tunnel in ("tunnel1", "tunnel2"):
        driver.lab("heal", tunnel, check=True)
    driver.lab("prefer", "tunnel1", check=True)
    try:
        driver.wait_until(lambda: driver.installed_children() >= 2, 300, "both CHILD_SAs installed")
        # Settled, not just "a ping passed": after a test that broke tunnels the gateway may still be on tunnel2,
        # waiting out the failback hold, and the next test would start in the middle of that failback.
        wait_settled(300, "daemon settled on tunnel1 with both tunnels up")
        wait_aws_sending("tunnel1", 300)
        driver.wait_until(lambda: driver.ping("vlan", VPC_HOST), 180, "VLAN host -> VPC host ping")
        # A test that made the gateway repair tunnels leaves their backoff running until they have been healthy a
        # while; the next test's fault would wait it out (stop 19's CI: ESP-dead waited out a maintenance's backoff).
        driver.wait_until(driver.repairs_reset, 300, "the gateway's repair backoff reset", interval=3)
    except AssertionError as exc:
        report = lab_diagnostics()
        saved = tmp_path_factory.getbasetemp() / "lab-diagnostics.txt"  # kept by pytest after the run (CI included)
        saved.write_text(f"{request.node.nodeid}: {exc}\n\n{report}\n")
        _unhealthy.append(f"{request.node.nodeid} ({exc}; diagnostics in {saved})")
        raise AssertionError(f"{exc}\ndiagnostics saved in {saved}\n\n{report}") from None
    return driver


_unhealthy: list[str] = []  # the first test whose `lab` fixture could not bring the lab back to health


def lab_diagnostics() -> str:
    """Everything needed to tell why the lab is not healthy, for a failure message (CI shows nothing else)."""
    gw_log = "/var/log/charon.log"
    aws = paths.STATE_DIR / "aws"
    commands = [
        ("status",),
        ("exec", "gw", "ip", "-d", "-s", "link", "show", "type", "vti"),
        ("exec", "gw", "ip", "rule"),
        ("exec", "gw", "ip", "route", "show", "table", "all"),
        ("exec", "gw", "cat", STATE_FILE),
        ("exec", "gw", "swanctl", "--list-sas"),
        ("exec", "gw", "ip", "xfrm", "policy"),  # not `xfrm state`: it prints the keys
        ("exec", "gw", "nft", "list", "ruleset"),
        ("exec", "aws", "ip", "route"),
        ("exec", "aws", "ip", "-s", "link", "show", "type", "vti"),
        ("exec", "root", "cat", str(aws / "monitor-status.json")),
        ("exec", "root", "tail", "-n", "40", str(paths.STATE_DIR / "logs" / "aws-route-monitor.log")),
        ("exec", "root", "tail", "-n", "60", str(paths.STATE_DIR / "logs" / "gw-vpnctl-daemon.log")),
        ("exec", "gw", "tail", "-n", "80", gw_log),
        ("exec", "root", "tail", "-n", "60", str(aws / "charon.log")),
        ("exec", "inet", "nft", "list", "ruleset"),
    ]
    parts = []
    for argv in commands:
        try:
            r = driver.lab(*argv, timeout=120)
            parts.append(f"$ lab {' '.join(argv)}  (rc {r.rc})\n{r.out[-6000:]}{r.err[-2000:]}")
        except Exception as exc:  # noqa: BLE001 - a diagnostic must not hide the failure it explains
            parts.append(f"$ lab {' '.join(argv)}: {exc}")
    return "lab diagnostics:\n" + "\n".join(parts)


# --- helpers for the rekey / fault / secrets tests ------------------------------------------------------------------

VPC_HOST = "10.0.4.85"
STATE_FILE = f"{STATE_DIR.path}/{DAEMON_STATE}"  # the gateway's, as rendered into agent.json


@dataclass
class PingReport:
    """What a paced `ping -D` run saw: sent/received, and the longest run of unanswered sequence numbers."""
    sent: int
    received: int
    longest_gap_seconds: float
    raw_tail: str

    @property
    def lost(self) -> int:
        return self.sent - self.received


def parse_ping(out: str, interval: float) -> PingReport:
    seqs = sorted({int(m) for m in re.findall(r"bytes from .*icmp_seq=(\d+)", out)})
    summary = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    sent = int(summary.group(1)) if summary else (seqs[-1] if seqs else 0)
    received = int(summary.group(2)) if summary else len(seqs)
    bounds = [0, *seqs, sent + 1]
    longest = max((b - a - 1 for a, b in zip(bounds, bounds[1:], strict=False)), default=0)
    return PingReport(sent, received, round(longest * interval, 2), out[-600:])


class Traffic:
    """Paced ICMP VLAN host -> VPC host (default 20 packets/s) for `seconds`, run inside the lab by one `lab exec`.

    Sends exactly `count` packets and survives ICMP errors: `ping -w` would quit at the first "Destination Host
    Unreachable" (what the gateway's `unreachable` route answers while both tunnels are down). `timeout -s INT` is
    only a safety net (ping prints its summary on SIGINT). Keeps which sequence numbers came back.
    """

    def __init__(self, seconds: float, rate: int = 20, src: str = "vlan", dst: str = VPC_HOST):
        self.interval = 1.0 / rate
        self.count = int(seconds * rate)
        self.answered: set[int] = set()
        self.output = ""
        self.proc = driver.lab_popen("exec", src, "timeout", "-s", "INT", str(int(seconds) + 120), "ping", "-n",
                                     "-D", "-i", f"{self.interval:.3f}", "-W", "2", "-c", str(self.count), dst)

    def result(self) -> PingReport:
        out, _ = self.proc.communicate(timeout=self.count * self.interval + 600)
        self.output = out
        self.answered = {int(m) for m in re.findall(r"bytes from .*icmp_seq=(\d+)", out)}
        self.report = parse_ping(out, self.interval)
        return self.report

    def tail_received(self, packets: int) -> float:
        """Share of the last `packets` sequence numbers that were answered."""
        sent = self.report.sent
        last = range(max(1, sent - packets + 1), sent + 1)
        return sum(1 for s in last if s in self.answered) / len(last)


def daemon_state() -> dict:
    r = driver.lab("exec", "gw", "cat", STATE_FILE, timeout=120)
    try:
        return json.loads(r.out)
    except ValueError:
        return {}


def settled() -> dict | None:
    """The lab's normal state: the daemon on tunnel1 (primary) with both tunnels up, and the kernel agreeing."""
    s = daemon_state()
    if s.get("active") != "tunnel1" or sorted(s.get("up", [])) != ["tunnel1", "tunnel2"]:
        return None
    return s if driver.active_vti() == "vti-aws1" else None


def wait_settled(timeout: float, what: str) -> dict:
    """Wait for settled(); on timeout say what the daemon last reported (which tunnel it thinks is down, and why)."""
    try:
        return driver.wait_until(settled, timeout, what, interval=2)
    except AssertionError as exc:
        s = daemon_state()
        tunnels = {name: (t.get("up"), t.get("reason")) for name, t in s.get("tunnels", {}).items()}
        raise AssertionError(f"{exc}; daemon state: active {s.get('active')!r}, up {s.get('up')!r}, "
                             f"tunnels {tunnels}, last switch {s.get('last_switch')!r}; "
                             f"kernel active VTI {driver.active_vti()!r}; SAs {sas('gw')!r}") from None


def lab_exec(host: str, *argv: str, check: bool = True, timeout: float = 300) -> driver.Result:
    return driver.lab("exec", host, *argv, check=check, timeout=timeout)


def set_lifetimes(mode: str) -> driver.Result:
    """`lab lifetimes short|normal` (lab/lifetimes.py)."""
    r = driver.lab("lifetimes", mode, timeout=900)
    if r.rc != 0:
        raise AssertionError(f"lab lifetimes {mode} failed:\n{r.out[-3000:]}\n{r.err[-3000:]}")
    return r


def sas(host: str = "gw") -> dict[str, dict]:
    """tunnel -> {'ike': {initiator SPIs of ESTABLISHED IKE_SAs}, 'child_spis': {spi-in of INSTALLED CHILD_SAs},
    'installed': how many INSTALLED CHILD_SAs}, from `swanctl --list-sas --raw`."""
    if host == "gw":
        r = driver.lab("exec", "gw", "swanctl", "--list-sas", "--raw", timeout=120)
    else:
        aws = paths.STATE_DIR / "aws"
        r = driver.lab("exec", "root", "sh", "-c", f"STRONGSWAN_CONF={aws}/strongswan.conf "
                       f"swanctl --list-sas --raw --uri unix://{aws}/charon.vici", timeout=120)
    out: dict[str, dict] = {}
    for line in r.out.splitlines():
        m = re.match(r"list-sa event \{(\S+) \{uniqueid=(\d+) .*?state=(\S+) .*?initiator-spi=(\w+)", line)
        if not m:
            continue
        entry = out.setdefault(m.group(1), {"ike": set(), "child_spis": set(), "installed": 0})
        if m.group(3) == "ESTABLISHED":
            entry["ike"].add(m.group(4))
        for child in re.finditer(r"state=INSTALLED [^}]*?spi-in=(\w+)", line):
            entry["child_spis"].add(child.group(1))
            entry["installed"] += 1
    return out


def link_indexes() -> dict[str, int]:
    r = driver.lab("exec", "gw", "ip", "-o", "link", "show", timeout=120)
    return {m.group(2): int(m.group(1)) for m in re.finditer(r"^(\d+): (vti-aws\d)@", r.out, re.M)}


def own_routes() -> list[str]:
    return sorted(driver.lab("exec", "gw", "ip", "-4", "route", "show", "table", "1519", timeout=120).out.splitlines())


# --- faults on the internet path between the gateway and AWS (the lab's `inet` namespace) ---------------------------

TUNNEL1_OUTSIDE = "198.51.100.1"  # stacks/Pulumi.lab.yaml: the emulated VPN connection's tunnels
TUNNEL2_OUTSIDE = "198.51.100.2"
FAULT_TABLE = "lab_fault"  # an nftables table in the `inet` namespace; remove_fault() deletes it


def nft_inet(script: str) -> None:
    lab_exec("inet", "sh", "-c", 'printf "%s\\n" "$1" | nft -f -', "sh", script)


def drop_esp_of(outside_ip: str) -> None:
    """That tunnel's ESP dropped both ways, its IKE still passing (lab.driver.esp_drop_ruleset)."""
    nft_inet(driver.esp_drop_ruleset(outside_ip, FAULT_TABLE))


def remove_fault() -> None:
    lab_exec("inet", "sh", "-c", f"nft delete table inet {FAULT_TABLE} 2>/dev/null; true")


def fault_counters() -> dict[str, int]:
    """comment -> packets matched, from the fault table's counters."""
    out = lab_exec("inet", "nft", "list", "table", "inet", FAULT_TABLE, check=False).out
    return {m.group(2): int(m.group(1)) for m in re.finditer(r"counter packets (\d+) bytes \d+ .*?comment \"(\S+)\"",
                                                               out)}


# --- the emulated AWS side: helpers shared with the benchmarks (lab/driver.py) -------------------------------------

AWS_DPD_TIMEOUT_SECONDS = driver.AWS_DPD_TIMEOUT_SECONDS
GATEWAY_TO_AWS_BOUND_SECONDS = driver.GATEWAY_TO_AWS_BOUND_SECONDS
Flows = driver.Flows
aws_status = driver.aws_status
wait_aws_sending = driver.wait_aws_sending
lab_clock = driver.lab_clock
lab_now = driver.lab_now
tunnel_carries = driver.tunnel_carries
