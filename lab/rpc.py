"""A tiny file-based RPC between the host and the lab's controller inside the VM.

The host and the guest share one read-write directory (virtme-ng --rwdir, 9p without caching, so each side sees the
other's writes at once). A call is a request file; the guest streams the call's stdout/stderr into two files and ends
with a result file. Every file that the other side polls for appears atomically (written under a temporary name, then
renamed), so a reader never sees half a request or half a result.

    req/<id>.json   {"verb": "exec", "args": [...]}          host -> guest
    out/<id>.out    stdout bytes, appended as they come       guest -> host
    out/<id>.err    stderr bytes
    res/<id>.json   {"rc": 0}                                 guest -> host, last
    ready           the controller is serving                  guest -> host
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)

POLL_SECONDS = 0.05


def write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)


def make_dirs(root: Path) -> None:
    for sub in ("req", "work", "out", "res"):
        (root / sub).mkdir(parents=True, exist_ok=True)


class RpcTimeout(RuntimeError):
    pass


class ServerGone(RuntimeError):
    pass


@dataclass
class RpcClient:
    """Host side: submit a call, stream its output to our stdout/stderr, return its exit code."""

    root: Path
    is_server_alive: Callable[[], bool] = lambda: True

    def call(self, verb: str, args: list[str], timeout: float | None, stdout: BinaryIO | None = None,
             stderr: BinaryIO | None = None) -> int:
        stdout = stdout or sys.stdout.buffer
        stderr = stderr or sys.stderr.buffer
        call_id = f"{time.time_ns()}-{uuid.uuid4().hex[:6]}"
        write_atomically(self.root / "req" / f"{call_id}.json", json.dumps({"verb": verb, "args": args}).encode())
        out_path, err_path = self.root / "out" / f"{call_id}.out", self.root / "out" / f"{call_id}.err"
        res_path = self.root / "res" / f"{call_id}.json"
        offsets = {out_path: 0, err_path: 0}
        deadline = None if timeout is None else time.monotonic() + timeout
        last_alive_check = time.monotonic()

        def drain() -> None:
            for path, sink in ((out_path, stdout), (err_path, stderr)):
                try:
                    with open(path, "rb") as f:
                        f.seek(offsets[path])
                        chunk = f.read()
                except FileNotFoundError:
                    continue
                if chunk:
                    offsets[path] += len(chunk)
                    sink.write(chunk)
                    sink.flush()

        try:
            while True:
                drain()
                if res_path.exists():
                    drain()
                    return int(json.loads(res_path.read_bytes())["rc"])
                now = time.monotonic()
                if deadline is not None and now > deadline:
                    raise RpcTimeout(f"lab controller did not answer '{verb}' within {timeout:.0f} s")
                if now - last_alive_check > 1.0:
                    last_alive_check = now
                    if not self.is_server_alive():
                        drain()
                        raise ServerGone(f"the lab VM stopped while running '{verb}'")
                time.sleep(POLL_SECONDS)
        finally:
            for path in (out_path, err_path, res_path):
                path.unlink(missing_ok=True)


Handler = Callable[[str, list[str], BinaryIO, BinaryIO], int]


class RpcServer:
    """Guest side: claim request files and run each one in its own thread (an `exec` may run during a long `break`)."""

    def __init__(self, root: Path, handler: Handler) -> None:
        self.root = root
        self.handler = handler
        self.stopping = threading.Event()

    def serve_forever(self) -> None:
        make_dirs(self.root)
        write_atomically(self.root / "ready", str(os.getpid()).encode())
        threads: list[threading.Thread] = []
        while not self.stopping.is_set():
            for req in sorted((self.root / "req").glob("*.json")):
                claimed = self.root / "work" / req.name
                try:
                    os.rename(req, claimed)
                except FileNotFoundError:
                    continue
                t = threading.Thread(target=self._run_one, args=(claimed,), daemon=True)
                t.start()
                threads.append(t)
            threads = [t for t in threads if t.is_alive()]
            time.sleep(POLL_SECONDS)
        for t in threads:
            t.join(timeout=30)

    def _run_one(self, claimed: Path) -> None:
        call_id = claimed.stem
        request = json.loads(claimed.read_bytes())
        rc = 1
        with open(self.root / "out" / f"{call_id}.out", "wb", buffering=0) as out, \
                open(self.root / "out" / f"{call_id}.err", "wb", buffering=0) as err:
            try:
                rc = self.handler(request["verb"], list(request["args"]), out, err)
            except Exception as exc:  # the host must get an answer whatever happens
                log.exception("call %s failed", request.get("verb"))
                err.write(f"lab controller: {request.get('verb')} failed: {exc}\n".encode())
                rc = 70
        claimed.unlink(missing_ok=True)
        write_atomically(self.root / "res" / f"{call_id}.json", json.dumps({"rc": rc}).encode())
        if request.get("verb") == "shutdown":
            self.stopping.set()
