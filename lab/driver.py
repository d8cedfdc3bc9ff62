"""Drive `python -m lab` from the end-to-end tests and the benchmarks: the same commands a user types."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from hostconfig.agent.status_contract import StatusReport
from hostconfig.gateway_paths import VPNCTL
from lab import flows

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Result:
    rc: int
    out: str
    err: str


def lab(*args: str, timeout: float = 600, check: bool = False) -> Result:
    proc = subprocess.run([sys.executable, "-m", "lab", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)
    res = Result(proc.returncode, proc.stdout, proc.stderr)
    if check and res.rc != 0:
        raise AssertionError(f"lab {' '.join(args)} failed (rc {res.rc}):\n{res.out[-3000:]}\n{res.err[-3000:]}")
    return res


def lab_popen(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lab", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def why_lab_cannot_run() -> str | None:
    """None when the lab can run here (host kernel with VTI, or the VM), else the reason to skip."""
    if os.geteuid() != 0:
        return "the lab needs root (network namespaces, VTIs)"
    for tool in ("ip", "nsenter", "unshare", "swanctl", "/usr/lib/ipsec/charon", "/usr/sbin/sshd", "nft", "tcpdump"):
        if shutil.which(tool) is None and not Path(tool).exists():
            return f"the lab needs {tool}"
    sys.path.insert(0, str(REPO))
    from lab.capability import host_kernel_can_do_vti_esp

    ok, why = host_kernel_can_do_vti_esp()
    if ok:
        return None
    if shutil.which("qemu-system-x86_64") is None:
        return f"host kernel: {why}, and no qemu-system-x86_64 for the lab VM"
    if not (Path(sys.executable).parent / "vng").exists():
        return f"host kernel: {why}, and virtme-ng (vng) is not in the venv for the lab VM"
    from lab import paths

    if not list(paths.CACHE_DIR.glob("linux-image-*/boot/vmlinuz-*")) and shutil.which("apt-get") is None:
        return f"host kernel: {why}, and no cached VM kernel nor apt-get to fetch one"
    return None


def wait_until(condition, timeout: float, what: str, interval: float = 0.5):
    """Poll until condition() returns a truthy value; return it. Generous deadlines: TCG is ~7x slower."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


# A CHILD_SA line of `swanctl --list-sas`: "  tunnel1: #3, reqid 1, INSTALLED, TUNNEL-in-UDP, ESP:...".
_INSTALLED_CHILD = re.compile(r"^\s+(\S+): #\d+, reqid \d+, INSTALLED", re.MULTILINE)


def installed_children() -> int:
    """How many tunnels have an installed CHILD_SA on the gateway. Counted per tunnel, not per SA: during a rekey, or
    when a retransmitted CREATE_CHILD_SA crosses on a loaded machine, one tunnel briefly has two."""
    r = lab("exec", "gw", "swanctl", "--list-sas", timeout=120)
    return len(set(_INSTALLED_CHILD.findall(r.out)))


def active_vti() -> str | None:
    """The gateway's metric-100 route for the AWS CIDR in the agent's table (docs/contracts.md §3)."""
    r = lab("exec", "gw", "ip", "-4", "route", "show", "table", "1519", timeout=120)
    for line in r.out.splitlines():
        if "metric 100" in line and " dev " in line:
            return line.split(" dev ")[1].split()[0]
    return None


def ping(src: str, dst: str, count: int = 1, wait: int = 1) -> bool:
    return lab("exec", src, "ping", "-n", "-c", str(count), "-W", str(wait), dst, timeout=120).rc == 0


# --- the emulated AWS side (lab/awspeer.py, lab/awsrouting.py) and per-direction flows (lab/flows.py) ------------

AWS_DPD_TIMEOUT_SECONDS = 30  # stacks/Pulumi.lab.yaml crypto.dpd_timeout_seconds (AWS's minimum)
# The gateway's own detection (agent.json failover defaults the lab keeps): down_after probes 100 ms apart, the last
# one waited for 300 ms. The gateway -> AWS direction may lose at most this plus 1 s (issue 12).
GATEWAY_DETECTION_SECONDS = 3 * 0.1 + 0.3
GATEWAY_TO_AWS_BOUND_SECONDS = GATEWAY_DETECTION_SECONDS + 1.0
LAB_CLOCK = re.compile(r"lab clock (\d+\.\d+)")


