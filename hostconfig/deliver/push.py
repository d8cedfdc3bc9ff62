"""Push rendered files to the gateway over SSH/SFTP: pinned host key, atomic writes, validation, rollback.

Pure paramiko, no Pulumi: the Pulumi resource in provider.py and the benchmarks call `push_files`.
Contents travel only inside SFTP writes; command lines carry paths and argv only, never file contents or secrets.
"""

from __future__ import annotations

import base64
import binascii
import errno
import hashlib
import io
import json
import logging
import secrets as _random
import shlex
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import paramiko

from hostconfig import gateway_paths
from hostconfig.deliver.changes import (
    Command,
    DesiredFile,
    RemoteFileState,
    RenderedFileLike,
    Scrubber,
    check_unique_paths,
    parse_state_line,
    plan_changes,
    remote_path,
    temp_path,
)
from hostconfig.deliver.remote_txn import ACTIVATED_RECORD, RESULT_SUFFIX

logger = logging.getLogger(__name__)

# Connection errors that mean "not up yet" while the instance boots; anything else is final.
_RETRYABLE_ERRNOS = {
    errno.ECONNREFUSED,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.ETIMEDOUT,
    errno.ECONNRESET,
    errno.ECONNABORTED,
    errno.EHOSTDOWN,
}
_FIRST_BACKOFF_SECONDS = 0.25
_MAX_BACKOFF_SECONDS = 8.0
_MAX_ATTEMPT_SECONDS = 15.0

_REMOTE_PROGRAM = (Path(__file__).with_name("remote_txn.py")).read_text()
# A push that finds the gateway changed under it (another push, an edit) plans again, this many times.
_MAX_PLANS = 3

class DeliveryError(Exception):
    """Base of every delivery failure; messages name the host and never carry file contents or secrets."""


class TransportLost(DeliveryError):
    """The SSH connection is gone (dropped, timed out, closed)."""


class HostKeyMismatch(DeliveryError):
    presented: paramiko.PKey | None = None  # the key the server showed, when it showed one

    @classmethod
    def of(cls, presented: paramiko.PKey, message: str) -> HostKeyMismatch:
        error = cls(message)
        error.presented = presented
        return error


class GatewayUnreachable(DeliveryError):
    pass


class AuthenticationFailed(DeliveryError):
    pass


class CommandFailed(DeliveryError):
    """A validation or activation command failed; the files were restored (see `rolled_back`)."""

    def __init__(self, message: str, *, stage: str, argv: list[str], exit_status: int, stderr: str,
                 rolled_back: bool, rollback_problem: str | None = None):
        super().__init__(message)
        self.stage = stage
        self.argv = argv
        self.exit_status = exit_status
        self.stderr = stderr
        self.rolled_back = rolled_back
        self.rollback_problem = rollback_problem


@dataclass(frozen=True)
class SshTarget:
    """Where and how to connect. `private_key` is key text held in memory only; None means use the ssh-agent."""

    host: str
    host_public_key: str  # OpenSSH public key line, e.g. "ssh-ed25519 AAAA... comment"
    port: int = 22
    user: str = "root"
    private_key: str | None = field(default=None, repr=False)
    connect_deadline_seconds: float = 300.0
    command_timeout_seconds: float = 300.0
    # Accepted only when the gateway does not present host_public_key: the key a push is about to replace (the
    # bootstrap key from user data, or the previously delivered key during a rotation). Also pinned, never TOFU.
    fallback_public_key: str | None = None

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class FileChange:
    path: str
    sha256: str
    mode: int
    previous_sha256: str | None
    reasons: tuple[str, ...]


