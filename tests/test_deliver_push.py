"""push_files against a real sshd in a network namespace (root): first/no-op/changed push, rollback, host key,
timeouts, and secrets kept out of process arguments and logs."""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from hostconfig.deliver import (
    CommandFailed,
    DesiredFile,
    GatewayUnreachable,
    HostKeyMismatch,
    push_files,
)
from hostconfig.deliver.changes import PREVIOUS_SUFFIX, TEMP_MARKER
from hostconfig.deliver.sshd_lab import SshdLab, make_keypair, prepare_sshd

pytestmark = pytest.mark.root

AGENT = "/etc/hybrid-vpn/agent.json"
SWANCTL = "/etc/swanctl/conf.d/hybrid-vpn.conf"
NFT = "/etc/hybrid-vpn/nftables.nft"
VPNCTL = "/usr/local/sbin/vpnctl"

GOOD_NFT = b"""table inet hybrid_vpn
delete table inet hybrid_vpn
table inet hybrid_vpn {
    chain forward {
        type filter hook forward priority filter; policy accept;
        iifname "eth1" oifname "vti-aws*" accept
    }
}
"""
BROKEN_NFT = b"""table inet hybrid_vpn {
    chain forward {
        type filter hook forward priority filter; policy accept;
        iifname "eth1" oifname "vti-aws*" accpet
    }
}
"""
VALIDATE = [["nft", "-c", "-f", "{root}" + NFT]]
ACTIVATION_LOG = "{root}/activation.log"
ACTIVATE = [["sh", "-c", 'echo "$(sha256sum < "$2")" >> "$1"', "sh", ACTIVATION_LOG, "{root}" + AGENT]]


