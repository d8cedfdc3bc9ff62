"""`GatewayConfig`: a Pulumi dynamic resource whose diff is the content hash of the rendered gateway files.

create/update call push_files (which uploads only what differs on the host); delete needs no SSH, so a gateway that
is already gone never blocks `pulumi destroy`. The provider object is serialized by dill into the state: it holds no
attributes and this module keeps no state, so it pickles by reference to this importable module.

State (the provider's outputs) holds connection facts, paths, modes and hashes, never file contents or keys; the
hashes of secret files are a secret output.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import pulumi
from pulumi.dynamic import (
    CheckFailure,
    CheckResult,
    CreateResult,
    DiffResult,
    ReadResult,
    ResourceProvider,
    UpdateResult,
)

from hostconfig.deliver.changes import Command, DesiredFile
from hostconfig.deliver.push import GatewayUnreachable, SshTarget, gateway_file_hashes, parse_public_key, push_files

logger = logging.getLogger(__name__)

UNKNOWN = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"  # pulumi.runtime.rpc.UNKNOWN: a value known only after apply
_SECRET_SIG = "4dabf18193072939515e22adb298388d"  # wire signature of a secret value (if the engine sends one)
# Properties whose change means the files must go (again) to a host: content/mode, or a different host.
_TARGET_KEYS = ("host", "port", "host_public_key", "instance_id")
# A rebuilt instance (same IP, same host key from the same user data) is a new machine: replace, i.e. push anew.
_REPLACE_KEYS = ("instance_id",)
_SECRET_OUTPUTS = ["files", "private_key", "scrub", "secret_hashes"]


def _plain(value: Any) -> Any:
    """Unwrap wire-level secrets (the engine normally sends plain values to dynamic providers; be safe)."""
    if isinstance(value, dict):
        if value.get(_SECRET_SIG) is not None and "value" in value:
            return _plain(value["value"])
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _contains_unknown(value: Any) -> bool:
    if value == UNKNOWN:
        return True
    if isinstance(value, dict):
        return any(_contains_unknown(v) for v in value.values())
    if isinstance(value, list):
        return any(_contains_unknown(v) for v in value)
    return False


# -- pure helpers used by the program side ---------------------------------------------------------------------------

def encode_files(files: Sequence[Any]) -> list[dict[str, Any]]:
    """Rendered files (RenderedFile/DesiredFile) -> JSON-able dicts for the resource's `files` input."""
    encoded = []
    for f in files:
        desired = f if isinstance(f, DesiredFile) else DesiredFile.from_rendered(f)
        encoded.append({
            "path": desired.path,
            "mode": desired.mode,
            "secret": desired.secret,
            "sha256": desired.sha256,
            "content_b64": base64.b64encode(desired.content).decode(),
        })
    return encoded


def file_hashes(encoded: Sequence[Mapping[str, Any]], *, secret: bool) -> dict[str, str]:
    """path -> "sha256:<hex> mode:<octal>" for the secret (or the non-secret) files: what the diff compares."""
    return {
        f["path"]: f"sha256:{f['sha256']} mode:{int(f['mode']):04o}" for f in encoded if bool(f["secret"]) == secret
    }


def decode_files(encoded: Sequence[Mapping[str, Any]]) -> list[DesiredFile]:
    files = []
    for f in encoded:
        content = base64.b64decode(f["content_b64"])
        if hashlib.sha256(content).hexdigest() != f["sha256"]:
            raise ValueError(f"files: {f['path']}: content does not match its sha256 (corrupted input)")
        files.append(DesiredFile(path=f["path"], content=content, mode=int(f["mode"]), secret=bool(f["secret"])))
    return files


def encode_commands(commands: Sequence[Command | Sequence[str]]) -> list[dict[str, list[str]]]:
    return [{"argv": list(c.argv), "when_changed": list(c.when_changed)} for c in map(Command.of, commands)]


def _decode_commands(raw: Sequence[Mapping[str, Any]] | None) -> list[Command]:
    return [Command(tuple(c["argv"]), tuple(c.get("when_changed") or ())) for c in raw or ()]


def changed_files(olds: Mapping[str, Any], news: Mapping[str, Any]) -> list[str]:
    """Paths whose hash or mode differ between the recorded state and the new inputs (added and removed too)."""
    old = {**(olds.get("hashes") or {}), **(olds.get("secret_hashes") or {})}
    new = {**(news.get("hashes") or {}), **(news.get("secret_hashes") or {})}
    return sorted(p for p in old.keys() | new.keys() if old.get(p) != new.get(p))


