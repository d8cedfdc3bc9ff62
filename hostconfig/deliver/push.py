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
import logging
import secrets as _random
import shlex
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import paramiko

from hostconfig.deliver.changes import (
    PREVIOUS_SUFFIX,
    Command,
    DesiredFile,
    PlannedChange,
    RemoteFileState,
    RenderedFileLike,
    Scrubber,
    check_unique_paths,
    parse_state_line,
    plan_changes,
    remote_path,
    temp_path,
)

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

# Reads each path's mode, owner and sha256 in one round trip. Paths arrive as positional arguments ($@).
# It also creates missing parent directories: harmless when nothing changes, and saves a round trip otherwise.
_STATE_SCRIPT = r"""
for p in "$@"; do
  d=${p%/*}; [ -z "$d" ] || [ -d "$d" ] || mkdir -p -- "$d" || echo "cannot create $d" >&2
  if [ -f "$p" ] && [ ! -L "$p" ]; then
    s=$(stat -c '%a %u %g' -- "$p") && h=$(sha256sum < "$p") && printf 'ok %s %s\n' "$s" "${h%% *}" || echo error
  elif [ -e "$p" ] || [ -L "$p" ]; then echo notfile
  else echo missing
  fi
done
"""
# Keeps the previous version (hard link: same inode, so same mode and owner) and renames the upload into place.
# Arguments come in triples: temp path, final path, 1 if a previous file exists. Prints "done N" per installed file.
_INSTALL_SCRIPT = r"""
set -e
i=0
set -- "$@" --
while [ "$1" != -- ]; do
  if [ "$3" = 1 ]; then ln -f -- "$2" "$2@PREV@"; fi
  mv -f -- "$1" "$2"
  echo "done $i"
  i=$((i+1))
  set -- "$@" "$2" "${2%/*}/"
  shift 3
done
shift
# Flush the new files and their directory entries (only those, not every filesystem).
sync -- "$@"
""".replace("@PREV@", PREVIOUS_SUFFIX)
# Puts back what _INSTALL_SCRIPT replaced. Pairs: final path, 1 to restore the previous version / 0 to remove.
_RESTORE_SCRIPT = r"""
rc=0
while [ "$#" -ge 2 ]; do
  if [ "$2" = 1 ]; then mv -f -- "$1@PREV@" "$1" || rc=1
  else rm -f -- "$1" || rc=1
  fi
  sync -- "${1%/*}/" || true
  shift 2
done
exit $rc
""".replace("@PREV@", PREVIOUS_SUFFIX)


class DeliveryError(Exception):
    """Base of every delivery failure; messages name the host and never carry file contents or secrets."""


