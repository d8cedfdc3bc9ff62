"""Helpers shared by the tests: waiting on a condition, a real charon in a test's network namespace with its own
strongswan.conf and VICI socket (see lab-notes.md), and the JSON examples of docs/contracts.md. tests/ is on sys.path
through tests/conftest.py."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

CONTRACTS_DOC = Path(__file__).resolve().parents[1] / "docs" / "contracts.md"


def contract_example(name: str) -> dict:
    """The JSON example after `<!-- example: NAME -->` in docs/contracts.md: tests build their documents from it, so
    the documented example is the one the code is tested with."""
    text = CONTRACTS_DOC.read_text()
    found = re.search(r"<!-- example: " + re.escape(name) + r" -->\n```json\n(.*?)\n```", text, re.DOTALL)
    if found is None:
        raise LookupError(f"{CONTRACTS_DOC}: no JSON example marked '<!-- example: {name} -->'")
    return json.loads(found.group(1))


def wait_for(predicate: Callable[[], object], timeout: float = 60.0, interval: float = 0.05, what: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value (returned); generous deadline for a loaded CI machine."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


DELETE = object()  # set_path(..., DELETE) removes the key


def set_path(data: dict, path: tuple, value: object) -> None:
    """Set (or, with DELETE, remove) the value at ``path`` (keys/indexes) in a nested config dict, in place."""
    node = data
    for key in path[:-1]:
        node = node[key]
    if value is DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value


CHARON = Path("/usr/lib/ipsec/charon")


class Charon:
    """A real charon in a namespace, with its own strongswan.conf and VICI socket (see lab-notes.md)."""

    def __init__(self, ns: str, workdir: Path):
        self.ns = ns
        self.dir = workdir
        self.socket = workdir / "charon.vici"
        self.proc: subprocess.Popen[bytes] | None = None
        (workdir / "run").mkdir(parents=True, exist_ok=True)
        self.conf = workdir / "strongswan.conf"
        self.conf.write_text(f"""charon {{
  load = random nonce openssl kdf kernel-netlink socket-default vici
  install_routes = no
  install_virtual_ip = no
  port = 0
  port_nat_t = 0
  plugins {{
    vici {{ socket = unix://{self.socket} }}
  }}
  filelog {{
    main {{
      path = {workdir}/charon.log
      default = 1
      flush_line = yes
    }}
  }}
}}
""")

    def start(self) -> None:
        self.socket.unlink(missing_ok=True)
        cmd = (f"mount --bind {self.dir}/run /run && exec env STRONGSWAN_CONF={self.conf} {CHARON}")
        self.proc = subprocess.Popen(["ip", "netns", "exec", self.ns, "sh", "-c", cmd],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_for(lambda: self.socket.exists() or self.proc.poll() is not None, what="charon's VICI socket")
        if self.proc.poll() is not None:
            raise AssertionError(f"charon exited: {(self.dir / 'charon.log').read_text(errors='replace')[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.proc = None