@dataclass
class PushReport:
    """What a push did. Paths, hashes and modes only: never contents."""

    target: str
    changed: list[FileChange]
    unchanged: list[str]
    validated: list[str]
    activated: list[str]
    connect_seconds: float
    total_seconds: float

    @property
    def changed_paths(self) -> list[str]:
        return [c.path for c in self.changed]

    def as_dict(self) -> dict:
        return {
            "target": self.target,
            "changed": [
                {"path": c.path, "sha256": c.sha256, "mode": f"{c.mode:04o}", "previous_sha256": c.previous_sha256,
                 "reasons": list(c.reasons)}
                for c in self.changed
            ],
            "unchanged": list(self.unchanged),
            "validated": list(self.validated),
            "activated": list(self.activated),
            "connect_seconds": round(self.connect_seconds, 3),
            "total_seconds": round(self.total_seconds, 3),
        }


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH-style SHA256 fingerprint (what `ssh-keygen -lf` prints)."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def parse_public_key(line: str) -> paramiko.PKey:
    """Parse an OpenSSH public key line ("<type> <base64> [comment]") into a paramiko key."""
    parts = line.strip().split()
    if len(parts) < 2:
        raise ValueError(
            "host public key: expected an OpenSSH public key line, e.g. 'ssh-ed25519 AAAAC3Nza... gw', "
            f"got {len(parts)} field(s)"
        )
    try:
        blob = base64.b64decode(parts[1], validate=True)
        return paramiko.PKey.from_type_string(parts[0], blob)
    except (binascii.Error, paramiko.SSHException, ValueError) as exc:
        raise ValueError(
            f"host public key of type {parts[0]!r} could not be parsed ({exc}); "
            "expected e.g. 'ssh-ed25519 AAAAC3Nza...'"
        ) from None


def load_private_key(text: str) -> paramiko.PKey:
    """Private key from OpenSSH/PEM text in memory (never written to disk, never logged)."""
    errors = []
    for key_class in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return key_class.from_private_key(io.StringIO(text))
        except (paramiko.SSHException, ValueError) as exc:
            errors.append(f"{key_class.__name__}: {type(exc).__name__}")
    raise ValueError(
        "ssh private key: not an unencrypted OpenSSH or PEM private key (ed25519, ecdsa or rsa), "
        "e.g. the text of a file made by `ssh-keygen -t ed25519 -N ''`; tried " + ", ".join(errors)
    )


def _is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        return True
    if isinstance(exc, (socket.timeout, TimeoutError, EOFError, ConnectionError)):
        return True
    if isinstance(exc, OSError) and exc.errno in _RETRYABLE_ERRNOS:
        return True
    # sshd accepting TCP before it is ready (or being restarted by cloud-init) drops the banner exchange.
    if isinstance(exc, paramiko.SSHException) and not isinstance(
        exc, (paramiko.BadHostKeyException, paramiko.AuthenticationException)
    ):
        text = str(exc)
        return "banner" in text or "Connection reset" in text or "EOF" in text
    return False


def connect(target: SshTarget, *, clock=time.monotonic, sleep=time.sleep) -> paramiko.SSHClient:
    """Connect with the pinned host key (or, if the gateway presents exactly the fallback key, with that one)."""
    try:
        return _connect_pinned(target, clock=clock, sleep=sleep)
    except HostKeyMismatch as mismatch:
        if target.fallback_public_key is None:
            raise
        presented = mismatch.presented
    fallback = parse_public_key(target.fallback_public_key)
    if presented is None or presented.asbytes() != fallback.asbytes():
        pinned = fingerprint(parse_public_key(target.host_public_key))
        raise HostKeyMismatch(
            f"host key of {target.address} is neither the pinned key ({pinned}) nor the key it replaces "
            f"({fingerprint(fallback)}); refusing to connect (possible interception)"
        )
    logger.info("%s presents the key this push replaces (%s); connecting with it to install the pinned key",
                target.address, fingerprint(fallback))
    return _connect_pinned(replace(target, host_public_key=target.fallback_public_key, fallback_public_key=None),
                           clock=clock, sleep=sleep)


