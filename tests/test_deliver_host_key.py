"""The SSH host key from user data is a bootstrap key only (root, real sshd): the first push (the provider's create)
connects with it and installs the delivered key, every later push pins the delivered key and refuses the bootstrap
one, and a rotation (a new delivered key) connects with the previous key once and then pins the new one."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from hostconfig.deliver import DesiredFile, HostKeyMismatch
from hostconfig.deliver.changes import PREVIOUS_SUFFIX, Command
from hostconfig.deliver.gateway import host_key_files
from hostconfig.deliver.provider import GatewayConfigProvider, encode_commands, encode_files, file_hashes
from hostconfig.deliver.push import connect
from hostconfig.deliver.sshd_lab import make_keypair, prepare_sshd
from hostconfig.gateway_paths import SSH_HOST_KEY as HOST_KEY

pytestmark = pytest.mark.root
AGENT = "/etc/hybrid-vpn/agent.json"


@pytest.fixture
def gateway(netns, tmp_path):
    if os.geteuid() != 0 or shutil.which("/usr/sbin/sshd") is None:
        pytest.skip("needs root and openssh-server")
    root = tmp_path / "gateway-root"
    # sshd reads its host key where delivery writes it (under the scratch root), like /etc/ssh on a gateway.
    lab = prepare_sshd(netns("hvd"), tmp_path / "sshd", host_key=root / HOST_KEY.path.lstrip("/"))
    try:
        lab.start()
        yield lab, root
    finally:
        lab.stop()


def props(lab, root: Path, delivered: tuple[str, str], agent_version: int = 1) -> dict:
    encoded = encode_files([*host_key_files(*delivered), DesiredFile(AGENT, b'{"version": %d}\n' % agent_version,
                                                                     0o644)])
    return {
        "host": lab.link.ns_ip, "port": lab.port, "user": "root", "private_key": lab.client_private_key,
        "host_public_key": delivered[1], "bootstrap_host_public_key": lab.host_public_key,
        "files": encoded, "hashes": file_hashes(encoded, secret=False),
        "secret_hashes": file_hashes(encoded, secret=True),
        "validate": [], "remote_root": str(root), "instance_id": "111", "connect_timeout_seconds": 60,
        "activate": encode_commands([Command(tuple(lab.reload_command()), when_changed=(HOST_KEY.path,))]),
    }


def presented_key_is(lab, public: str) -> bool:
    try:
        connect(lab.target(host_public_key=public, connect_deadline_seconds=30)).close()
    except HostKeyMismatch:
        return False
    return True


def test_first_push_installs_a_host_key_that_later_pushes_pin(gateway, tmp_path):
    lab, root = gateway
    bootstrap = lab.host_public_key
    delivered = make_keypair(tmp_path / "delivered")
    provider = GatewayConfigProvider()

    state = provider.create(props(lab, root, delivered)).outs

    assert state["host_key_installed"] and state["host_public_key"] == delivered[1]
    assert presented_key_is(lab, delivered[1]) and not presented_key_is(lab, bootstrap)
    assert not Path(str(root / HOST_KEY.path.lstrip("/")) + PREVIOUS_SUFFIX).exists(), "the bootstrap key stayed"
    # A later push pins the delivered key only: no fallback to the bootstrap key is even offered.
    later = props(lab, root, delivered, agent_version=2)
    outs = provider.update("id", state, later).outs
    assert outs["changed_paths"] == [AGENT]

    # Rotation (compromised gateway runbook): a new delivered key. The push connects with the previous key once.
    rotated = make_keypair(tmp_path / "rotated")
    outs = provider.update("id", outs, props(lab, root, rotated, agent_version=2)).outs
    assert presented_key_is(lab, rotated[1]) and not presented_key_is(lab, delivered[1])
    assert outs["host_public_key"] == rotated[1]


def test_a_gateway_presenting_the_bootstrap_key_after_the_install_is_refused(gateway, tmp_path):
    lab, root = gateway
    delivered = make_keypair(tmp_path / "delivered")
    provider = GatewayConfigProvider()
    state = provider.create(props(lab, root, delivered)).outs
    # Someone who read the bootstrap key from user data answers instead of the gateway (here: sshd given a key
    # that the inputs name as the bootstrap key).
    impostor_private, impostor_public = make_keypair(tmp_path / "impostor")
    (root / HOST_KEY.path.lstrip("/")).write_text(impostor_private)
    os.kill(int((lab.workdir / "sshd.pid").read_text()), 1)  # SIGHUP: sshd re-reads its key

    with pytest.raises(HostKeyMismatch):
        provider.update("id", state, {**props(lab, root, delivered, agent_version=2),
                                      "bootstrap_host_public_key": impostor_public})
    assert (root / AGENT.lstrip("/")).read_bytes() == b'{"version": 1}\n', "files were pushed to the impostor"