def esp_drop_ruleset(outside_ip: str, table: str) -> str:
    """An nftables table (for the `inet` namespace) that drops that tunnel's ESP both ways while its IKE passes.
    NAT-T puts both on UDP 4500: ESP starts with its non-zero SPI, IKE with a 4-byte zero non-ESP marker (the first
    32 bits after the UDP header). Counted per rule, by comment."""
    return f"""table inet {table} {{
    chain forward {{
        type filter hook forward priority -10;
        ip daddr {outside_ip} udp dport 4500 @th,64,32 != 0 counter drop comment "esp_to_aws"
        ip saddr {outside_ip} udp sport 4500 @th,64,32 != 0 counter drop comment "esp_from_aws"
        ip daddr {outside_ip} udp dport 4500 @th,64,32 0 counter comment "ike_to_aws"
    }}
}}"""


def aws_status() -> dict:
    from lab import awspeer

    r = lab("exec", "root", "cat", str(awspeer.MONITOR_STATUS), timeout=120)
    try:
        return json.loads(r.out)
    except ValueError:
        return {}


def wait_aws_sending(tunnel: str, timeout: float) -> dict:
    """`lab prefer` the tunnel and wait until AWS sends on it (it applies once that tunnel is UP by IKE)."""
    lab("prefer", tunnel, check=True)
    return wait_until(lambda: (s := aws_status()).get("sending") == tunnel and s, timeout,
                             f"the AWS side sending on {tunnel}", interval=1)


def lab_clock(result: Result) -> float:
    """The lab-clock time a `lab break` / `lab heal` / `lab maintenance` printed (the clock lab/flows.py uses)."""
    m = LAB_CLOCK.search(result.out)
    assert m, f"no lab clock in: {result.out!r}"
    return float(m.group(1))


def lab_now() -> float:
    return float(lab("exec", "root", "date", "+%s.%N", check=True, timeout=120).out)


def tunnel_carries(tunnel: str) -> bool:
    """That tunnel's data path works both ways: the gateway pings AWS's inside address through that VTI."""
    n = tunnel[-1]
    aws_inside = {"1": "169.254.10.1", "2": "169.254.11.1"}[n]  # stacks/Pulumi.lab.yaml tunnels.inside_cidrs
    return lab("exec", "gw", "ping", "-n", "-c", "1", "-W", "1", "-I", f"vti-aws{n}", aws_inside, timeout=120).rc == 0


def gateway_status() -> StatusReport | None:
    """The gateway's `vpnctl status --json`, typed; None when it could not be read."""
    out = lab("exec", "gw", VPNCTL.path, "status", "--json", timeout=120)
    return StatusReport.loads(out.out) if out.rc == 0 else None


def repairs_reset() -> bool:
    """No tunnel has repair attempts pending (`vpnctl status`): a fault injected now is a fresh failure. One injected
    while the backoff of earlier unhealed repairs runs waits that backoff out first (hostconfig/agent/health.py):
    the product's guard against repair loops, measured on its own, not mixed into another failure's figures."""
    status = gateway_status()
    return status is not None and all(t.repair is not None and t.repair.attempts == 0 for t in status.tunnels)


def repairs_seen() -> str:
    """The gateway's repairs per tunnel as `vpnctl status` shows them, for a failure message."""
    status = gateway_status()
    if status is None:
        return "vpnctl status could not be read"
    return "; ".join(f"{t.name}: no daemon data" if t.repair is None else
                     f"{t.name}: {t.repair.total} repairs, attempts {t.repair.attempts}, waiting {t.repair.waiting!r}, "
                     f"last {t.repair.last!r}" for t in status.tunnels)


class Flows:
    """lab/flows.py for `seconds`: UDP VLAN host -> VPC host (gateway -> AWS) and back (AWS -> gateway), each
    direction timed where it arrives, on the lab clock."""

    def __init__(self, seconds: float, rate: int = 50):
        self.seconds = seconds
        self.proc = lab_popen("exec", "root", "sh", "-c",
                                     f"cd {REPO} && exec {sys.executable} -m lab.flows run {seconds} {rate}")
        self.head = []
        for line in self.proc.stdout:  # returns once both streams run (Python starts slowly in the VM)
            self.head.append(line)
            if line.strip() == flows.STARTED:
                break

    def result(self) -> dict[str, flows.Direction]:
        out, err = self.proc.communicate(timeout=self.seconds + 600)
        out = "".join(self.head) + out
        lines = [line for line in out.splitlines() if line.startswith("{")]
        assert lines, f"lab/flows.py printed no result:\n{out[-2000:]}\n{err[-2000:]}"
        data = json.loads(lines[-1])
        return {k: flows.Direction(v["sent"], v["received"], v["first"], v["last"], [tuple(g) for g in v["gaps"]])
                for k, v in data.items() if k in ("gateway_to_aws", "aws_to_gateway")}
