"""The daemon's liveness lock: one daemon per state dir, and `status`/`doctor` can tell a running daemon whose state
file is stale (full disk) from a stopped one."""

from __future__ import annotations

import dataclasses
import os
import time

import pytest
from testlib import contract_example

from hostconfig.agent.state import (
    DAEMON_LOCK,
    LockTimeout,
    acquire_daemon_lock,
    daemon_liveness,
    daemon_lock_held,
)
from hostconfig.agent.status import render_status
from hostconfig.agent.status_contract import DaemonState, DaemonSummary, StatusReport


def snapshot(age_seconds: float) -> DaemonState:
    return dataclasses.replace(DaemonState.from_json(contract_example("daemon-state")), pid=os.getpid(),
                               updated_at=time.time() - age_seconds)


def test_one_daemon_per_state_dir_and_the_lock_says_who(tmp_path):
    assert daemon_lock_held(tmp_path) is False  # no lock file at all
    fd = acquire_daemon_lock(tmp_path, timeout=1)
    try:
        assert daemon_lock_held(tmp_path) is True
        assert (tmp_path / DAEMON_LOCK).read_text().strip() == str(os.getpid())
        assert oct((tmp_path / DAEMON_LOCK).stat().st_mode & 0o777) == "0o644"
        started = time.monotonic()
        with pytest.raises(LockTimeout, match=rf"another vpnctl daemon \(pid {os.getpid()}\) holds"):
            acquire_daemon_lock(tmp_path, timeout=0.3)
        assert time.monotonic() - started >= 0.3  # it waited for an exiting daemon before giving up
    finally:
        os.close(fd)
    assert daemon_lock_held(tmp_path) is False  # closing (or dying) releases it
    os.close(acquire_daemon_lock(tmp_path, timeout=0))  # and the next daemon gets it at once


@pytest.mark.parametrize("holds_lock, age, expected", [
    (True, 1, "running"),
    (True, 120, "stale"),  # alive but cannot write its state: a full state dir
    (False, 1, "stopped"),  # a fresh-looking file but nobody holds the lock: the daemon died just now
    (False, 120, "stopped"),
])
def test_liveness_combines_the_lock_and_the_state_file(tmp_path, holds_lock, age, expected):
    fd = acquire_daemon_lock(tmp_path, timeout=0) if holds_lock else None
    try:
        assert daemon_liveness(tmp_path, snapshot(age)) == expected
    finally:
        if fd is not None:
            os.close(fd)


def test_liveness_without_a_readable_lock_falls_back_to_the_state_file(tmp_path):
    (tmp_path / DAEMON_LOCK).symlink_to(DAEMON_LOCK)  # opening it fails (ELOOP, like EACCES): "cannot tell"
    assert daemon_lock_held(tmp_path) is None
    assert daemon_liveness(tmp_path, snapshot(1)) == "running"
    assert daemon_liveness(tmp_path, snapshot(120)) == "stopped"


def test_status_text_tells_a_stale_state_file_from_a_stopped_daemon():
    base = dataclasses.replace(StatusReport.from_json(contract_example("status")), tunnels=[])

    def status(**daemon: object) -> StatusReport:
        return dataclasses.replace(base, daemon=dataclasses.replace(base.daemon, **daemon))

    stale = render_status(status(running=True, state_file="stale", updated_at=0.0))
    assert "daemon: running, but its state file is stale" in stale and "full or read-only state dir" in stale
    stopped = render_status(status(running=False, state_file=None))
    assert "daemon: not running" in stopped
    assert "daemon: running\n" in render_status(status(running=True, state_file="fresh"))
    assert isinstance(base.daemon, DaemonSummary)
