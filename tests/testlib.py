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


# A stand-in for systemctl (a network namespace or a test has no systemd): `restart` starts the "daemon", which behaves
# like `vpnctl daemon`: with an agent.json it accepts, it writes its state file (the documented daemon state with its
# own pid and the time; $STATE_VERSION overrides the version) every 0.2 s; with one it refuses ("version": 2) it exits
# at once, like the real daemon on a ConfigError, and `is-active` turns false. Environment: AGENT_JSON, STATE_FILE.
_STAND_IN_SYSTEMCTL = r"""#!/bin/sh
dir=$(dirname "$0")
case "$1" in
  restart)
    [ -f "$dir/pid" ] && kill "$(cat "$dir/pid")" 2>/dev/null
    setsid python3 "$dir/stand-in-daemon.py" "$AGENT_JSON" "$STATE_FILE" </dev/null >/dev/null 2>&1 &
    echo $! > "$dir/pid" ;;
  is-active) kill -0 "$(cat "$dir/pid")" 2>/dev/null ;;
  show) cat "$dir/pid" ;;
esac
"""
_STAND_IN_DAEMON = r"""
import json, os, pathlib, sys, time
agent_json, state_file = sys.argv[1], pathlib.Path(sys.argv[2])
if '"version": 2' in pathlib.Path(agent_json).read_text():
    sys.exit("configuration error")
state = json.loads((pathlib.Path(__file__).parent / "daemon-state.example.json").read_text())
state["version"] = json.loads(os.environ.get("STATE_VERSION", str(state["version"])))
while True:
    state.update(pid=os.getpid(), updated_at=time.time())
    tmp = state_file.with_name(state_file.name + ".tmp")
    tmp.write_text(json.dumps(state))
    tmp.replace(state_file)
    time.sleep(0.2)
"""


def install_stand_in_systemd(bindir: Path) -> None:
    """systemctl and journalctl stand-ins in ``bindir`` (see _STAND_IN_SYSTEMCTL); stop_stand_in_systemd ends them."""
    bindir.mkdir(parents=True, exist_ok=True)
    for name, text in (("systemctl", _STAND_IN_SYSTEMCTL), ("journalctl", "#!/bin/sh\necho '(stand-in journal)'\n")):
        (bindir / name).write_text(text)
        (bindir / name).chmod(0o755)
    (bindir / "stand-in-daemon.py").write_text(_STAND_IN_DAEMON)
    (bindir / "daemon-state.example.json").write_text(json.dumps(contract_example("daemon-state")))


def stop_stand_in_systemd(bindir: Path) -> None:
    pid = bindir / "pid"
    if pid.exists():
        try:
            os.kill(int(pid.read_text()), signal.SIGTERM)
        except ProcessLookupError:
            pass
