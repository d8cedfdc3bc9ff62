"""Fixtures for the hardening tests: the agent test helpers (tests/agent/agent_testlib.py) on sys.path, and a gateway
namespace reconciled once per module so many bad inputs can be checked against one known-good kernel state."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

AGENT_TESTS = Path(__file__).resolve().parent.parent / "agent"
if str(AGENT_TESTS) not in sys.path:
    sys.path.insert(0, str(AGENT_TESTS))
from agent_testlib import config_dict, wire_gateway, write_config  # noqa: E402


@dataclass
class ReconciledGateway:
    """A gateway namespace (veth 'tunnels' into an AWS namespace) after one good `vpnctl reconcile`."""

    ns: str
    aws: str
    tmp: Path
    data: dict[str, Any]
    config: Path


def _add_netns(prefix: str, made: list[str]) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    made.append(name)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
    return name


@pytest.fixture(scope="module")
def reconciled_gateway(tmp_path_factory):
    """Module-wide (many bad inputs checked against one known-good state); every namespace is deleted at the end."""
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool} (Debian packages iproute2, nftables)")
    from hardening_lib import vpnctl, without_ipv6

    tmp = tmp_path_factory.mktemp("hardening-gw")
    made: list[str] = []
    try:
        gw, aws = _add_netns("hvhgw", made), _add_netns("hvhaws", made)
        without_ipv6(gw)
        data = config_dict(tmp, aws_cidrs=["10.0.0.0/16", "10.1.0.0/16"])
        config = write_config(tmp, data)
        wire_gateway(gw, aws, data)
        # A default route in main: should our rule or unreachable routes go missing, AWS traffic would take it.
        subprocess.run(["ip", "-n", gw, "route", "add", "default", "via", "172.16.1.254", "dev", "eth1"], check=True)
        good = vpnctl(gw, config, "reconcile", "--tunnel-links", "given", "--json")
        assert good.returncode == 0, good.stderr.decode()
        yield ReconciledGateway(gw, aws, tmp, data, config)
    finally:
        for name in reversed(made):
            subprocess.run(["ip", "netns", "del", name], check=False)
