"""Fixtures for the agent's root tests: a gateway namespace whose tunnel links are veth pairs into an 'AWS' namespace
(this kernel has no ip_vti; the VTI itself is exercised by the lab VM), and a real charon with a private VICI socket."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from agent_testlib import REPO, config_dict, run_in_netns, wire_gateway, write_config
from testlib import CHARON, Charon

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
