"""The push as one transaction on the gateway (remote_txn.py), against a real sshd in a network namespace (root):
a cut connection after any remote step still converges on the next push, an install whose activation died is
activated by the next push, concurrent pushes serialise on the gateway's lock, secret `.prev` copies go away, temp
files are created with their mode by the SFTP OPEN itself, and no error chains a secret."""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from pathlib import Path

import pytest
import test_deliver_push as push_tests  # the same sshd fixture and gateway file set as the push tests
from test_deliver_push import AGENT, SWANCTL, VALIDATE, activations, gateway_files, leftovers, on_gateway

from hostconfig.deliver import CommandFailed, DeliveryError, push_files, remote_txn
from hostconfig.deliver.changes import PREVIOUS_SUFFIX, TEMP_MARKER
from hostconfig.deliver.sshd_lab import SshdLab, prepare_sshd
from hostconfig.gateway_paths import DELIVERY_STATE_DIR

pytestmark = pytest.mark.root
lab, root, psk = push_tests.lab, push_tests.root, push_tests.psk  # fixtures

# Records the hashes of the files charon and the agent would load, so the test sees what was ACTIVATED. The sleep
# keeps a transaction running long enough for a cut connection to land in the middle of it.
RECORD = ('sleep 0.3; echo "$(sha256sum < "$2" | cut -c1-64) $(sha256sum < "$3" | cut -c1-64)" >> "$1"')
ACTIVATE = [["sh", "-c", RECORD, "sh", "{root}/activation.log", "{root}" + SWANCTL, "{root}" + AGENT]]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def expected_activation(files) -> str:
    by_path = {f.path: f.content for f in files}
    return f"{sha(by_path[SWANCTL])} {sha(by_path[AGENT])}"


def assert_converged(root: Path, files) -> None:
    for f in files:
        placed = on_gateway(root, f.path)
        assert placed.read_bytes() == f.content, f"{f.path} on disk is not the pushed content"
        assert placed.stat().st_mode & 0o7777 == f.mode
    assert activations(root)[-1] == expected_activation(files), "the last activation did not load the pushed files"
    assert leftovers(root, TEMP_MARKER) == []
    # (A result nobody read, of a transaction whose client went away, is removed by a later transaction.)
    manifests = [p for p in on_gateway(root, DELIVERY_STATE_DIR.path).glob("txn-*")
                 if not p.name.endswith(".result.json")]
    assert manifests == [], "a manifest was left behind"


def push(lab: SshdLab, root: Path, files, **kw):
    return push_files(lab.target(), files, validate=VALIDATE, activate=ACTIVATE, remote_root=str(root),
                      stale_upload_seconds=0, **kw)


def test_cut_after_every_remote_step_converges_on_the_next_push(lab: SshdLab, root: Path, psk: str):
    old = gateway_files(psk)
    rotated = gateway_files("psk_rotated_" + psk[4:], agent_version=2)  # a PSK rotation plus an agent change
    push(lab, root, old)
    steps: list[str] = []
    push(lab, root, rotated, on_step=lambda name, _client: steps.append(name))
    assert steps == ["state", f"upload {AGENT}", f"upload {SWANCTL}", "manifest", "launch", "result"]

    for cut_at in steps:
        push(lab, root, old)
        assert_converged(root, old)

        def cut(name, client, cut_at=cut_at):
            if name == cut_at:
                client.get_transport().close()  # as with a dropped link or a killed `pulumi up`

        if cut_at == "result":
            push(lab, root, rotated, on_step=cut)  # the result had arrived: nothing was left to lose
        else:
            with pytest.raises(DeliveryError) as failure:
                push(lab, root, rotated, on_step=cut)
            assert "connection lost" in str(failure.value), cut_at
        push(lab, root, rotated)
        assert_converged(root, rotated)


