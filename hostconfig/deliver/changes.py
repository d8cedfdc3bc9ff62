"""Pure decisions of the delivery: which files changed, which commands run, what to scrub. No I/O here."""

from __future__ import annotations

import hashlib
import ipaddress
import posixpath
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from hostconfig import gateway_paths as gp

# Suffix of the copy of the previous version kept next to every file the delivery replaces.
PREVIOUS_SUFFIX = ".hybrid-vpn-prev"
# Marker in the name of the temporary upload, so a crashed push leaves files whose origin is obvious.
TEMP_MARKER = ".hybrid-vpn-tmp"
# Placeholder in command arguments replaced by the remote root ("" for "/"), so tests can run the same commands
# against a scratch directory instead of the real /etc.
ROOT_PLACEHOLDER = "{root}"
# Secret tokens shorter than this are not scrubbed on their own (they would redact ordinary words);
# explicit secret values passed by the caller are always scrubbed.
MIN_SECRET_TOKEN = 8
REDACTED = "[redacted]"


class RenderedFileLike(Protocol):
    """What delivery needs from hostconfig.render.RenderedFile (duck-typed, so tests can bring their own)."""

    path: str
    content: bytes
    mode: int
    secret: bool


@dataclass(frozen=True)
class DesiredFile:
    """One file as it must be on the gateway. `path` is absolute on the gateway (before remote_root)."""

    path: str
    content: bytes = field(repr=False)
    mode: int
    secret: bool = False
    uid: int = 0
    gid: int = 0

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()

    @classmethod
    def from_rendered(cls, rendered: RenderedFileLike) -> DesiredFile:
        content = rendered.content
        if isinstance(content, str):
            content = content.encode()
        path = str(rendered.path)
        if not path.startswith("/") or posixpath.normpath(path) != path:
            raise ValueError(
                f"rendered file path {path!r}: must be absolute and normalised, e.g. '{gp.AGENT_CONFIG.path}'"
            )
        mode = int(rendered.mode)
        if not 0 <= mode <= 0o7777:
            raise ValueError(f"rendered file {path}: mode {mode!r} is not a permission mode, e.g. 0o644")
        return cls(path=path, content=bytes(content), mode=mode, secret=bool(rendered.secret))


@dataclass(frozen=True)
class RemoteFileState:
    """What the gateway holds at a path right now (None fields when the file is missing)."""

    exists: bool
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class PlannedChange:
    """One file to upload and why."""

    file: DesiredFile
    remote: RemoteFileState
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class Command:
    """A command run on the gateway as an argv list (quoted with shlex, never built from secrets).

    `when_changed`: run only if one of these gateway paths changed in this push; empty = whenever anything changed.
    """

    argv: tuple[str, ...]
    when_changed: tuple[str, ...] = ()

    @classmethod
    def of(cls, value: Command | Sequence[str]) -> Command:
        if isinstance(value, Command):
            return value
        if isinstance(value, str):
            raise TypeError(f"command {value!r}: give an argv list, e.g. ['swanctl', '--load-all'], not a string")
        return cls(argv=tuple(value))

    def applies(self, changed_paths: Iterable[str]) -> bool:
        if not self.when_changed:
            return True
        return bool(set(self.when_changed) & set(changed_paths))

    def argv_for_root(self, remote_root: str) -> list[str]:
        prefix = remote_root.rstrip("/")
        return [arg.replace(ROOT_PLACEHOLDER, prefix) for arg in self.argv]


def remote_path(remote_root: str, path: str) -> str:
    """Gateway path `path` placed under `remote_root` ("/" in production, a scratch directory in tests)."""
    if remote_root in ("", "/"):
        return path
    return posixpath.join(remote_root.rstrip("/"), path.lstrip("/"))


def previous_path(path: str) -> str:
    return path + PREVIOUS_SUFFIX


def temp_path(path: str, token: str) -> str:
    directory, name = posixpath.split(path)
    return posixpath.join(directory, f".{name}{TEMP_MARKER}.{token}")


def parse_state_line(line: str) -> RemoteFileState:
    """Parse one line of the remote state script: `ok <octal mode> <uid> <gid> <sha256>` or `missing`/`notfile`."""
    parts = line.split()
    if parts and parts[0] == "missing":
        return RemoteFileState(exists=False)
    if len(parts) == 5 and parts[0] == "ok" and re.fullmatch(r"[0-9a-f]{64}", parts[4]):
        return RemoteFileState(
            exists=True, mode=int(parts[1], 8), uid=int(parts[2]), gid=int(parts[3]), sha256=parts[4]
        )
    raise ValueError(f"unexpected remote state line {line!r} (expected 'ok <mode> <uid> <gid> <sha256>' or 'missing')")


def plan_changes(desired: Sequence[DesiredFile], remote: Sequence[RemoteFileState]) -> list[PlannedChange]:
    """Files whose content, mode or owner differ from what the gateway holds, in the order given."""
    if len(desired) != len(remote):
        raise ValueError("one remote state per desired file is required")
    changes = []
    for want, have in zip(desired, remote, strict=True):
        if not have.exists:
            changes.append(PlannedChange(want, have, ("new",)))
            continue
        reasons = []
        if have.sha256 != want.sha256:
            reasons.append("content")
        if have.mode != want.mode:
            reasons.append("mode")
        if (have.uid, have.gid) != (want.uid, want.gid):
            reasons.append("owner")
        if reasons:
            changes.append(PlannedChange(want, have, tuple(reasons)))
    return changes


def check_unique_paths(files: Sequence[DesiredFile]) -> None:
    seen: set[str] = set()
    for f in files:
        if f.path in seen:
            raise ValueError(f"rendered file path {f.path!r} appears twice: each gateway path must be given once")
        seen.add(f.path)


class Scrubber:
    """Removes secret material from text (command stderr) before it reaches an error message or a log.

    Secrets are the explicit values given plus every value token of a secret file: keys (a word followed by `=` or
    `{`), IP addresses, short tokens and tokens that also occur in a non-secret file stay readable; everything else
    (the PSK after `secret =`, any encoded form of it) is redacted. Redaction errs on the side of hiding.
    """

    def __init__(self, files: Sequence[DesiredFile], secret_values: Iterable[str] = ()):
        public_text = b"\n".join(f.content for f in files if not f.secret).decode("utf-8", "replace")
        explicit = {v for v in secret_values if v}
        derived: set[str] = set()
        for f in files:
            if f.secret:
                derived |= _value_tokens(f.content.decode("utf-8", "replace"))
        derived = {t for t in derived if t not in public_text}
        # Longest first, so a secret containing another secret is removed whole.
        self._tokens = sorted(explicit | derived, key=len, reverse=True)

    def scrub(self, text: str) -> str:
        for token in self._tokens:
            text = text.replace(token, REDACTED)
        return text

    def contains_secret(self, text: str) -> bool:
        return any(token in text for token in self._tokens)


_KEY = re.compile(r"([A-Za-z][A-Za-z0-9_.-]*)\s*(?:=|\{)")


def _value_tokens(text: str) -> set[str]:
    keys = set(_KEY.findall(text))
    found = set()
    for token in re.split(r"[\s\"'=,;{}]+", text):
        if len(token) < MIN_SECRET_TOKEN or token in keys or _is_address(token):
            continue
        found.add(token)
    return found


def _is_address(token: str) -> bool:
    try:
        ipaddress.ip_network(token, strict=False)
    except ValueError:
        return False
    return True
