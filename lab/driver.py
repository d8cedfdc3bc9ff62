"""Drive `python -m lab` from the end-to-end tests and the benchmarks: the same commands a user types."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

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
