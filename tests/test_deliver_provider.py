"""GatewayConfig's dynamic provider: diff by content hash, through Pulumi's own dynamic-provider gRPC server
(`python -m pulumi.dynamic`, the process the engine starts), plus create/delete against a real sshd (root)."""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from pulumi.dynamic.dynamic import serialize_provider
from pulumi.runtime import rpc
from pulumi.runtime.proto import provider_pb2, provider_pb2_grpc

from hostconfig.deliver import DesiredFile
from hostconfig.deliver.provider import (
    _SECRET_OUTPUTS,
    UNKNOWN,
    GatewayConfigProvider,
    changed_files,
    encode_commands,
    encode_files,
    file_hashes,
)

REPO = Path(__file__).resolve().parent.parent
URN = "urn:pulumi:dev::hybrid-vpn::pulumi-python:dynamic/hybrid-vpn:GatewayConfig::gateway-config"
PSK = "psk_" + "x" * 24


def files(agent_version: int = 1, psk: str = PSK) -> list[DesiredFile]:
    return [
        DesiredFile("/etc/hybrid-vpn/agent.json", b'{"version": %d}\n' % agent_version, 0o644),
        DesiredFile("/etc/swanctl/conf.d/hybrid-vpn.conf", f'secrets {{ ike {{ secret = "{psk}" }} }}\n'.encode(),
                    0o600, secret=True),
    ]


def props(host: str = "192.0.2.2", host_public_key: str = "ssh-ed25519 AAAA", **kw) -> dict:
    encoded = encode_files(kw.pop("files", files()))
    base = {
        "host": host, "port": 22, "user": "root", "host_public_key": host_public_key,
        "files": encoded, "hashes": file_hashes(encoded, secret=False),
        "secret_hashes": file_hashes(encoded, secret=True), "validate": [], "activate": [], "remote_root": "/",
    }
    base.update(kw)
    return base


# -- pure diff ---------------------------------------------------------------------------------------------------------

def test_same_hashes_mean_no_changes():
    provider = GatewayConfigProvider()
    assert provider.diff("id", props(), props()).changes is False
    assert changed_files(props(), props()) == []


def test_one_changed_file_is_named_and_changes():
    old, new = props(), props(files=files(agent_version=2))
    assert GatewayConfigProvider().diff("id", old, new).changes is True
    assert changed_files(old, new) == ["/etc/hybrid-vpn/agent.json"]


def test_changed_secret_file_changes_without_showing_content():
    old, new = props(), props(files=files(psk="psk_" + "y" * 24))
    assert changed_files(old, new) == ["/etc/swanctl/conf.d/hybrid-vpn.conf"]
    assert PSK not in repr(new["hashes"]) + repr(new["secret_hashes"])


def test_mode_change_and_added_or_removed_files_change():
    chmod = [DesiredFile(f.path, f.content, 0o640 if not f.secret else f.mode, f.secret) for f in files()]
    assert changed_files(props(), props(files=chmod)) == ["/etc/hybrid-vpn/agent.json"]
    extra = [*files(), DesiredFile("/etc/hybrid-vpn/extra", b"x", 0o644)]
    assert changed_files(props(), props(files=extra)) == ["/etc/hybrid-vpn/extra"]
    assert changed_files(props(files=extra), props()) == ["/etc/hybrid-vpn/extra"]


def test_new_host_or_host_key_pushes_again_but_a_new_ssh_key_alone_does_not():
    provider = GatewayConfigProvider()
    assert provider.diff("id", props(), props(host="192.0.2.6")).changes is True
    assert provider.diff("id", props(), props(host_public_key="ssh-ed25519 BBBB")).changes is True
    assert provider.diff("id", props(), props(private_key="other key text")).changes is False


def test_unknown_inputs_in_preview_mean_changes():
    assert GatewayConfigProvider().diff("id", props(), props(hashes=UNKNOWN)).changes is True


def test_check_names_the_bad_property():
    result = GatewayConfigProvider().check({}, props(port=70000, host_public_key="not-a-key"))
    assert {f.property for f in result.failures} == {"port", "host_public_key"}
    assert GatewayConfigProvider().check({}, props(host_public_key=_a_public_key())).failures == []


def _a_public_key() -> str:
    import paramiko

    key = paramiko.ECDSAKey.generate()
    return f"{key.get_name()} {key.get_base64()} test"


def test_provider_pickles_small_and_by_reference():
    # The engine stores this string in the state: it must not drag module state or secrets along.
    blob = base64.b64decode(serialize_provider(GatewayConfigProvider()))
    assert b"hostconfig.deliver.provider" in blob
    assert len(blob) < 2000
    assert b"paramiko" not in blob


# -- through Pulumi's dynamic provider server --------------------------------------------------------------------------

def _serialize(value: dict):
    return asyncio.new_event_loop().run_until_complete(rpc.serialize_properties(value, {}))


