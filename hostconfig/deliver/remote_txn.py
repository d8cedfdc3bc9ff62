"""The gateway side of a push: read file state, and run install + validate + activate + rollback as one transaction.

This module runs ON the gateway, as `python3 -c <this source> <command> ...` (stdlib only, no hostconfig import):
push.py sends its source in the command line (paths and flags only, never secrets; contents travel by SFTP).

Why on the gateway: a push driven step by step from the client is cut in half by a dropped SSH connection, a
timeout or Ctrl-C, and leaves files on disk that were never validated or activated. Here the client only stages
files and a manifest, then starts `apply` detached from the SSH session (setsid, stdio on /dev/null): the transaction
finishes (or rolls back) without the client, under an exclusive lock, and writes its result; the client waits for
that result and, if it went away, the next push waits on the same lock and then finds the gateway converged.

The gateway records what was last ACTIVATED (activated.json, written only after every activation command succeeded),
not only what is on disk: files that are on disk but whose activation never finished are activated by the next push.

Command: `apply MANIFEST` (paths on the gateway, under the push's remote root): the transaction; it removes the
manifest, then writes the manifest's result file. Reading the state and waiting for the result are shell scripts in
push.py (an interpreter start costs seconds on a slow host).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

PREVIOUS_SUFFIX = ".hybrid-vpn-prev"  # hostconfig.deliver.changes.PREVIOUS_SUFFIX (checked by a test)
TEMP_MARKER = ".hybrid-vpn-tmp"  # hostconfig.deliver.changes.TEMP_MARKER
LOCK_FILE = "lock"
ACTIVATED_RECORD = "activated.json"
RESULT_SUFFIX = ".result.json"
STDERR_LIMIT = 4000
# cloud-init's `status` says this when it never ran (lab VMs, containers): `status --wait` would then wait forever.
CLOUD_INIT_NEVER_RAN = ("not run", "disabled")


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 16), b""):
            digest.update(block)
    return digest.hexdigest()


def file_state(path: str) -> dict:
    if os.path.islink(path) or (os.path.exists(path) and not os.path.isfile(path)):
        return {"kind": "notfile"}
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return {"kind": "missing"}
    try:
        digest = _sha256(path)
    except OSError:
        return {"kind": "error"}
    return {"kind": "ok", "mode": st.st_mode & 0o7777, "uid": st.st_uid, "gid": st.st_gid, "sha256": digest}


def _lock(state_dir: str, exclusive: bool, wait_seconds: float | None) -> int:
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    fd = os.open(os.path.join(state_dir, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o600)
    kind = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
    if wait_seconds is None:
        fcntl.flock(fd, kind)
        return fd
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            fcntl.flock(fd, kind | fcntl.LOCK_NB)
            return fd
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                raise SystemExit(f"another push holds {state_dir}/{LOCK_FILE} longer than {wait_seconds:g}s") from None
            time.sleep(0.05)


def read_record(state_dir: str) -> dict | None:
    try:
        with open(os.path.join(state_dir, ACTIVATED_RECORD), encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_atomic(path: str, data: dict) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=1, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _sync_dir(os.path.dirname(path))


def _sync_dir(directory: str) -> None:
    try:
        fd = os.open(directory or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- the transaction ---------------------------------------------------------------------------------------------------

def _wanted(entry: dict) -> dict:
    return {"sha256": entry["sha256"], "mode": entry["mode"], "uid": entry["uid"], "gid": entry["gid"]}


def _matches(state: dict, entry: dict) -> bool:
    return state.get("kind") == "ok" and all(state.get(k) == v for k, v in _wanted(entry).items())


def _run(argv: list[str], timeout: float) -> tuple[int, str]:
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return 124, f"timed out after {timeout:g}s"
    except OSError as exc:
        return 127, f"cannot run {argv[0]}: {exc.strerror}"
    return proc.returncode, proc.stderr.decode("utf-8", "replace")[-STDERR_LIMIT:]


def _applies(command: dict, changed: set[str]) -> bool:
    return not command.get("when_changed") or bool(set(command["when_changed"]) & changed)


def wait_for_cloud_init(program: str, done_marker: str, timeout: float) -> str | None:
    """Wait until cloud-init's first boot is over (it installs the packages validation needs); None or a warning.
    Hosts without cloud-init (`command -v cloud-init` finds nothing), or where it never ran, do not wait."""
    if shutil.which(program) is None or os.path.exists(done_marker):
        return None
    status, _ = _run_out([program, "status"], timeout)
    if any(marker in status for marker in CLOUD_INIT_NEVER_RAN):
        return None
    status, rc = _run_out([program, "status", "--wait"], timeout)
    # 0 done, 2 done with recoverable errors; 1: cloud-init failed. Validation decides whether the host is usable.
    return None if rc in (0, 2) else f"cloud-init status --wait exited {rc}: {status.strip()[-300:]}"


def _run_out(argv: list[str], timeout: float) -> tuple[str, int]:
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    except (subprocess.TimeoutExpired, OSError) as exc:
        return f"{type(exc).__name__}", 124
    return proc.stdout.decode("utf-8", "replace"), proc.returncode


def _install(entry: dict, installed: list[dict]) -> None:
    final, temp = entry["host_path"], entry["temp"]
    os.chown(temp, entry["uid"], entry["gid"])
    os.chmod(temp, entry["mode"])
    existed = os.path.isfile(final)
    if existed:
        previous = final + PREVIOUS_SUFFIX
        if os.path.lexists(previous):
            os.unlink(previous)
        os.link(final, previous)  # same inode: the previous mode and owner come along
    os.replace(temp, final)
    installed.append({"entry": entry, "existed": existed})
    _sync_dir(os.path.dirname(final))


def _restore(installed: list[dict]) -> str | None:
    problems = []
    for item in reversed(installed):
        final = item["entry"]["host_path"]
        try:
            if item["existed"]:
                os.replace(final + PREVIOUS_SUFFIX, final)
            else:
                os.unlink(final)
            _sync_dir(os.path.dirname(final))
        except OSError as exc:
            problems.append(f"{final}: {exc.strerror}")
    return "; ".join(problems) or None


def _remove_stale_uploads(manifest: dict, own: set[str]) -> None:
    """What pushes whose client went away left, older than the limit: uploads and manifests of transactions that
    never started, results nobody read."""
    limit = float(manifest.get("stale_upload_seconds", 600))
    now = time.time()
    state_dir = manifest["state_dir"]
    for directory in {os.path.dirname(e["host_path"]) for e in manifest["files"]} | {state_dir}:
        try:
            names = os.listdir(directory)
        except OSError:
            continue
        for name in names:
            path = os.path.join(directory, name)
            ours = TEMP_MARKER in name if directory != state_dir else name.startswith("txn-")
            if not ours or path in own:
                continue
            try:
                if now - os.lstat(path).st_mtime >= limit:
                    os.unlink(path)
            except OSError:
                pass


def transaction(manifest: dict) -> dict:
    """Install what differs, validate and activate what was not activated yet, roll back on any failure."""
    timeout = float(manifest["timeout"])
    state_dir = manifest["state_dir"]
    result: dict = {"status": "ok", "installed": [], "validated": [], "activated": [], "warnings": []}
    # cloud_init_done (hostconfig.gateway_paths.CLOUD_INIT_DONE, under the push's root) is written by cloud-init's last
    # stage when the boot is over: checked first, because `cloud-init status` itself is a Python program that takes a
    # second or more to start (every push would pay it).
    warning = wait_for_cloud_init(manifest.get("cloud_init") or "cloud-init", manifest["cloud_init_done"], timeout)
    if warning:
        result["warnings"].append(warning)
    record = (read_record(state_dir) or {}).get("files", {})
    files = manifest["files"]
    own_temps = {e["temp"] for e in files if e.get("temp")}
    _remove_stale_uploads(manifest, own_temps | {manifest["manifest"], manifest["result"]})
    to_install, changed = [], set()
    for entry in files:
        if not _matches(file_state(entry["host_path"]), entry):
            temp = entry.get("temp")
            if not temp or not os.path.isfile(temp) or _sha256(temp) != entry["sha256"]:
                # The gateway changed since the client read it (another push, an edit): the client plans again.
                for leftover in own_temps:
                    if os.path.isfile(leftover):
                        os.unlink(leftover)
                return {"status": "stale", "path": entry["path"]}
            to_install.append(entry)
        if record.get(entry["path"]) != _wanted(entry) or entry in to_install:
            changed.add(entry["path"])
    for leftover in own_temps - {e["temp"] for e in to_install}:
        if os.path.isfile(leftover):
            os.unlink(leftover)
    installed: list[dict] = []
    try:
        for entry in to_install:
            _install(entry, installed)
    except OSError as exc:
        problem = _restore(installed)
        return {**result, "status": "failed", "stage": "install", "argv": [], "exit_status": 1,
                "stderr": f"{exc.filename}: {exc.strerror}", "rolled_back": problem is None,
                "rollback_problem": problem}
    result["installed"] = [e["path"] for e in to_install]
    for stage in ("validation", "activation"):
        for command in manifest["validate" if stage == "validation" else "activate"]:
            if not _applies(command, changed):
                continue
            status, stderr = _run(command["argv"], timeout)
            result["validated" if stage == "validation" else "activated"].append(command["argv"])
            if status == 0:
                continue
            problem = _restore(installed)
            if problem is None and stage == "activation":
                # Activation may have loaded part of the new set: load the restored set again.
                for again in manifest["activate"]:
                    if _applies(again, changed):
                        rc, err = _run(again["argv"], timeout)
                        if rc != 0:
                            problem = f"re-activating the previous files: {again['argv'][0]} exited {rc}: {err[-500:]}"
                            break
            return {**result, "status": "failed", "stage": stage, "argv": command["argv"], "exit_status": status,
                    "stderr": stderr, "rolled_back": problem is None, "rollback_problem": problem}
    _write_atomic(os.path.join(state_dir, ACTIVATED_RECORD),
                  {"files": {e["path"]: _wanted(e) for e in files}, "activated_at": time.time()})
    # The previous version of a secret file (an old PSK, a host key) is no longer needed once the new one runs.
    for entry in files:
        if entry.get("secret"):
            previous = entry["host_path"] + PREVIOUS_SUFFIX
            if os.path.lexists(previous):
                os.unlink(previous)
    result["activated_paths"] = sorted(changed)
    return result


def cmd_apply(manifest_path: str) -> int:
    # Detached from the SSH session already; also ignore the hang-up a dying session could still send.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    # Named after the manifest (push.py: txn-<token>.json -> txn-<token>.result.json), so that a manifest removed
    # under us (a transaction ahead in the queue cleaning stale uploads) still gets an answer: plan again.
    result_path = manifest_path[: -len(".json")] + RESULT_SUFFIX
    fd = _lock(os.path.dirname(manifest_path), exclusive=True, wait_seconds=None)
    try:
        try:
            with open(manifest_path, encoding="utf-8") as handle:
                manifest = json.load(handle)
        except (OSError, ValueError):
            manifest = None
        try:
            result = transaction(manifest) if manifest is not None else {"status": "stale", "path": "(manifest)"}
        except Exception as exc:  # noqa: BLE001 - the client must get a result, not wait for its deadline
            result = {"status": "failed", "stage": "internal", "argv": [], "exit_status": 1,
                      "stderr": f"{type(exc).__name__}", "rolled_back": False,
                      "rollback_problem": "the transaction stopped on an internal error; push again"}
        # The manifest goes first: the client returns as soon as the result exists, and a gateway that shows a
        # result must show no manifest. Killed in between, the client sees "gone" and the next push converges.
        if os.path.exists(manifest_path):
            os.unlink(manifest_path)
            _sync_dir(os.path.dirname(manifest_path))
        _write_atomic(result_path, result)
    finally:
        os.close(fd)
    return 0


def main(argv: list[str]) -> int:
    command, args = argv[0], argv[1:]
    if command == "apply":
        return cmd_apply(args[0])
    raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