def test_the_manifest_is_gone_before_the_result_appears(tmp_path: Path, monkeypatch):
    """The client returns as soon as the result exists: a manifest removed after it was seen on a loaded host by
    the next check ('a manifest was left behind'). Checked at the moment the result is written."""
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    manifest_path = state_dir / "txn-0123456789ab.json"
    result_path = state_dir / "txn-0123456789ab.result.json"
    manifest_path.write_text(json.dumps({
        "state_dir": str(state_dir), "manifest": str(manifest_path), "result": str(result_path), "timeout": 30,
        "cloud_init": str(tmp_path / "no-cloud-init"), "cloud_init_done": str(tmp_path / "boot-finished"),
        "files": [], "validate": [], "activate": []}))
    seen: dict[str, bool] = {}
    write_atomic = remote_txn._write_atomic

    def watching(path: str, data: dict) -> None:
        if path == str(result_path):
            seen["manifest_when_result_written"] = os.path.exists(manifest_path)
        write_atomic(path, data)

    monkeypatch.setattr(remote_txn, "_write_atomic", watching)
    monkeypatch.setattr(remote_txn.signal, "signal", lambda *_: None)  # cmd_apply's SIG_IGN is for the gateway

    assert remote_txn.cmd_apply(str(manifest_path)) == 0
    assert json.loads(result_path.read_text())["status"] == "ok"
    assert seen == {"manifest_when_result_written": False}, "the result was published while the manifest existed"


def test_install_whose_activation_died_is_activated_by_the_next_push(lab: SshdLab, root: Path, psk: str):
    """A PSK rotation whose activation is killed after the install (power loss, OOM, a killed session): the files
    are on disk, charon still runs the old PSK. The next push must activate, not report 'up to date'."""
    crash = root / "crash-once"
    # Kills its parent (the process running the transaction) on the first activation only.
    die = 'if [ -e "$1" ]; then rm -f "$1"; kill -KILL "$PPID"; sleep 5; fi'
    activate = [["sh", "-c", die, "sh", str(crash)], *ACTIVATE]
    old = gateway_files(psk)
    rotated = gateway_files("psk_rotated_" + psk[4:])
    push_files(lab.target(), old, validate=VALIDATE, activate=activate, remote_root=str(root))
    crash.touch()

    with pytest.raises(DeliveryError):
        push_files(lab.target(), rotated, validate=VALIDATE, activate=activate, remote_root=str(root))
    assert on_gateway(root, SWANCTL).read_bytes() == rotated[1].content, "the install happened before the crash"
    assert activations(root)[-1] == expected_activation(old), "the rotated PSK was never activated"

    report = push_files(lab.target(), rotated, validate=VALIDATE, activate=activate, remote_root=str(root))

    assert report.changed == []  # nothing to upload ...
    assert report.activated  # ... but activation ran
    assert activations(root)[-1] == expected_activation(rotated)
    again = push_files(lab.target(), rotated, validate=VALIDATE, activate=activate, remote_root=str(root))
    assert again.activated == [] and len(activations(root)) == 2  # the first push and the rotation; no more


def test_concurrent_pushes_take_turns_on_the_gateway(lab: SshdLab, root: Path, psk: str):
    # mkdir fails while another activation runs: proof that two transactions never overlap.
    exclusive = ('mkdir "$1" || { echo "another activation is running" >&2; exit 9; }; sleep 1; rmdir "$1"')
    activate = [["sh", "-c", exclusive, "sh", "{root}/activating"], *ACTIVATE]
    push_files(lab.target(), gateway_files(psk), activate=activate, remote_root=str(root))
    sets = [gateway_files(psk, agent_version=v) for v in (2, 3, 4)]
    errors: list[BaseException] = []
    start = threading.Barrier(len(sets))

    def run(files):
        start.wait()
        try:
            push_files(lab.target(), files, activate=activate, remote_root=str(root))
        except BaseException as exc:  # handed to the main thread
            errors.append(exc)

    workers = [threading.Thread(target=run, args=(files,)) for files in sets]
    for w in workers:
        w.start()
    for w in workers:
        w.join(300)
    assert errors == [], [str(e) for e in errors]
    final = [s for s in sets if on_gateway(root, AGENT).read_bytes() == s[0].content]
    assert len(final) == 1
    assert activations(root)[-1] == expected_activation(final[0])
    assert leftovers(root, TEMP_MARKER) == []


def test_previous_copy_of_a_secret_file_is_removed_after_activation(lab: SshdLab, root: Path, psk: str):
    push(lab, root, gateway_files(psk))
    push(lab, root, gateway_files("psk_rotated_" + psk[4:], agent_version=2))

    assert not Path(str(on_gateway(root, SWANCTL)) + PREVIOUS_SUFFIX).exists(), "the old PSK stays on disk"
    assert Path(str(on_gateway(root, AGENT)) + PREVIOUS_SUFFIX).exists()  # non-secret copies stay for diagnosis
    assert not [p for p in root.rglob("*") if p.is_file() and psk.encode() in p.read_bytes()]