def _connect_pinned(target: SshTarget, *, clock=time.monotonic, sleep=time.sleep) -> paramiko.SSHClient:
    """Connect with the pinned host key, retrying with exponential backoff until the deadline."""
    pinned = parse_public_key(target.host_public_key)
    pkey = load_private_key(target.private_key) if target.private_key is not None else None
    started = clock()
    deadline = started + target.connect_deadline_seconds
    delay = _FIRST_BACKOFF_SECONDS
    attempt = 0
    while True:
        attempt += 1
        remaining = deadline - clock()
        client = paramiko.SSHClient()
        # Only the pinned key is known; RejectPolicy refuses anything unknown (no trust on first use).
        host_entry = target.host if target.port == 22 else f"[{target.host}]:{target.port}"
        client.get_host_keys().add(host_entry, pinned.get_name(), pinned)
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        attempt_timeout = max(0.5, min(_MAX_ATTEMPT_SECONDS, remaining))
        try:
            client.connect(
                target.host,
                port=target.port,
                username=target.user,
                pkey=pkey,
                allow_agent=pkey is None,
                look_for_keys=False,
                timeout=attempt_timeout,
                banner_timeout=attempt_timeout,
                auth_timeout=attempt_timeout,
            )
            logger.info("connected to %s as %s after %d attempt(s), %.2fs", target.address, target.user, attempt,
                        clock() - started)
            return client
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise HostKeyMismatch.of(
                exc.key,
                f"host key of {target.address} does not match the pinned key: expected {exc.expected_key.get_name()} "
                f"{fingerprint(exc.expected_key)}, the server presented {exc.key.get_name()} {fingerprint(exc.key)}. "
                "Refusing to connect (no trust on first use): if the gateway was rebuilt, update the pinned "
                "host key (gateway.ssh_host_public_key); otherwise treat this as a possible interception."
            ) from None
        except paramiko.AuthenticationException as exc:
            client.close()
            how = "the configured private key" if pkey is not None else "keys from the ssh-agent"
            raise AuthenticationFailed(
                f"{target.address}: user {target.user!r} was refused with {how} ({type(exc).__name__}); "
                "check delivery.ssh_user and that the matching public key is in the gateway's authorized_keys"
            ) from None
        except paramiko.SSHException as exc:
            client.close()
            if "host key" in str(exc).lower() and not _is_retryable(exc):
                raise HostKeyMismatch(
                    f"{target.address} offered no host key of the pinned type {pinned.get_name()} "
                    f"(expected {fingerprint(pinned)}): {exc}. Refusing to connect (no trust on first use)."
                ) from None
            if not _is_retryable(exc):
                raise DeliveryError(f"{target.address}: SSH failed: {exc}") from None
            last_error = exc
        except OSError as exc:
            client.close()
            if not _is_retryable(exc):
                raise DeliveryError(f"{target.address}: cannot connect: {exc}") from None
            last_error = exc
        except EOFError as exc:
            client.close()
            last_error = exc
        waited = clock() - started
        remaining = deadline - clock()
        if remaining <= 0:
            raise GatewayUnreachable(
                f"{target.address} not reachable over SSH after waiting {waited:.1f}s "
                f"(deadline {target.connect_deadline_seconds:g}s, {attempt} attempt(s)); last error: "
                f"{type(last_error).__name__}: {last_error}. Is the instance running, its Cloud Firewall open for "
                "SSH from here, and the address right?"
            )
        pause = min(delay, remaining)
        logger.info("%s not reachable yet (attempt %d: %s); retrying in %.2fs", target.address, attempt,
                    type(last_error).__name__, pause)
        sleep(pause)
        delay = min(delay * 2, _MAX_BACKOFF_SECONDS)


@dataclass
class _Result:
    status: int
    stdout: str
    stderr: str


def run_remote(client: paramiko.SSHClient, argv: Sequence[str], timeout: float) -> _Result:
    """Run argv on the gateway (shlex-quoted command line: paths and flags only, never secrets)."""
    command_line = shlex.join(argv)
    transport = client.get_transport()
    if transport is None:
        raise TransportLost("SSH transport closed")
    channel = transport.open_session(timeout=timeout)
    try:
        channel.settimeout(timeout)
        channel.exec_command(command_line)
        channel.shutdown_write()
        # Outputs here are small (status lines, validator messages): reading stdout then stderr cannot fill the
        # channel window.
        stdout = channel.makefile("rb").read()
        stderr = channel.makefile_stderr("rb").read()
        status = channel.recv_exit_status()
    finally:
        channel.close()
    return _Result(status, stdout.decode("utf-8", "replace"), stderr.decode("utf-8", "replace"))