@pytest.fixture
def dynamic_server():
    """The process the Pulumi engine starts for Python dynamic providers, run from the project directory."""
    proc = subprocess.Popen([sys.executable, "-u", "-m", "pulumi.dynamic"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline().strip())
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        grpc.channel_ready_future(channel).result(timeout=60)
        yield provider_pb2_grpc.ResourceProviderStub(channel)
        channel.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _with_provider(p: dict) -> dict:
    return {**p, "__provider": serialize_provider(GatewayConfigProvider())}


def test_engine_diff_same_hashes_is_diff_none(dynamic_server):
    response = dynamic_server.Diff(provider_pb2.DiffRequest(
        id="192.0.2.2:22", urn=URN, olds=_serialize(_with_provider(props())), news=_serialize(_with_provider(props()))))
    assert response.changes == provider_pb2.DiffResponse.DIFF_NONE


def test_engine_diff_one_changed_file_is_diff_some(dynamic_server):
    response = dynamic_server.Diff(provider_pb2.DiffRequest(
        id="192.0.2.2:22", urn=URN, olds=_serialize(_with_provider(props())),
        news=_serialize(_with_provider(props(files=files(agent_version=2))))))
    assert response.changes == provider_pb2.DiffResponse.DIFF_SOME


def test_engine_delete_needs_no_ssh(dynamic_server):
    # A host that does not exist (and could not answer): delete must return at once, without connecting.
    gone = _with_provider(props(host="192.0.2.254", port=2222))
    started = time.monotonic()
    dynamic_server.Delete(provider_pb2.DeleteRequest(id="192.0.2.254:2222", urn=URN, properties=_serialize(gone)),
                          timeout=30)
    assert time.monotonic() - started < 30


# -- create/update through the engine's server against a real sshd -----------------------------------------------------

@pytest.mark.root
def test_engine_create_pushes_and_state_holds_no_contents(dynamic_server, netns, tmp_path):
    if os.geteuid() != 0 or shutil.which("/usr/sbin/sshd") is None:
        pytest.skip("needs root and openssh-server")
    from hostconfig.deliver.sshd_lab import start_sshd

    lab = start_sshd(netns("hvd"), tmp_path / "sshd")
    root = tmp_path / "gateway-root"
    root.mkdir()
    psk = "psk_" + secrets.token_hex(16)
    try:
        new = _with_provider(props(
            host=lab.link.ns_ip, port=lab.port, host_public_key=lab.host_public_key, files=files(psk=psk),
            private_key=lab.client_private_key, remote_root=str(root), scrub=[psk],
            activate=encode_commands([["sh", "-c", 'echo ok >> "$1"', "sh", "{root}/activated"]]),
        ))
        created = dynamic_server.Create(provider_pb2.CreateRequest(urn=URN, properties=_serialize(new)), timeout=120)
        state = rpc.deserialize_properties(created.properties)
        assert created.id == f"{lab.link.ns_ip}:{lab.port}"
        assert state["changed_paths"] == [f.path for f in files()]
        assert (root / "etc/swanctl/conf.d/hybrid-vpn.conf").read_text().count(psk) == 1
        # The SSH key is kept for `pulumi refresh` (read() gets only the state) as a secret output, encrypted in the
        # state like the secret input it comes from; nothing else holds a key, a PSK or a file's content.
        assert "private_key" in _SECRET_OUTPUTS
        flat = repr({k: v for k, v in state.items() if k not in ("__provider", "private_key")})
        assert psk not in flat and "PRIVATE KEY" not in flat and "content_b64" not in flat
        # The next `pulumi up` with the same files: the engine's diff over (state, inputs) finds nothing.
        again = dynamic_server.Diff(provider_pb2.DiffRequest(id=created.id, urn=URN, olds=created.properties,
                                                             news=_serialize(new)))
        assert again.changes == provider_pb2.DiffResponse.DIFF_NONE
        assert (root / "activated").read_text().splitlines() == ["ok"]
    finally:
        lab.stop()


# -- drift: instance id and refresh ------------------------------------------------------------------------------------

def test_a_rebuilt_instance_with_the_same_ip_and_host_key_is_replaced():
    provider = GatewayConfigProvider()
    diff = provider.diff("id", props(instance_id="111"), props(instance_id="222"))
    assert diff.changes is True and diff.replaces == ["instance_id"]
    assert provider.diff("id", props(instance_id="111"), props(instance_id="111")).changes is False
    # State written before the instance id was an input: an update records it, no replacement.
    legacy = provider.diff("id", props(), props(instance_id="111"))
    assert legacy.changes is True and not legacy.replaces
    # Preview while the instance is being replaced: the new id is unknown, the replacement is announced.
    assert provider.diff("id", props(instance_id="111"), props(instance_id=UNKNOWN)).replaces == ["instance_id"]


@pytest.mark.root
def test_refresh_reads_the_hashes_the_gateway_holds(netns, tmp_path):
    if os.geteuid() != 0 or shutil.which("/usr/sbin/sshd") is None:
        pytest.skip("needs root and openssh-server")
    from hostconfig.deliver.sshd_lab import start_sshd

    lab = start_sshd(netns("hvd"), tmp_path / "sshd")
    root = tmp_path / "gateway-root"
    root.mkdir()
    agent, swanctl = "/etc/hybrid-vpn/agent.json", "/etc/swanctl/conf.d/hybrid-vpn.conf"
    try:
        inputs = props(host=lab.link.ns_ip, port=lab.port, host_public_key=lab.host_public_key,
                       private_key=lab.client_private_key, remote_root=str(root), instance_id="111")
        provider = GatewayConfigProvider()
        state = provider.create(inputs).outs
        refreshed = provider.read("id", state).outs
        assert refreshed["hashes"] == state["hashes"] and refreshed["secret_hashes"] == state["secret_hashes"]
        assert provider.diff("id", refreshed, inputs).changes is False

        (root / agent.lstrip("/")).write_text('{"edited": "on the gateway"}\n')  # an edit by hand
        (root / swanctl.lstrip("/")).chmod(0o644)

        refreshed = provider.read("id", state).outs
        assert refreshed["hashes"][agent] != state["hashes"][agent]
        assert refreshed["secret_hashes"][swanctl].endswith("mode:0644 not-activated")
        assert changed_files(refreshed, inputs) == [agent, swanctl]
        # the next `pulumi up` pushes both again, and a refresh then finds the gateway as pushed
        provider.update("id", refreshed, inputs)
        again = provider.read("id", state).outs
        assert again["hashes"] == state["hashes"] and again["secret_hashes"] == state["secret_hashes"]
    finally:
        lab.stop()