class HostKeyMismatch(DeliveryError):
    pass


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
            raise HostKeyMismatch(
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
        raise DeliveryError("SSH transport closed")
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


def _sh(script: str, args: Iterable[str]) -> list[str]:
    return ["sh", "-c", script, "sh", *args]


def read_remote_state(client: paramiko.SSHClient, paths: Sequence[str], timeout: float) -> list[RemoteFileState]:
    result = run_remote(client, _sh(_STATE_SCRIPT, paths), timeout)
    lines = result.stdout.splitlines()
    if result.status != 0 or len(lines) != len(paths):
        raise DeliveryError(
            f"reading file state on the gateway failed (exit {result.status}, {len(lines)} of {len(paths)} lines): "
            f"{result.stderr.strip()[:500]}"
        )
    states = []
    for path, line in zip(paths, lines, strict=True):
        if line.strip() == "notfile":
            raise DeliveryError(f"{path} exists on the gateway but is not a regular file; refusing to replace it")
        if line.strip() == "error":
            raise DeliveryError(f"{path}: cannot read its mode or content on the gateway (permissions?)")
        states.append(parse_state_line(line))
    return states


def _upload(sftp: paramiko.SFTPClient, tmp: str, f: DesiredFile) -> None:
    # Exclusive create, then owner and mode while still empty, then content: a secret is never readable by others,
    # not even for a moment.
    handle = sftp.open(tmp, "wx")
    try:
        handle.chown(f.uid, f.gid)
        handle.chmod(f.mode)
        handle.set_pipelined(True)
        handle.write(f.content)
    finally:
        handle.close()
    written = sftp.stat(tmp)
    if written.st_size != len(f.content):
        raise DeliveryError(f"upload of {f.path} is short ({written.st_size} of {len(f.content)} bytes)")


def push_files(
    target: SshTarget,
    files: Sequence[RenderedFileLike | DesiredFile],
    *,
    validate: Sequence[Command | Sequence[str]] = (),
    activate: Sequence[Command | Sequence[str]] = (),
    remote_root: str = "/",
    secret_values: Iterable[str] = (),
) -> PushReport:
    """Bring the gateway's files to `files`, changing only what differs; validate, activate, roll back on failure.

    `validate` runs after the changed files are in place and before `activate`; a failure of either restores the
    previous files (activation of the old set is re-run if activation had started) and raises CommandFailed.
    Command arguments may use "{root}" for `remote_root`. `secret_values` are extra strings to scrub from errors.
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
    try:
        timeout = target.command_timeout_seconds
        on_host = [remote_path(remote_root, f.path) for f in desired]
        states = read_remote_state(client, on_host, timeout)
        changes = plan_changes(desired, states)
        unchanged = [f.path for f in desired if f.path not in {c.file.path for c in changes}]
        if not changes:
            logger.info("%s: all %d files up to date; nothing uploaded, nothing activated", target.address,
                        len(desired))
            return PushReport(target.address, [], unchanged, [], [], connect_seconds, time.monotonic() - started)
        logger.info("%s: %d of %d files changed: %s", target.address, len(changes), len(desired),
                    ", ".join(c.file.path for c in changes))
        _install(client, target, changes, remote_root, timeout)
        changed_paths = [c.file.path for c in changes]
        validated = _run_stage(client, target, "validation", validate_cmds, changed_paths, changes, remote_root,
                               scrubber, timeout, reactivate=None)
        activated = _run_stage(client, target, "activation", activate_cmds, changed_paths, changes, remote_root,
                               scrubber, timeout, reactivate=activate_cmds)
        report = PushReport(
            target=target.address,
            changed=[
                FileChange(c.file.path, c.file.sha256, c.file.mode, c.remote.sha256, c.reasons) for c in changes
            ],
            unchanged=unchanged,
            validated=validated,
            activated=activated,
            connect_seconds=connect_seconds,
            total_seconds=time.monotonic() - started,
        )
        logger.info("%s: pushed %d file(s), ran %d validation and %d activation command(s) in %.2fs",
                    target.address, len(changes), len(validated), len(activated), report.total_seconds)
        return report
    finally:
        client.close()


def _install(client: paramiko.SSHClient, target: SshTarget, changes: Sequence[PlannedChange], remote_root: str,
             timeout: float) -> None:
    """Upload every changed file to a temp name beside it, then swap them in (keeping the previous versions)."""
    token = _random.token_hex(6)
    placed = [(c, remote_path(remote_root, c.file.path)) for c in changes]
    temps = [temp_path(path, token) for _, path in placed]
    sftp = client.open_sftp()
    try:
        try:
            for (change, _), tmp in zip(placed, temps, strict=True):
                logger.debug("uploading %s (%d bytes, mode %04o, sha256 %s)", change.file.path,
                             len(change.file.content), change.file.mode, change.file.sha256)
                _upload(sftp, tmp, change.file)
        except (OSError, paramiko.SSHException, DeliveryError) as exc:
            _remove_quietly(sftp, temps)
            raise DeliveryError(f"{target.address}: upload failed, nothing replaced: {exc}") from None
    finally:
        sftp.close()
    args: list[str] = []
    for (change, path), tmp in zip(placed, temps, strict=True):
        args += [tmp, path, "1" if change.remote.exists else "0"]
    result = run_remote(client, _sh(_INSTALL_SCRIPT, args), timeout)
    if result.status != 0:
        done = {int(line.split()[1]) for line in result.stdout.splitlines() if line.startswith("done ")}
        installed = [c for i, c in enumerate(changes) if i in done]
        problem = _restore(client, installed, remote_root, timeout)
        cleanup = run_remote(client, ["rm", "-f", "--", *temps], timeout)
        raise DeliveryError(
            f"{target.address}: installing files failed after {len(installed)} of {len(changes)}: "
            f"{result.stderr.strip()[:500]}; "
            + ("previous files restored" if problem is None and cleanup.status == 0 else f"restore problem: {problem}")
        )


def _remove_quietly(sftp: paramiko.SFTPClient, paths: Iterable[str]) -> None:
    for path in paths:
        try:
            sftp.remove(path)
        except OSError:
            pass


def _restore(client: paramiko.SSHClient, changes: Sequence[PlannedChange], remote_root: str,
             timeout: float) -> str | None:
    """Put back the previous version of each changed file (remove files that were new). None when all went well."""
    if not changes:
        return None
    args: list[str] = []
    for c in changes:
        args += [remote_path(remote_root, c.file.path), "1" if c.remote.exists else "0"]
    result = run_remote(client, _sh(_RESTORE_SCRIPT, args), timeout)
    if result.status != 0:
        return f"restore exited {result.status}: {result.stderr.strip()[:500]}"
    logger.info("restored the previous version of %d file(s): %s", len(changes),
                ", ".join(c.file.path for c in changes))
    return None


def _run_stage(client: paramiko.SSHClient, target: SshTarget, stage: str, commands: Sequence[Command],
               changed_paths: Sequence[str], changes: Sequence[PlannedChange], remote_root: str, scrubber: Scrubber,
               timeout: float, *, reactivate: Sequence[Command] | None) -> list[str]:
    ran: list[str] = []
    for cmd in commands:
        if not cmd.applies(changed_paths):
            continue
        argv = cmd.argv_for_root(remote_root)
        shown = shlex.join(argv)
        logger.info("%s: %s: %s", target.address, stage, shown)
        result = run_remote(client, argv, timeout)
        ran.append(shown)
        if result.status == 0:
            continue
        stderr = scrubber.scrub(result.stderr.strip())[-2000:]
        problem = _restore(client, changes, remote_root, timeout)
        if problem is None and reactivate is not None:
            # Activation may have loaded part of the new set: load the old set again so the gateway runs what is
            # on disk. (A failed validation loaded nothing, so there is nothing to undo.)
            problem = _reactivate(client, target, reactivate, changed_paths, remote_root, scrubber, timeout)
        restored = problem is None
        message = (
            f"{target.address}: {stage} command `{shown}` failed with exit status {result.status}: "
            f"{stderr or '(no stderr)'}. "
            + ("The previous files were restored" + (" and re-activated." if reactivate is not None else ".")
               if restored else f"ROLLBACK INCOMPLETE: {problem}")
        )
        logger.error("%s", message)
        raise CommandFailed(message, stage=stage, argv=argv, exit_status=result.status, stderr=stderr,
                            rolled_back=restored, rollback_problem=problem)
    return ran


def _reactivate(client: paramiko.SSHClient, target: SshTarget, commands: Sequence[Command],
                changed_paths: Sequence[str], remote_root: str, scrubber: Scrubber, timeout: float) -> str | None:
    for cmd in commands:
        if not cmd.applies(changed_paths):
            continue
        argv = cmd.argv_for_root(remote_root)
        result = run_remote(client, argv, timeout)
        logger.info("%s: re-activation of the previous files: %s -> exit %d", target.address, shlex.join(argv),
                    result.status)
        if result.status != 0:
            return (f"re-activating the previous files: `{shlex.join(argv)}` exited {result.status}: "
                    f"{scrubber.scrub(result.stderr.strip())[-500:]}")
    return None
