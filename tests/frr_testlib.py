"""Real FRR (zebra + bgpd from Debian's frr) in a test's network namespace, with its own config, pid files, vty
sockets and logs under the test's directory: nothing shared with the host's (disabled) frr.service or another test."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from testlib import wait_for

from hostconfig import gateway_paths
from hostconfig.agent.frr import Vtysh

FRR_DAEMONS = Path(gateway_paths.FRR_BGPD).parent


def frr_missing() -> str | None:
    for path in (FRR_DAEMONS / "zebra", Path(gateway_paths.FRR_BGPD), Path(gateway_paths.VTYSH)):
        if not path.exists():
            return f"needs Debian's frr ({path} missing; scripts/setup-machine installs it)"
    return None


FRR_USER = "frr"  # the daemons drop to it (root is not in the frrvty group their vty sockets need)


class FrrInstance:
    """zebra + bgpd in namespace ``ns``; ``bgpd_conf`` is their configuration (bgpd's part; zebra's is empty).

    Its files live in a directory of its own under /tmp, owned by the frr user (a pytest tmp_path is root-only, which
    the daemons could not enter once they dropped privileges); ``stop`` removes it."""

    def __init__(self, ns: str, bgpd_conf: str):
        self.ns = ns
        self.dir = Path(tempfile.mkdtemp(prefix=f"hybrid-vpn-frr-{ns}-"))
        (self.dir / "zebra.conf").write_text("!\n")
        (self.dir / "bgpd.conf").write_text(bgpd_conf)
        for path in (self.dir, self.dir / "zebra.conf", self.dir / "bgpd.conf"):
            shutil.chown(path, FRR_USER, FRR_USER)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.vtysh = Vtysh(vty_socket=str(self.dir))

    def _daemon(self, name: str, *extra: str) -> None:
        # -P 0: no TCP vty; --log to a file of our own.
        argv = [str(FRR_DAEMONS / name), "-u", FRR_USER, "-g", FRR_USER, "-P", "0", "-z", f"{self.dir}/zserv.api",
                "-i", f"{self.dir}/{name}.pid", "--vty_socket", str(self.dir), "-f", f"{self.dir}/{name}.conf",
                "--log", f"file:{self.dir}/{name}.log", *extra]
        proc = subprocess.Popen(["ip", "netns", "exec", self.ns, *argv], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        self.procs.append(proc)
        sock = self.dir / f"{name}.vty"
        wait_for(lambda: sock.exists() or proc.poll() is not None, what=f"{name}'s vty socket in {self.ns}")
        if proc.poll() is not None:
            raise AssertionError(f"{name} exited {proc.returncode}: {self.log(name)[-2000:]}")

    def start(self) -> FrrInstance:
        self._daemon("zebra")
        self._daemon("bgpd")
        return self

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=20)
        self.procs.clear()
        shutil.rmtree(self.dir, ignore_errors=True)

    def log(self, name: str) -> str:
        path = self.dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def json(self, command: str) -> Any:
        return json.loads(self.vtysh(["-c", command]) or "{}")

    def neighbor_states(self) -> dict[str, str]:
        return {address: info.get("bgpState", "?") for address, info in self.json("show bgp neighbors json").items()
                if isinstance(info, dict)}
