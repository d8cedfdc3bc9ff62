"""Fixtures for the agent's root tests: a gateway namespace whose tunnel links are veth pairs into an 'AWS' namespace
(this kernel has no ip_vti; the VTI itself is exercised by the lab VM), and a real charon with a private VICI socket."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from agent_testlib import REPO, config_dict, run_in_netns, wait_for, wire_gateway, write_config

PYTHON = sys.executable


@dataclass
class Gateway:
    ns: str
    aws: str
    tmp: Path
    data: dict[str, Any]
    config: Path

    def reconcile(self, up: set[str], active: str | None, link_mode: str = "given") -> tuple[list[str], list[str]]:
        return run_in_netns(self.ns, _reconcile, str(self.config), frozenset(up), active, link_mode)

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "-n", self.ns, *args], capture_output=True, text=True, check=check)

    def run(self, *args: str, check: bool = False, **kw: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.ns, *args], capture_output=True, text=True, check=check,
                              **kw)

    def aws_exec(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.aws, *args], capture_output=True, text=True, check=True,
                              input=input)

    def vpnctl(self, *args: str, env: dict[str, str] | None = None, timeout: float = 120
               ) -> subprocess.CompletedProcess[str]:
        full_env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "PYTHONPATH": str(REPO),
                    **(env or {})}
        return subprocess.run(["ip", "netns", "exec", self.ns, PYTHON, "-m", "hostconfig.agent.cli", *args,
                               "--config", str(self.config)], capture_output=True, text=True, env=full_env,
                              timeout=timeout)


def _reconcile(config: str, up: frozenset[str], active: str | None, link_mode: str) -> tuple[list[str], list[str]]:
    from hostconfig.agent.config import load_config
    from hostconfig.agent.desired import TunnelView
    from hostconfig.agent.kernel import Kernel
    from hostconfig.agent.reconcile import Reconciler

    cfg = load_config(config)
    with Kernel() as kernel:
        result = Reconciler(cfg, kernel, link_mode).run(TunnelView(up, active))  # type: ignore[arg-type]
    return [str(c) for c in result.changes], result.problems


@pytest.fixture
def gateway(netns, tmp_path):
    if shutil.which("nft") is None:
        pytest.skip("needs nft (Debian package nftables)")
    gw, aws = netns("hvagw"), netns("hvaaws")
    data = config_dict(tmp_path)
    config = write_config(tmp_path, data)
    wire_gateway(gw, aws, data)
    return Gateway(gw, aws, tmp_path, data, config)


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


@pytest.fixture
def charon_factory(tmp_path):
    if not CHARON.exists():
        pytest.skip("needs strongSwan charon (/usr/lib/ipsec/charon, Debian package strongswan-charon)")
    made: list[Charon] = []

    def make(ns: str, name: str = "charon") -> Charon:
        charon = Charon(ns, tmp_path / name)
        made.append(charon)
        return charon

    yield make
    for charon in made:
        charon.stop()
