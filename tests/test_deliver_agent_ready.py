"""Activation checks that the agent works (root, real sshd): agent.json is validated by the delivered vpnctl's own
reader (`vpnctl check-config`), and the agent's restart returns only once the daemon reports ready (active, and its
state file rewritten by the unit's main process after the restart); otherwise the push rolls back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import test_deliver_push as push_tests
from test_deliver_push import AGENT, activations, gateway_files, on_gateway
from testlib import install_stand_in_systemd, stop_stand_in_systemd

from hostconfig.deliver import CommandFailed, DesiredFile, push_files
from hostconfig.deliver.gateway import agent_restart_command, validation_commands, vpnctl_file
from hostconfig.deliver.sshd_lab import SshdLab

pytestmark = pytest.mark.root
lab, root, psk = push_tests.lab, push_tests.root, push_tests.psk  # fixtures

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "host_config.default.json"
REPO = Path(__file__).resolve().parents[1]


def rendered_files() -> list[DesiredFile]:
    from hostconfig.plan import GatewayPlan
    from hostconfig.render import render_gateway_files

    plan = GatewayPlan.from_host_config(json.loads(FIXTURE.read_text()))
    return [*(DesiredFile.from_rendered(f) for f in render_gateway_files(plan)), vpnctl_file()]


def test_agent_config_the_agent_refuses_fails_validation_and_is_rolled_back(lab: SshdLab, root: Path):
    good = rendered_files()
    push_files(lab.target(), good, validate=validation_commands(), remote_root=str(root))
    agent = next(f for f in good if f.path == AGENT)
    data = json.loads(agent.content)
    data["primary_tunnel"] = "tunnel9"  # valid JSON (json.tool passes it), but no such tunnel: the daemon refuses it
    refused = [DesiredFile(AGENT, json.dumps(data).encode(), agent.mode) if f.path == AGENT else f for f in good]

    with pytest.raises(CommandFailed) as failure:
        push_files(lab.target(), refused, validate=validation_commands(), remote_root=str(root))

    assert failure.value.stage == "validation" and failure.value.rolled_back
    assert "check-config" in failure.value.argv
    assert "primary_tunnel" in failure.value.stderr  # the agent's own reader names the key
    assert on_gateway(root, AGENT).read_bytes() == agent.content


@pytest.fixture
def stand_in_systemd(root: Path):
    bindir = root / "stand-in-bin"
    install_stand_in_systemd(bindir)
    state_file = root / "run" / "daemon-state.json"
    state_file.parent.mkdir()
    # The push here delivers no vpnctl: the readiness check reads the state through the source tree's contract.
    argv = ["env", f"PATH={bindir}:/usr/sbin:/usr/bin:/sbin:/bin", f"AGENT_JSON={root}{AGENT}",
            f"STATE_FILE={state_file}", *agent_restart_command("hybrid-vpn-failover", str(state_file), 10, str(REPO))]
    yield argv
    stop_stand_in_systemd(bindir)


def test_agent_that_does_not_become_ready_fails_activation_and_is_rolled_back(lab: SshdLab, root: Path, psk: str,
                                                                             stand_in_systemd):
    activate = [stand_in_systemd, *push_tests.ACTIVATE]
    first = push_files(lab.target(), gateway_files(psk), activate=activate, remote_root=str(root))
    assert first.activated[0].startswith("env ")  # the daemon became ready: the push went on

    with pytest.raises(CommandFailed) as failure:
        push_files(lab.target(), gateway_files(psk, agent_version=2), activate=activate, remote_root=str(root))

    assert failure.value.stage == "activation" and failure.value.rolled_back
    assert "not ready" in failure.value.stderr
    assert on_gateway(root, AGENT).read_bytes() == gateway_files(psk)[0].content
    # The new set never got past the agent's restart; the restored set was activated again (the daemon is ready with
    # it, and the second activation command ran again with the old files).
    old = gateway_files(psk)[0].sha256
    assert [line.split()[0] for line in activations(root)] == [old, old]
    assert push_files(lab.target(), gateway_files(psk), activate=activate, remote_root=str(root)).changed == []