def _remote(*args: str) -> list[str]:
    """argv running remote_txn.py on the gateway (its source is in the command line: code and paths, no secrets)."""
    return ["python3", "-c", _REMOTE_PROGRAM, *args]


_TRANSPORT_ERRORS = (OSError, EOFError, paramiko.SSHException, socket.timeout)


@dataclass(frozen=True)
class _GatewayState:
    files: list[RemoteFileState]
    activated: dict[str, dict]  # gateway path -> {sha256, mode, uid, gid} of the last activation that succeeded


# The steps around the transaction are shell, not python3: on a slow host (the lab's TCG VM) every interpreter start
# costs seconds. STATE: under a shared flock on the lock (so it waits for a running transaction), each path's mode,
# owner and sha256 (creating missing parent directories for the uploads), then the activated record.
_STATE_SCRIPT = r"""
d=$1; w=$2; shift 2
(umask 077; mkdir -p -- "$d") || exit 1
exec 9>>"$d/lock"
flock -s -w "$w" 9 || { echo "another push holds $d/lock for more than ${w}s" >&2; exit 1; }
for p in "$@"; do
  q=${p%/*}; [ -z "$q" ] || [ -d "$q" ] || mkdir -p -- "$q" || echo "cannot create $q" >&2
  if [ -f "$p" ] && [ ! -L "$p" ]; then
    s=$(stat -c '%a %u %g' -- "$p") && h=$(sha256sum < "$p") && printf 'ok %s %s\n' "$s" "${h%% *}" || echo error
  elif [ -e "$p" ] || [ -L "$p" ]; then echo notfile
  else echo missing
  fi
done
echo activated
cat -- "$d/@RECORD@" 2>/dev/null || true
""".replace("@RECORD@", ACTIVATED_RECORD)
# WAIT: until the transaction's result exists (then print and remove it), its process is gone, or the deadline.
_WAIT_SCRIPT = r"""
r=$1; pid=$2; end=$(( $(date +%s) + $3 ))
while [ ! -e "$r" ]; do
  if ! kill -0 "$pid" 2>/dev/null && [ ! -e "$r" ]; then echo '{"status": "gone"}'; exit 0; fi
  [ "$(date +%s)" -lt "$end" ] || { echo '{"status": "timeout"}'; exit 0; }
  sleep 0.1
done
cat -- "$r" && rm -f -- "$r"
"""


def read_remote_state(client: paramiko.SSHClient, paths: Sequence[str], state_dir: str,
                      timeout: float) -> _GatewayState:
    """Mode, owner and sha256 of each path, and the activated record, read once no transaction runs."""
    result = run_remote(client, ["sh", "-c", _STATE_SCRIPT, "sh", state_dir, str(int(timeout)), *paths], timeout + 30)
    lines, _, record_text = result.stdout.partition("activated\n")
    lines = lines.splitlines()
    if result.status != 0 or len(lines) != len(paths):
        raise DeliveryError(f"reading file state on the gateway failed (exit {result.status}, {len(lines)} of "
                            f"{len(paths)} lines): {result.stderr.strip()[-500:]}")
    states = []
    for path, line in zip(paths, lines, strict=True):
        if line.strip() == "notfile":
            raise DeliveryError(f"{path} exists on the gateway but is not a regular file; refusing to replace it")
        if line.strip() == "error":
            raise DeliveryError(f"{path}: cannot read its mode or content on the gateway (permissions?)")
        states.append(parse_state_line(line))
    record = _json_or_none(record_text) or {}  # missing or corrupt: nothing counts as activated
    return _GatewayState(states, dict(record.get("files") or {}))


def _json_or_none(text: str) -> dict | None:
    # Parsed outside any `except` that could be chained to a later error: a result's text may hold secrets.
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _open_new(sftp: paramiko.SFTPClient, path: str, mode: int) -> paramiko.SFTPFile:
    """Exclusive create WITH the mode in the SFTP OPEN request, so the server creates the file with it (paramiko's
    open() sends no attributes: the file would exist with the server's umask until a later chmod)."""
    attrs = paramiko.SFTPAttributes()
    attrs.st_mode = mode & 0o777
    flags = paramiko.sftp.SFTP_FLAG_WRITE | paramiko.sftp.SFTP_FLAG_CREATE | paramiko.sftp.SFTP_FLAG_EXCL
    kind, msg = sftp._request(paramiko.sftp.CMD_OPEN, path, flags, attrs)
    if kind != paramiko.sftp.CMD_HANDLE:
        raise paramiko.SFTPError("Expected handle")
    return paramiko.SFTPFile(sftp, msg.get_binary(), "wb", -1)


