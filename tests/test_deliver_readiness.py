"""The delivery's readiness check (hostconfig.deliver.gateway.agent_restart_command) reads the daemon's state file
through the agent's status contract (hostconfig.agent.status_contract, from the delivered vpnctl zipapp), not as a raw
dict: a state file that is not a daemon state of this release (another version, a missing field) is "not ready",
and says why. Runs the real command against stand-ins for systemctl and the daemon; no root, no sshd."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from testlib import install_stand_in_systemd, stop_stand_in_systemd

from hostconfig.agent.bundle import build_zipapp
from hostconfig.deliver.gateway import agent_restart_command


@pytest.fixture(scope="module")
def vpnctl(tmp_path_factory) -> Path:
    return build_zipapp(tmp_path_factory.mktemp("vpnctl") / "vpnctl")


@pytest.fixture
def gateway(tmp_path):
    bindir = tmp_path / "bin"
    install_stand_in_systemd(bindir)
    (tmp_path / "agent.json").write_text('{"version": 1}')
    yield tmp_path
    stop_stand_in_systemd(bindir)


def restart(gateway: Path, vpnctl: Path, state_version: str, seconds: float) -> subprocess.CompletedProcess:
    state_file = gateway / "daemon-state.json"
    argv = agent_restart_command("hybrid-vpn-failover", str(state_file), seconds, str(vpnctl))
    env = {"PATH": f"{gateway / 'bin'}:/usr/sbin:/usr/bin:/sbin:/bin", "AGENT_JSON": str(gateway / "agent.json"),
           "STATE_FILE": str(state_file), "STATE_VERSION": state_version}
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=seconds + 60)


def test_a_daemon_writing_its_documented_state_is_ready(gateway, vpnctl):
    done = restart(gateway, vpnctl, "1", 60)
    assert done.returncode == 0, done.stderr
    assert "ready: main pid" in done.stdout


def test_a_state_file_of_another_version_is_not_ready_and_the_contract_says_why(gateway, vpnctl):
    # pid and updated_at are right (a raw .get() of the two would call this ready), the version is not.
    done = restart(gateway, vpnctl, "2", 3)
    assert done.returncode == 1
    assert "not ready 3s after its restart" in done.stderr
    assert "daemon state: version 2 is not the version this reader knows (1)" in done.stderr
