"""Files in the state dir: atomic writes, the daemon's state file, updown events, and the reconcile lock."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import AgentError
from .status_contract import ContractError, DaemonState, DaemonSummary

log = logging.getLogger(__name__)

DAEMON_STATE = "daemon-state.json"
NFT_RECORD = "nft-applied.json"
LOCK_FILE = "reconcile.lock"
# Held (flock) by the running daemon for its whole life: liveness that does not depend on the state file being
# writable (a full disk freezes the state file, not the daemon), and one daemon per state dir.
DAEMON_LOCK = "daemon.lock"
EVENT_PREFIX = "updown-"
# The daemon rewrites its state at least this often; older than FRESH_SECONDS means "no daemon running".
FRESH_SECONDS = 10.0


def atomic_write_text(path: Path, text: str, mode: int = 0o644) -> None:
    """Write via a temp file in the same directory + rename: readers see the old or the new file, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: Path) -> dict[str, Any] | None:
    """The decoded file, or None when it is missing or unreadable (a state file is a hint, never trusted blindly)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_daemon_state(state_dir: Path, state: DaemonState) -> None:
    atomic_write_text(state_dir / DAEMON_STATE, state.dumps())


def read_daemon_state(state_dir: Path) -> DaemonState | None:
    """The daemon's last state, or None when it wrote none. Raises ContractError (naming the field) when the file
    cannot be read or is not a daemon state of this version (a hint for status, never trusted blindly)."""
    path = state_dir / DAEMON_STATE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ContractError(f"daemon state: cannot read {path}: {exc.strerror}") from None
    return DaemonState.loads(text)


def daemon_state_is_fresh(state: DaemonState | None, now: float | None = None) -> bool:
    """True when a daemon wrote this recently and its process still exists."""
    if state is None:
        return False
    now = time.time() if now is None else now
    if now - state.updated_at > FRESH_SECONDS:
        return False
    try:
        os.kill(state.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def daemon_summary(state_dir: Path) -> tuple[DaemonSummary, DaemonState | None]:
    """What status says about the daemon (liveness from its lock and state file), and its state when readable."""
    try:
        daemon, error = read_daemon_state(state_dir), None
    except ContractError as exc:
        daemon, error = None, str(exc)
    liveness = daemon_liveness(state_dir, daemon)
    summary = DaemonSummary(
        running=liveness != "stopped",
        state_file="fresh" if liveness == "running" else ("stale" if liveness == "stale" else None),
        state_error=error,
        updated_at=daemon.updated_at if daemon else None,
        active=daemon.active if daemon else None,
        reason=daemon.reason if daemon else None,
        switches_total=daemon.switches_total if daemon else None,
        repairs_total=daemon.repairs_total if daemon else None,
        last_switch=daemon.last_switch if daemon else None,
        vici=daemon.vici if daemon else None,
    )
    return summary, daemon


class LockTimeout(AgentError, TimeoutError):
    pass


def _flock_until(fd: int, timeout: float) -> bool:
    """Exclusive flock on fd, polling with short sleeps (safe in any thread, no alarm left behind) until `timeout`
    seconds have passed; False when it is still held by someone else then."""
    deadline = time.monotonic() + timeout
    delay = 0.002
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def daemon_lock_held(state_dir: Path) -> bool | None:
    """True when a daemon holds its lock, False when none does, None when we cannot tell (no permission)."""
    try:
        fd = os.open(state_dir / DAEMON_LOCK, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return True
        return None
    finally:
        os.close(fd)  # also releases our probe lock
    return False


def daemon_liveness(state_dir: Path, snapshot: DaemonState | None, now: float | None = None) -> str:
    """"running" (lock held, state fresh), "stale" (lock held, state not written lately: full disk?), or "stopped".

    Without an answer from the lock (no permission), a fresh state file alone says running.
    """
    held = daemon_lock_held(state_dir)
    fresh = daemon_state_is_fresh(snapshot, now)
    if held is None:
        return "running" if fresh else "stopped"
    if not held:
        return "stopped"
    return "running" if fresh else "stale"


def acquire_daemon_lock(state_dir: Path, timeout: float) -> int:
    """Take the daemon lock (waiting up to `timeout` for a daemon that is exiting); return the fd to keep open.

    Raises LockTimeout naming the holder when another daemon keeps it.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / DAEMON_LOCK
    # 0644: `vpnctl status` run by a non-root operator can still tell whether the daemon is alive.
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        acquired = _flock_until(fd, timeout)
    except OSError:
        os.close(fd)
        raise
    if not acquired:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise LockTimeout(f"another vpnctl daemon (pid {holder}) holds {path}")
    try:  # the pid is a hint for people; a full disk must not stop the daemon
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError as exc:
        log.warning("cannot write the pid into %s: %s", path, exc)
    return fd


@contextlib.contextmanager
def reconcile_lock(state_dir: Path, timeout: float) -> Iterator[None]:
    """Blocking flock with a deadline: the daemon, updown hooks and manual runs reconcile one at a time.

    Raises LockTimeout when the deadline passes.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(state_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        if not _flock_until(fd, timeout):
            raise LockTimeout(f"{state_dir / LOCK_FILE}: still held after {timeout:.1f}s")
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