def test_temp_file_of_a_0600_file_is_created_0600_by_the_sftp_open(netns, tmp_path, root: Path, psk: str):
    sftp_log = tmp_path / "sftp.log"
    lab = prepare_sshd(netns("hvd"), tmp_path / "sshd", sftp_log=sftp_log)
    try:
        lab.start()
        push(lab, root, gateway_files(psk))
    finally:
        lab.stop()

    # sftp-server logs the mode each OPEN asked for; with umask 0 on the server, that mode is what open(2) used.
    opens = re.findall(r'open "([^"]+)" flags (\S+) mode (0[0-7]+)', sftp_log.read_text())
    secret_temp = [mode for path, _flags, mode in opens if TEMP_MARKER in path and "hybrid-vpn.conf" in path]
    assert secret_temp == ["0600"], opens
    manifest = [mode for path, _flags, mode in opens if "/txn-" in path]
    assert manifest == ["0600"]


def _chain(exc: BaseException | None) -> list[BaseException]:
    seen: list[BaseException] = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def test_failing_pushes_never_chain_a_secret(lab: SshdLab, root: Path):
    secret = "AKIAsecretLooking_psk.0123456789abcdef"
    files = gateway_files(secret)
    leak = 'cat "$1" >&2; echo "ERROR secret=$(grep -o \'secret = .*\' "$1")" >&2; exit 1'
    failures: list[BaseException] = []
    for kw in ({"validate": [["sh", "-c", leak, "sh", "{root}" + SWANCTL]]},
               {"activate": [["sh", "-c", leak, "sh", "{root}" + SWANCTL]]}):
        with pytest.raises(CommandFailed) as failure:
            push_files(lab.target(), files, remote_root=str(root), **kw)
        failures.append(failure.value)

    def cut(name, client):
        if name == "launch":
            client.get_transport().close()

    with pytest.raises(DeliveryError) as failure:
        push_files(lab.target(), files, remote_root=str(root), on_step=cut)
    failures.append(failure.value)

    for top in failures:
        for exc in _chain(top):
            text = f"{exc!s} {exc.args!r} {getattr(exc, 'stderr', '')}"
            assert secret not in text, f"{type(exc).__name__} in the chain of {type(top).__name__} holds the PSK"
        assert top.__cause__ is None and top.__context__ is None


# A cloud-init in its first boot: `status` says running, `status --wait` returns once the boot is over (a flag file).
# (This host's real cloud-init says "not run": every other push here shows that case does not wait.)
CLOUD_INIT = """#!/bin/sh
if [ "$2" = --wait ]; then while [ ! -e "$(dirname "$0")/boot-done" ]; do sleep 0.1; done; echo "status: done"
elif [ -e "$(dirname "$0")/boot-done" ]; then echo "status: done"; else echo "status: running"; fi
"""


def test_push_waits_for_cloud_init_before_installing(lab: SshdLab, root: Path, psk: str):
    stand_in = root / "bin" / "cloud-init"
    stand_in.parent.mkdir()
    stand_in.write_text(CLOUD_INIT)
    stand_in.chmod(0o755)
    validated = root / "validated"
    validate = [["sh", "-c", 'touch "$1"', "sh", str(validated)]]
    result: dict = {}

    def run():
        try:
            result["report"] = push_files(lab.target(), gateway_files(psk), validate=validate, activate=ACTIVATE,
                                          remote_root=str(root), cloud_init=str(stand_in))
        except Exception as exc:  # handed to the main thread
            result["error"] = exc

    worker = threading.Thread(target=run)
    worker.start()
    try:
        manifest_dir = on_gateway(root, DELIVERY_STATE_DIR.path)
        deadline = time.monotonic() + 120
        while not list(manifest_dir.glob("txn-*.json")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert list(manifest_dir.glob("txn-*.json")), "the transaction never started"
        time.sleep(1.0)  # give a transaction that would not wait the time to install and validate
        assert not on_gateway(root, AGENT).exists() and not validated.exists(), "installed during cloud-init's boot"
    finally:
        (stand_in.parent / "boot-done").touch()
        worker.join(120)
    assert "error" not in result, result.get("error")
    assert validated.exists() and activations(root)[-1] == expected_activation(gateway_files(psk))
