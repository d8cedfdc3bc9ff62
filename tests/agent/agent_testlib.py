"""Helpers for the agent tests: a valid agent.json, a sample ruleset, a gateway namespace wired with veth pairs, and a
way to run code inside a namespace (fork + setns) so the reconciler's netlink, /proc/sys and nft all see it."""

from __future__ import annotations

import copy
import ctypes
import json
import os
import pickle
import subprocess
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from testlib import wait_for  # noqa: F401  (re-exported for the agent tests)

CLONE_NEWNET = 0x40000000
REPO = Path(__file__).resolve().parents[2]

BASE_CONFIG: dict[str, Any] = {
    "version": 1,
    "public_interface": "eth0",
    "vlan_interface": "eth1",
    "gateway_vlan_address": "172.16.1.1/24",
    "local_outside_ip": "10.8.0.2",
    "aws_cidrs": ["10.0.0.0/16"],
    "vlan_cidrs": ["172.16.0.0/12"],
    "tunnels": [
        {"name": "tunnel1", "interface": "vti-aws1", "mark": 100, "remote_outside_ip": "198.51.100.1",
         "gateway_inside_cidr": "169.254.10.2/30", "aws_inside_ip": "169.254.10.1"},
        {"name": "tunnel2", "interface": "vti-aws2", "mark": 200, "remote_outside_ip": "198.51.100.2",
         "gateway_inside_cidr": "169.254.11.2/30", "aws_inside_ip": "169.254.11.1"},
    ],
    "mtu": 1419,
    "primary_tunnel": "tunnel1",
    "probe": {"interval_ms": 200, "timeout_ms": 600, "down_after": 3, "up_after": 5, "failback_hold_seconds": 20,
              "extra_targets": []},
    "ownership": {"route_table": 1519, "route_protocol": 157, "rule_priority": 10100, "nft_table": "hybrid_vpn"},
    "paths": {
        "nft_ruleset": "/etc/hybrid-vpn/nftables.nft",
        "state_dir": "/run/hybrid-vpn",
        "metrics_file": "/var/lib/prometheus/node-exporter/hybrid_vpn.prom",
        "vici_socket": "/run/charon.vici",
    },
}

RULESET = """table inet hybrid_vpn {
  chain forward {
    type filter hook forward priority filter; policy accept;
    iifname "eth1" oifname { "vti-aws1", "vti-aws2" } counter accept
    iifname { "vti-aws1", "vti-aws2" } oifname "eth1" counter accept
  }
  chain mangle_forward {
    type filter hook forward priority mangle; policy accept;
    oifname { "vti-aws1", "vti-aws2" } tcp flags syn tcp option maxseg size set 1379
  }
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr 172.16.0.0/12 ip daddr 10.0.0.0/16 counter accept
    ip saddr 172.16.0.0/12 oifname "eth0" counter masquerade
  }
}
"""


def config_dict(tmp: Path, aws_cidrs: list[str] | None = None, **top: Any) -> dict[str, Any]:
    data = copy.deepcopy(BASE_CONFIG)
    data["paths"] = {
        "nft_ruleset": str(tmp / "nftables.nft"),
        "state_dir": str(tmp / "state"),
        "metrics_file": str(tmp / "metrics" / "hybrid_vpn.prom"),
        "vici_socket": str(tmp / "charon.vici"),
    }
    if aws_cidrs is not None:
        data["aws_cidrs"] = aws_cidrs
    data.update(top)
    return data


def write_config(tmp: Path, data: dict[str, Any] | None = None, ruleset: str = RULESET) -> Path:
    data = data if data is not None else config_dict(tmp)
    path = tmp / "agent.json"
    path.write_text(json.dumps(data, indent=2))
    Path(data["paths"]["nft_ruleset"]).write_text(ruleset)
    return path


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), check=check, capture_output=True, text=True)


def wire_gateway(gw: str, aws: str, data: dict[str, Any], with_aws_addresses: bool = True) -> None:
    """veth pairs stand in for the VTIs (this kernel has no ip_vti): gateway end named like the VTI, the other end
    in the 'AWS' namespace holding the AWS inside address, so probes to it really get answered."""
    sh("ip", "-n", gw, "link", "add", "eth1", "type", "veth", "peer", "name", "lan0")
    sh("ip", "-n", gw, "link", "set", "eth1", "up")
    sh("ip", "-n", gw, "addr", "add", data["gateway_vlan_address"], "dev", "eth1")
    for i, tunnel in enumerate(data["tunnels"], start=1):
        sh("ip", "-n", gw, "link", "add", tunnel["interface"], "type", "veth", "peer", "name", f"aws{i}",
           "netns", aws)
        if with_aws_addresses:
            prefix = tunnel["gateway_inside_cidr"].split("/")[1]
            sh("ip", "-n", aws, "addr", "add", f"{tunnel['aws_inside_ip']}/{prefix}", "dev", f"aws{i}")
        sh("ip", "-n", aws, "link", "set", f"aws{i}", "up")


def run_in_netns(ns: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run ``fn(*args)`` in a forked child that joined namespace ``ns``; return its result or raise its error."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read_fd)
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
            if libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns")
            os.close(fd)
            payload = pickle.dumps(("ok", fn(*args, **kwargs)))
        except BaseException:  # noqa: BLE001 - everything goes back to the parent
            payload = pickle.dumps(("error", traceback.format_exc()))
        with os.fdopen(write_fd, "wb") as out:
            out.write(payload)
        os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as stream:
        data = stream.read()
    os.waitpid(pid, 0)
    status, value = pickle.loads(data)
    if status != "ok":
        raise AssertionError(f"in netns {ns}:\n{value}")
    return value