def _requirements() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, sshd)")
    for tool in ("/usr/sbin/sshd", "ssh-keygen", "nft"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (Debian packages openssh-server, nftables)")


def gateway_files(psk: str, agent_version: int = 1, nft: bytes = GOOD_NFT) -> list[DesiredFile]:
    swanctl = (
        'connections {\n  tunnel1 {\n    remote_addrs = 198.51.100.1\n  }\n}\n'
        f'secrets {{\n  ike-tunnel1 {{\n    id = 198.51.100.1\n    secret = "{psk}"\n  }}\n}}\n'
    ).encode()
    return [
        DesiredFile(AGENT, b'{"version": %d}\n' % agent_version, 0o644),
        DesiredFile(SWANCTL, swanctl, 0o600, secret=True),
        DesiredFile(NFT, nft, 0o644),
        DesiredFile(VPNCTL, b"#!/bin/sh\necho vpnctl\n", 0o755),
    ]


@pytest.fixture
def psk() -> str:
    return "psk_" + secrets.token_hex(16)


@pytest.fixture
def lab(netns, tmp_path):
    _requirements()
    sshd = prepare_sshd(netns("hvd"), tmp_path / "sshd")
    try:
        sshd.start()
        yield sshd
    finally:
        sshd.stop()


@pytest.fixture
def root(tmp_path) -> Path:
    path = tmp_path / "gateway-root"
    path.mkdir()
    return path


def on_gateway(root: Path, path: str) -> Path:
    return root / path.lstrip("/")


def activations(root: Path) -> list[str]:
    log = root / "activation.log"
    return log.read_text().splitlines() if log.exists() else []


def leftovers(root: Path, marker: str) -> list[str]:
    return [str(p) for p in root.rglob(f"*{marker}*")]


def test_first_push_installs_every_file_with_its_mode(lab: SshdLab, root: Path, psk: str):
    files = gateway_files(psk)
    report = push_files(lab.target(), files, validate=VALIDATE, activate=ACTIVATE, remote_root=str(root))

    assert report.changed_paths == [f.path for f in files]
    assert all(c.reasons == ("new",) and c.previous_sha256 is None for c in report.changed)
    for f, change in zip(files, report.changed, strict=True):
        placed = on_gateway(root, f.path)
        assert placed.read_bytes() == f.content
        st = placed.stat()
        assert st.st_mode & 0o7777 == f.mode
        assert (st.st_uid, st.st_gid) == (0, 0)
        assert change.sha256 == f.sha256
    assert report.validated == [f"nft -c -f {root}{NFT}"]
    assert len(activations(root)) == 1
    assert leftovers(root, TEMP_MARKER) == []
    # The report carries hashes, never contents.
    assert psk not in repr(report.as_dict())


def test_noop_push_uploads_and_activates_nothing(lab: SshdLab, root: Path, psk: str):
    files = gateway_files(psk)
    push_files(lab.target(), files, validate=VALIDATE, activate=ACTIVATE, remote_root=str(root))
    before = {f.path: on_gateway(root, f.path).stat() for f in files}

    report = push_files(lab.target(), files, validate=VALIDATE, activate=ACTIVATE, remote_root=str(root))

    assert report.changed == []
    assert report.unchanged == [f.path for f in files]
    assert report.validated == [] and report.activated == []
    assert len(activations(root)) == 1
    for f in files:
        after = on_gateway(root, f.path).stat()
        assert (after.st_ino, after.st_mtime_ns) == (before[f.path].st_ino, before[f.path].st_mtime_ns)


def test_changed_push_replaces_only_the_changed_file_and_keeps_the_previous(lab: SshdLab, root: Path, psk: str):
    first = gateway_files(psk, agent_version=1)
    push_files(lab.target(), first, validate=VALIDATE, activate=ACTIVATE, remote_root=str(root))
    inodes = {f.path: on_gateway(root, f.path).stat().st_ino for f in first}

    second = gateway_files(psk, agent_version=2)
    report = push_files(lab.target(), second, validate=VALIDATE, activate=ACTIVATE, remote_root=str(root))

    assert report.changed_paths == [AGENT]
    assert report.changed[0].reasons == ("content",)
    assert report.changed[0].previous_sha256 == first[0].sha256
    assert on_gateway(root, AGENT).read_bytes() == b'{"version": 2}\n'
    assert Path(str(on_gateway(root, AGENT)) + PREVIOUS_SUFFIX).read_bytes() == b'{"version": 1}\n'
    for f in second[1:]:
        assert on_gateway(root, f.path).stat().st_ino == inodes[f.path], f"{f.path} was rewritten"
    assert len(activations(root)) == 2
    # The activation saw the new agent config.
    assert activations(root)[-1].split()[0] == second[0].sha256


def test_drifted_mode_is_repaired(lab: SshdLab, root: Path, psk: str):
    files = gateway_files(psk)
    push_files(lab.target(), files, remote_root=str(root))
    on_gateway(root, SWANCTL).chmod(0o644)

    report = push_files(lab.target(), files, remote_root=str(root))

    assert report.changed_paths == [SWANCTL]
    assert report.changed[0].reasons == ("mode",)
    assert on_gateway(root, SWANCTL).stat().st_mode & 0o7777 == 0o600


def test_failed_validation_rolls_back_and_leaves_the_previous_files(lab: SshdLab, root: Path, psk: str):
    good = gateway_files(psk, agent_version=1)
    push_files(lab.target(), good, validate=VALIDATE, activate=ACTIVATE, remote_root=str(root))
    extra = DesiredFile("/etc/hybrid-vpn/new-file.conf", b"new\n", 0o644)
    broken = [*gateway_files(psk, agent_version=2, nft=BROKEN_NFT), extra]

    with pytest.raises(CommandFailed) as failure:
        push_files(lab.target(), broken, validate=VALIDATE, activate=ACTIVATE, remote_root=str(root))

    err = failure.value
    assert err.stage == "validation" and err.rolled_back
    assert err.argv == ["nft", "-c", "-f", f"{root}{NFT}"]
    assert "nft -c -f" in str(err) and "accpet" in err.stderr  # nft's own message names the bad token
    for f in good:
        assert on_gateway(root, f.path).read_bytes() == f.content
        assert on_gateway(root, f.path).stat().st_mode & 0o7777 == f.mode
    assert not on_gateway(root, extra.path).exists(), "a file new in the failed push must be removed"
    assert len(activations(root)) == 1, "nothing may be activated when validation fails"
    assert leftovers(root, TEMP_MARKER) == []
    # The next good push finds everything as it was: nothing to do.
    assert push_files(lab.target(), good, validate=VALIDATE, activate=ACTIVATE, remote_root=str(root)).changed == []


def test_failed_activation_restores_and_reactivates_the_previous_files(lab: SshdLab, root: Path, psk: str):
    # Activation refuses agent.json version 2, like a daemon that fails to start on a bad config.
    refuse_v2 = 'if grep -q \'"version": 2\' "$1"; then echo "bad agent config" >&2; exit 3; fi'
    activate = [*ACTIVATE, ["sh", "-c", refuse_v2, "sh", "{root}" + AGENT]]
    good = gateway_files(psk, agent_version=1)
    push_files(lab.target(), good, activate=activate, remote_root=str(root))

    with pytest.raises(CommandFailed) as failure:
        push_files(lab.target(), gateway_files(psk, agent_version=2), activate=activate, remote_root=str(root))

    assert failure.value.stage == "activation" and failure.value.exit_status == 3
    assert "bad agent config" in str(failure.value)
    assert on_gateway(root, AGENT).read_bytes() == good[0].content
    # first push, the failed activation (new set), then the re-activation of the old set
    assert [line.split()[0] for line in activations(root)] == [good[0].sha256, gateway_files(psk, 2)[0].sha256,
                                                              good[0].sha256]


def test_error_output_is_scrubbed_of_secrets(lab: SshdLab, root: Path, psk: str):
    leaky = [["sh", "-c", 'cat "$1" >&2; exit 1', "sh", "{root}" + SWANCTL]]

    with pytest.raises(CommandFailed) as failure:
        push_files(lab.target(), gateway_files(psk), validate=leaky, remote_root=str(root))

    assert psk not in str(failure.value) and psk not in failure.value.stderr
    assert "[redacted]" in failure.value.stderr
    assert "remote_addrs" in failure.value.stderr  # the rest of the message stays readable
    assert not on_gateway(root, SWANCTL).exists()


def test_wrong_host_key_is_refused_with_both_fingerprints(lab: SshdLab, root: Path, tmp_path: Path, psk: str):
    _, other_public = make_keypair(tmp_path / "other_host_key")

    with pytest.raises(HostKeyMismatch) as failure:
        push_files(lab.target(host_public_key=other_public), gateway_files(psk), remote_root=str(root))

    def openssh_fingerprint(pub_path: Path) -> str:
        return subprocess.run(["ssh-keygen", "-lf", str(pub_path)], check=True, capture_output=True,
                              text=True).stdout.split()[1]

    message = str(failure.value)
    assert openssh_fingerprint(tmp_path / "other_host_key.pub") in message  # expected
    assert openssh_fingerprint(lab.workdir / "ssh_host_ed25519_key.pub") in message  # presented
    assert f"{lab.link.ns_ip}:{lab.port}" in message
    assert list(root.iterdir()) == [], "nothing may be written to a host whose key does not match"


def test_unreachable_host_times_out_with_a_clear_message(netns, tmp_path, psk: str):
    _requirements()
    silent = prepare_sshd(netns("hvd"), tmp_path / "sshd")  # keys and a link, but sshd never started
    deadline = 2.0
    try:
        started = time.monotonic()
        with pytest.raises(GatewayUnreachable) as failure:
            push_files(silent.target(connect_deadline_seconds=deadline), gateway_files(psk),
                       remote_root=str(tmp_path / "root"))
        elapsed = time.monotonic() - started
    finally:
        silent.stop()
    message = str(failure.value)
    assert f"{silent.link.ns_ip}:{silent.port}" in message
    assert "after waiting" in message and "deadline 2s" in message
    # Bounded: it gave up at the deadline (generous slack for a loaded CI machine), after retrying.
    assert deadline <= elapsed < deadline + 20
    assert "attempt(s)" in message and "1 attempt(s)" not in message


def test_push_waits_for_a_booting_host(netns, tmp_path, root: Path, psk: str, caplog):
    _requirements()
    lab = prepare_sshd(netns("hvd"), tmp_path / "sshd")
    refused_once = threading.Event()

    class Watch(logging.Handler):
        def emit(self, record):
            if "not reachable yet" in record.getMessage():
                refused_once.set()

    caplog.set_level(logging.INFO, logger="hostconfig.deliver.push")
    watch = Watch()
    logging.getLogger("hostconfig.deliver.push").addHandler(watch)
    result: dict = {}

    def run():
        try:
            result["report"] = push_files(lab.target(connect_deadline_seconds=120), gateway_files(psk),
                                          remote_root=str(root))
        except Exception as exc:  # handed to the main thread
            result["error"] = exc

    worker = threading.Thread(target=run)
    try:
        worker.start()
        assert refused_once.wait(60), "push never retried a refused connection"
        lab.start()  # the "instance" finishes booting
        worker.join(120)
    finally:
        logging.getLogger("hostconfig.deliver.push").removeHandler(watch)
        worker.join(120)
        lab.stop()
    assert "error" not in result, result.get("error")
    assert len(result["report"].changed) == 4


def _cmdlines() -> list[bytes]:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    found.append(fh.read())
            except OSError:
                pass
    return found


def test_secrets_never_in_process_arguments_or_logs(lab: SshdLab, root: Path, psk: str, caplog):
    caplog.set_level(logging.DEBUG)  # paramiko's transport and SFTP debug logs included
    key_body = "".join(lab.client_private_key.strip().splitlines()[1:-1])
    secret_markers = [psk.encode(), key_body[:40].encode(), key_body[-40:].encode()]
    flag = root / "scanner-saw-activation"
    stop = threading.Event()
    seen = {"scans": 0, "leaks": [], "nft": False, "sshd_session": False}

    def scan():
        while not stop.is_set():
            for cmdline in _cmdlines():
                if any(marker in cmdline for marker in secret_markers):
                    seen["leaks"].append(cmdline.replace(b"\0", b" ")[:200])
                if b"nft\0-c\0-f" in cmdline:
                    seen["nft"] = True
                if b"sshd" in cmdline and b"root" in cmdline:
                    seen["sshd_session"] = True
                if b"wait-for-scanner" in cmdline:
                    flag.touch()  # the activation below waits for this: proof the scan ran mid-push
            seen["scans"] += 1

    # Validation that stays alive until the scanner has seen it, so the scan provably overlaps the push.
    validate = [*VALIDATE, ["sh", "-c", 'i=0; while [ ! -e "$1" ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done',
                            "wait-for-scanner", str(flag)]]
    scanner = threading.Thread(target=scan)
    scanner.start()
    try:
        push_files(lab.target(), gateway_files(psk), validate=validate, activate=ACTIVATE, remote_root=str(root))
        push_files(lab.target(), gateway_files(psk, agent_version=2), validate=validate, remote_root=str(root))
    finally:
        stop.set()
        scanner.join(30)

    assert flag.exists(), "the process scan never overlapped the push"
    assert seen["scans"] > 1 and seen["sshd_session"]
    assert seen["leaks"] == [], seen["leaks"]
    assert psk not in lab.log(), "sshd -e output (LogLevel DEBUG3) contains the PSK"
    assert "scanner" in lab.log() or "session" in lab.log()  # the log did record the sessions
    assert psk not in caplog.text and key_body[:40] not in caplog.text
    assert "hybrid-vpn.conf" in caplog.text  # the logs did talk about the secret file, just not its content


def test_real_gateway_files_pass_the_real_validation(lab: SshdLab, root: Path):
    """The renderer's files plus the vpnctl zipapp, validated by nft -c and vpnctl check-config on the host."""
    import json

    from hostconfig.deliver.gateway import validation_commands, vpnctl_file

    plan_mod = pytest.importorskip("hostconfig.plan")
    render_mod = pytest.importorskip("hostconfig.render")
    fixture = Path(__file__).resolve().parent / "fixtures" / "host_config.default.json"
    if not fixture.exists():
        pytest.skip("tests/fixtures/host_config.default.json not in the tree")
    plan = plan_mod.GatewayPlan.from_host_config(json.loads(fixture.read_text()))
    files = [*render_mod.render_gateway_files(plan), vpnctl_file()]

    report = push_files(lab.target(), files, validate=validation_commands(), remote_root=str(root),
                        secret_values=plan.secrets())

    assert sorted(report.changed_paths) == sorted(f.path for f in files)
    assert len(report.validated) == 2  # nft -c, vpnctl check-config
    assert on_gateway(root, "/etc/swanctl/conf.d/hybrid-vpn.conf").stat().st_mode & 0o777 == 0o600
    assert on_gateway(root, "/usr/local/sbin/vpnctl").stat().st_mode & 0o777 == 0o755
    again = push_files(lab.target(), files, validate=validation_commands(), remote_root=str(root))
    assert again.changed == [] and again.validated == []