def _upload(sftp: paramiko.SFTPClient, tmp: str, content: bytes, mode: int, uid: int = 0, gid: int = 0) -> None:
    # Created with its final mode (or stricter), owner set while still empty, then the content: a secret is never
    # readable by others, not even for a moment.
    handle = _open_new(sftp, tmp, mode)
    try:
        handle.chown(uid, gid)
        handle.chmod(mode)
        handle.set_pipelined(True)
        handle.write(content)
    finally:
        handle.close()
    written = sftp.stat(tmp)
    if written.st_size != len(content):
        raise DeliveryError(f"upload of {tmp} is short ({written.st_size} of {len(content)} bytes)")


def _needs_activation(f: DesiredFile, activated: dict[str, dict]) -> bool:
    return activated.get(f.path) != {"sha256": f.sha256, "mode": f.mode, "uid": f.uid, "gid": f.gid}


def push_files(
    target: SshTarget,
    files: Sequence[RenderedFileLike | DesiredFile],
    *,
    validate: Sequence[Command | Sequence[str]] = (),
    activate: Sequence[Command | Sequence[str]] = (),
    remote_root: str = "/",
    secret_values: Iterable[str] = (),
    on_step: Callable[[str, paramiko.SSHClient], None] | None = None,
    stale_upload_seconds: float = 600.0,
    cloud_init: str = "cloud-init",
) -> PushReport:
    """Bring the gateway's files to `files`, validated and activated, or leave it as it was and raise.

    Files that differ on disk are uploaded beside their final path; files whose last activation on the gateway is
    not this content (an earlier push cut after its install) are activated again. The install, `validate`, `activate`
    and the rollback (restore the previous files, re-run activation if it had started) run on the gateway as one
    transaction under a lock, detached from this SSH session (remote_txn.py), so losing the connection never leaves
    a half-applied set. Command arguments may use "{root}" for `remote_root`. `secret_values`: extra strings scrubbed
    from errors. `on_step(name, client)` is called after each remote step (tests cut the connection there);
    `stale_upload_seconds`: uploads of pushes that never started their transaction are removed after this long.
    `cloud_init`: the program whose first boot the transaction waits for before it installs (skipped when missing).
    """
    started = time.monotonic()
    desired = [f if isinstance(f, DesiredFile) else DesiredFile.from_rendered(f) for f in files]
    check_unique_paths(desired)
    validate_cmds = [Command.of(c) for c in validate]
    activate_cmds = [Command.of(c) for c in activate]
    scrubber = Scrubber(desired, secret_values)
    for cmd in (*validate_cmds, *activate_cmds):
        if scrubber.contains_secret(shlex.join(cmd.argv_for_root(remote_root))):
            raise ValueError(f"command {cmd.argv[0]!r} contains secret material in its arguments; pass secrets in "
                             "files only")
    client = connect(target)
    connect_seconds = time.monotonic() - started
    step = "connect"
    lost: str | None = None
    try:
        try:
            report = None
            for _ in range(_MAX_PLANS):
                report, step = _push_once(client, target, desired, validate_cmds, activate_cmds, remote_root,
                                          scrubber, on_step, {"stale_upload_seconds": stale_upload_seconds,
                                                              "cloud_init": cloud_init,
                                                              "cloud_init_done": remote_path(remote_root,
                                                                                             gateway_paths.CLOUD_INIT_DONE)},
                                          connect_seconds, started)
                if report is not None:
                    break
            if report is None:
                raise DeliveryError(f"{target.address}: the gateway's files changed under {_MAX_PLANS} plans in a "
                                    "row (concurrent pushes or edits?); nothing was left half-applied, push again")
            return report
        except (TransportLost, *_TRANSPORT_ERRORS) as exc:
            lost = f"{step}: {type(exc).__name__}"
    finally:
        client.close()
    # Raised here, outside the except blocks: nothing chained, so no remote text can ride along in __context__.
    raise DeliveryError(
        f"{target.address}: connection lost during {lost}. Nothing is left half-applied: a transaction that had "
        "started finishes or rolls back on the gateway on its own, and the next push waits for it and then "
        "installs and activates whatever is still missing. Run the push again."
    )