def replaced_host_key(olds: Mapping[str, Any], news: Mapping[str, Any]) -> str | None:
    """The key an update may find instead of the pinned one: the previously installed key during a rotation, the
    bootstrap key when no push has installed one yet (state from before host keys were delivered). None otherwise."""
    if olds.get("host_key_installed"):
        previous = olds.get("host_public_key")
        return previous if previous != news.get("host_public_key") else None
    return news.get("bootstrap_host_public_key") or None


def changed_target(olds: Mapping[str, Any], news: Mapping[str, Any]) -> list[str]:
    return [k for k in _TARGET_KEYS if olds.get(k) != news.get(k)]


# -- the provider ------------------------------------------------------------------------------------------------------

class GatewayConfigProvider(ResourceProvider):
    """CRUD of the gateway's delivered files. Stateless: everything comes from the properties."""

    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        failures = []
        props = _plain(news)

        def known(key: str) -> bool:
            return key in props and not _contains_unknown(props[key])

        if known("host") and not (isinstance(props["host"], str) and props["host"]):
            failures.append(CheckFailure("host", "must be the gateway's address, e.g. '203.0.113.10'"))
        if known("port") and not (isinstance(props["port"], (int, float)) and 1 <= int(props["port"]) <= 65535):
            failures.append(CheckFailure("port", "must be a TCP port 1..65535, e.g. 22"))
        if known("host_public_key"):
            try:
                parse_public_key(str(props["host_public_key"]))
            except ValueError as exc:
                failures.append(CheckFailure("host_public_key", str(exc)))
        if known("files"):
            for i, f in enumerate(props["files"]):
                missing = {"path", "mode", "secret", "sha256", "content_b64"} - set(f)
                if missing:
                    failures.append(CheckFailure("files", f"files[{i}] lacks {sorted(missing)}; build the list with "
                                                          "hostconfig.deliver.provider.encode_files"))
        return CheckResult(news, failures)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        olds, news = _plain(olds), _plain(news)
        # State written before the instance id was an input has none: record it by an update, do not replace.
        replaces = [k for k in _REPLACE_KEYS if olds.get(k) and olds.get(k) != news.get(k)]
        if any(_contains_unknown(news.get(k)) for k in ("hashes", "secret_hashes", *_TARGET_KEYS)):
            # Preview before the VPN connection exists (or while the instance is replaced): known at apply time.
            return DiffResult(changes=True, replaces=replaces)
        files = changed_files(olds, news)
        target = changed_target(olds, news)
        if replaces:
            logger.info("gateway instance changed (%s -> %s): pushing every file to the new instance",
                        olds.get("instance_id"), news.get("instance_id"))
            return DiffResult(changes=True, replaces=replaces, delete_before_replace=False)
        if files or target:
            logger.info("gateway files to push: %s%s", ", ".join(files) or "none changed",
                        f" (target changed: {', '.join(target)})" if target else "")
            return DiffResult(changes=True)
        return DiffResult(changes=False)

    def create(self, props: dict[str, Any]) -> CreateResult:
        props = _plain(props)
        # A new instance presents the bootstrap key from its user data until this push installs the pinned one.
        outs = self._push(props, fallback=props.get("bootstrap_host_public_key"))
        return CreateResult(f"{props['host']}:{int(props.get('port', 22))}", outs)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        olds, news = _plain(olds), _plain(news)
        return UpdateResult(self._push(news, fallback=replaced_host_key(olds, news)))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        """`pulumi refresh`: the hashes the gateway holds now, so files edited there (or installed but never
        activated) show as a diff and the next `pulumi up` pushes them again."""
        props = _plain(props)
        recorded = {**(props.get("hashes") or {}), **(props.get("secret_hashes") or {})}
        if not props.get("host") or not recorded:
            return ReadResult(id_, props)
        try:
            found = gateway_file_hashes(self._target(props), sorted(recorded), props.get("remote_root") or "/")
        except GatewayUnreachable as exc:
            # A gateway that is gone must not block `pulumi refresh`/`destroy`; its files are then unknown.
            logger.warning("refresh: %s; keeping the recorded file hashes", exc)
            return ReadResult(id_, props)
        drifted = sorted(p for p in recorded if found[p] != recorded[p])
        if drifted:
            logger.warning("refresh: files on the gateway differ from the last push: %s", ", ".join(drifted))
        outs = dict(props)
        outs["hashes"] = {p: found[p] for p in props.get("hashes") or {}}
        outs["secret_hashes"] = {p: found[p] for p in props.get("secret_hashes") or {}}
        return ReadResult(id_, outs)

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        # No SSH on purpose: the instance is usually deleted in the same `pulumi destroy`, maybe already gone.
        logger.info("GatewayConfig deleted from the stack; the files stay on the gateway (if it still exists)")

    @staticmethod
    def _target(props: Mapping[str, Any]) -> SshTarget:
        return SshTarget(
            host=props["host"],
            port=int(props.get("port", 22)),
            user=props.get("user") or "root",
            host_public_key=props["host_public_key"],
            private_key=props.get("private_key") or None,
            connect_deadline_seconds=float(props.get("connect_timeout_seconds", 300)),
        )

    def _push(self, props: Mapping[str, Any], fallback: str | None) -> dict[str, Any]:
        target = replace(self._target(props), fallback_public_key=fallback)
        report = push_files(
            target,
            decode_files(props["files"]),
            validate=_decode_commands(props.get("validate")),
            activate=_decode_commands(props.get("activate")),
            remote_root=props.get("remote_root") or "/",
            secret_values=list(props.get("scrub") or ()),
        )
        logger.info("pushed to %s: changed %s", report.target, ", ".join(report.changed_paths) or "nothing")
        return {
            "host": target.host,
            "port": target.port,
            "user": target.user,
            "host_public_key": props["host_public_key"],
            "instance_id": props.get("instance_id"),
            "bootstrap_host_public_key": props.get("bootstrap_host_public_key"),
            # host_public_key is now what the gateway presents: later pushes accept no other key.
            "host_key_installed": bool(props.get("bootstrap_host_public_key")),
            "remote_root": props.get("remote_root") or "/",
            "connect_timeout_seconds": props.get("connect_timeout_seconds", 300),
            # For read() (`pulumi refresh` gets only the state): a secret output, like the input it comes from.
            "private_key": props.get("private_key") or None,
            "hashes": dict(props.get("hashes") or {}),
            "secret_hashes": dict(props.get("secret_hashes") or {}),
            "changed_paths": report.changed_paths,
        }


