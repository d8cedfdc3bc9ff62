"""Running commands in the lab's namespaces (the only module here that forks processes for others)."""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

from lab import paths

log = logging.getLogger(__name__)

HOSTS = ("vlan", "gw", "nat", "inet", "aws", "vpc", "ops")


def netns_name(host: str) -> str:
    return f"{paths.NS_PREFIX}{host}"


def gw_mount_ns_file() -> Path:
    return paths.STATE_DIR / "ns" / "gw.mnt"


def ns_prefix(host: str) -> list[str]:
    """argv prefix that runs a command on a lab host; the gateway also gets its own mount namespace."""
    if host not in HOSTS:
        raise ValueError(f"unknown lab host {host!r}: expected one of {', '.join(HOSTS)}")
    if host == "gw" and gw_mount_ns_file().exists():
        return ["nsenter", f"--net=/run/netns/{netns_name(host)}", f"--mount={gw_mount_ns_file()}", "--"]
    return ["ip", "netns", "exec", netns_name(host)]


def run(cmd: list[str], check: bool = True, input: str | None = None, env: dict | None = None,
        timeout: float | None = 120) -> subprocess.CompletedProcess:
    log.debug("run %s", cmd)
    proc = subprocess.run(cmd, input=input, capture_output=True, text=True, env=env, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (rc {proc.returncode}): {(proc.stderr or proc.stdout).strip()}")
    return proc


def run_in(host: str, cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return run(ns_prefix(host) + cmd, **kw)


def ip_batch(host: str, lines: list[str]) -> None:
    """One `ip -b -` per namespace: every fork costs ~0.1 s under TCG, so batch link/addr/route changes."""
    run(["ip", "-n", netns_name(host), "-b", "-"], input="\n".join(lines) + "\n")


def sysctl_in(host: str, settings: dict[str, str]) -> None:
    script = "".join(f"echo {v} > /proc/sys/{k.replace('.', '/')}\n" for k, v in settings.items())
    run_in(host, ["sh", "-ec", script])


def spawn_in(host: str, name: str, cmd: list[str], env: dict | None = None) -> int:
    """Start a long-running process on a lab host, detached, logging to STATE_DIR/logs/<name>.log; record its pid."""
    logs = paths.STATE_DIR / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / f"{name}.log", "ab") as out:
        proc = subprocess.Popen(ns_prefix(host) + cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)
    pids = paths.STATE_DIR / "pids"
    pids.mkdir(parents=True, exist_ok=True)
    (pids / name).write_text(str(proc.pid))
    log.info("started %s on %s (pid %s)", name, host, proc.pid)
    return proc.pid


def pid_of(name: str) -> int | None:
    try:
        pid = int((paths.STATE_DIR / "pids" / name).read_text())
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ValueError, IndexError):
        return None
    if state == "Z":  # exited, not yet reaped by the controller that started it
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        return None
    return pid