def _push_once(client, target: SshTarget, desired: list[DesiredFile], validate_cmds: list[Command],
               activate_cmds: list[Command], remote_root: str, scrubber: Scrubber, on_step, options: dict,
               connect_seconds: float, started: float) -> tuple[PushReport | None, str]:
    """One plan + transaction. None when the transaction found the gateway changed since the plan (plan again)."""
    timeout = target.command_timeout_seconds
    state_dir = remote_path(remote_root, gateway_paths.DELIVERY_STATE_DIR.path)

    def done(name: str) -> None:
        if on_step is not None:
            on_step(name, client)

    step = "reading the gateway's file state"
    on_host = [remote_path(remote_root, f.path) for f in desired]
    gateway = read_remote_state(client, on_host, state_dir, timeout)
    done("state")
    changes = plan_changes(desired, gateway.files)
    to_install = {c.file.path for c in changes}
    pending = [f.path for f in desired if f.path not in to_install and _needs_activation(f, gateway.activated)]
    unchanged = [f.path for f in desired if f.path not in to_install]
    if not changes and not pending:
        logger.info("%s: all %d files up to date and activated; nothing uploaded, nothing activated",
                    target.address, len(desired))
        return PushReport(target.address, [], unchanged, [], [], connect_seconds, time.monotonic() - started), step
    logger.info("%s: %d of %d files changed: %s%s", target.address, len(changes), len(desired),
                ", ".join(c.file.path for c in changes) or "none",
                f"; installed but never activated: {', '.join(pending)}" if pending else "")
    token = _random.token_hex(6)
    temps = {c.file.path: temp_path(remote_path(remote_root, c.file.path), token) for c in changes}
    manifest_path = f"{state_dir}/txn-{token}.json"
    manifest = {
        "token": token, "state_dir": state_dir, "manifest": manifest_path, "timeout": timeout,
        "result": f"{state_dir}/txn-{token}{RESULT_SUFFIX}",
        **options,
        "files": [{"path": f.path, "host_path": host, "sha256": f.sha256, "mode": f.mode, "uid": f.uid,
                   "gid": f.gid, "secret": f.secret, "temp": temps.get(f.path)}
                  for f, host in zip(desired, on_host, strict=True)],
        "validate": [{"argv": c.argv_for_root(remote_root), "when_changed": list(c.when_changed)}
                     for c in validate_cmds],
        "activate": [{"argv": c.argv_for_root(remote_root), "when_changed": list(c.when_changed)}
                     for c in activate_cmds],
    }
    transport = client.get_transport()
    if transport is None or not transport.is_active():
        raise TransportLost("SSH transport closed")
    sftp = transport.open_sftp_client()
    try:
        for change in changes:
            step = f"the upload of {change.file.path}"
            logger.debug("uploading %s (%d bytes, mode %04o, sha256 %s)", change.file.path,
                         len(change.file.content), change.file.mode, change.file.sha256)
            _upload(sftp, temps[change.file.path], change.file.content, change.file.mode, change.file.uid,
                    change.file.gid)
            done(f"upload {change.file.path}")
        step = "the upload of the transaction manifest"
        _upload(sftp, manifest_path, json.dumps(manifest).encode(), 0o600)
        done("manifest")
    finally:
        sftp.close()
    step = "the start of the transaction"
    # setsid + stdio on /dev/null: the transaction is no child of this SSH session and outlives it.
    launch = run_remote(client, ["sh", "-c", 'setsid "$@" </dev/null >/dev/null 2>&1 & echo $!', "sh",
                                 *_remote("apply", manifest_path)], timeout)
    pid = launch.stdout.strip()
    if launch.status != 0 or not pid.isdigit():
        raise DeliveryError(f"{target.address}: starting the transaction failed (exit {launch.status}): "
                            f"{launch.stderr.strip()[-500:]}")
    done("launch")
    step = "the wait for the transaction's result (it goes on on the gateway)"
    waited = run_remote(client, ["sh", "-c", _WAIT_SCRIPT, "sh", manifest["result"], pid, str(int(timeout * 4))],
                        timeout * 4 + 30)
    done("result")
    result = _json_or_none(waited.stdout)
    if result is None:
        raise DeliveryError(f"{target.address}: the transaction's result is unreadable (exit {waited.status})")
    status = result.get("status")
    if status == "stale":
        logger.info("%s: %s changed on the gateway since it was read; planning again", target.address,
                    result.get("path"))
        return None, step
    if status in ("gone", "timeout"):
        raise DeliveryError(
            f"{target.address}: the transaction on the gateway " + ("ended without a result (killed?)"
                                                                   if status == "gone" else "did not finish in time")
            + "; files it installed without activating are activated by the next push. Run the push again.")
    for warning in result.get("warnings") or ():
        logger.warning("%s: %s", target.address, warning)
    if status != "ok":
        _raise_failed(target, result, scrubber)
    report = PushReport(
        target=target.address,
        changed=[FileChange(c.file.path, c.file.sha256, c.file.mode, c.remote.sha256, c.reasons) for c in changes],
        unchanged=unchanged,
        validated=[_shown(argv) for argv in result["validated"]],
        activated=[_shown(argv) for argv in result["activated"]],
        connect_seconds=connect_seconds,
        total_seconds=time.monotonic() - started,
    )
    logger.info("%s: pushed %d file(s), ran %d validation and %d activation command(s) in %.2fs",
                target.address, len(changes), len(report.validated), len(report.activated), report.total_seconds)
    return report, step