# -- the resource ------------------------------------------------------------------------------------------------------

@dataclass
class GatewayConfigArgs:
    host: pulumi.Input[str]
    host_public_key: pulumi.Input[str]
    files: pulumi.Input[list]  # encode_files(...) output: secret (contents)
    private_key: pulumi.Input[str] | None = None  # None: the ssh-agent of whoever runs `pulumi up`
    port: pulumi.Input[int] = 22
    user: pulumi.Input[str] = "root"
    connect_timeout_seconds: pulumi.Input[int] = 300
    validate: Sequence[Command | Sequence[str]] = ()
    activate: Sequence[Command | Sequence[str]] = ()
    remote_root: str = "/"
    scrub: pulumi.Input[list] | None = None  # secret values to scrub from error output (the PSKs)
    instance_id: pulumi.Input[str] | None = None  # the gateway instance: a new one (rebuilt) is pushed anew
    # The host key from user data: accepted (pinned) only until a push has installed host_public_key.
    bootstrap_host_public_key: pulumi.Input[str] | None = None


class GatewayConfig(pulumi.dynamic.Resource, module="hybrid-vpn", name="GatewayConfig"):
    """The rendered files on the gateway. Type token: pulumi-python:dynamic/hybrid-vpn:GatewayConfig."""

    changed_paths: pulumi.Output[list]
    hashes: pulumi.Output[dict]

    def __init__(self, name: str, args: GatewayConfigArgs, opts: pulumi.ResourceOptions | None = None):
        files = pulumi.Output.secret(args.files)
        props = {
            "host": args.host,
            "port": args.port,
            "user": args.user,
            "host_public_key": args.host_public_key,
            "instance_id": args.instance_id,
            "bootstrap_host_public_key": args.bootstrap_host_public_key,
            "connect_timeout_seconds": args.connect_timeout_seconds,
            "private_key": pulumi.Output.secret(args.private_key) if args.private_key is not None else None,
            "files": files,
            # Shown by `pulumi preview --diff` per path: which file changes, never its content.
            "hashes": pulumi.Output.unsecret(files.apply(lambda fs: file_hashes(fs, secret=False))),
            "secret_hashes": files.apply(lambda fs: file_hashes(fs, secret=True)),
            "validate": encode_commands(args.validate),
            "activate": encode_commands(args.activate),
            "remote_root": args.remote_root,
            "scrub": pulumi.Output.secret(args.scrub) if args.scrub is not None else None,
            "changed_paths": None,
        }
        opts = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(additional_secret_outputs=_SECRET_OUTPUTS))
        super().__init__(GatewayConfigProvider(), name, props, opts)