def _shown(argv: Sequence[str]) -> str:
    """A command line for messages: inline scripts (`python3 -c`, `sh -c`) shortened to their first line."""
    return shlex.join(a if "\n" not in a else a.strip().splitlines()[0] + " ..." for a in argv)


def _raise_failed(target: SshTarget, result: dict, scrubber: Scrubber) -> None:
    stage = str(result.get("stage"))
    argv = [str(a) for a in result.get("argv") or ()]
    shown = _shown(argv) if argv else stage
    stderr = scrubber.scrub(str(result.get("stderr") or "").strip())[-2000:]
    problem = result.get("rollback_problem")
    problem = scrubber.scrub(str(problem)) if problem else None
    restored = bool(result.get("rolled_back"))
    message = (
        f"{target.address}: {stage} command `{shown}` failed with exit status {result.get('exit_status')}: "
        f"{stderr or '(no stderr)'}. "
        + ("The previous files were restored" + (" and re-activated." if stage == "activation" else ".")
           if restored else f"ROLLBACK INCOMPLETE: {problem}")
    )
    logger.error("%s", message)
    raise CommandFailed(message, stage=stage, argv=argv, exit_status=int(result.get("exit_status") or 1),
                        stderr=stderr, rolled_back=restored, rollback_problem=problem)


def gateway_file_hashes(target: SshTarget, paths: Sequence[str], remote_root: str = "/") -> dict[str, str]:
    """path -> what the gateway holds now, in provider.file_hashes' form ("sha256:<hex> mode:<octal>"), "missing",
    or that form + " not-activated" when the last activation on the gateway was of other content."""
    client = connect(target)
    try:
        on_host = [remote_path(remote_root, p) for p in paths]
        gateway = read_remote_state(client, on_host, remote_path(remote_root, gateway_paths.DELIVERY_STATE_DIR.path),
                                    target.command_timeout_seconds)
    finally:
        client.close()
    found = {}
    for path, state in zip(paths, gateway.files, strict=True):
        if not state.exists:
            found[path] = "missing"
            continue
        found[path] = f"sha256:{state.sha256} mode:{state.mode:04o}"
        record = gateway.activated.get(path) or {}
        if (record.get("sha256"), record.get("mode")) != (state.sha256, state.mode):
            found[path] += " not-activated"
    return found
