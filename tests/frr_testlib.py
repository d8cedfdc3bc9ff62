"""Real FRR (zebra + bgpd from Debian's frr) in a test's network namespace, with its own config, pid files, vty
sockets and logs under the test's directory: nothing shared with the host's (disabled) frr.service or another test."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from testlib import wait_for

from hostconfig import gateway_paths
from hostconfig.agent.frr import Vtysh
from lab.frr import FRR_USER, answers_argv, aws_bgpd_conf, daemon_argv

FRR_DAEMONS = Path(gateway_paths.FRR_BGPD).parent


def frr_missing() -> str | None:
    for path in (FRR_DAEMONS / "zebra", Path(gateway_paths.FRR_BGPD), Path(gateway_paths.VTYSH)):
        if not path.exists():
            return f"needs Debian's frr ({path} missing; scripts/setup-machine installs it)"
    return None


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
        argv = daemon_argv(name, str(self.dir), f"{self.dir}/{name}.conf",
                           ["--log", f"file:{self.dir}/{name}.log", *extra])
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
        self.stop_daemons()
        shutil.rmtree(self.dir, ignore_errors=True)

    def stop_daemons(self) -> None:
        """SIGTERM, as a `systemctl stop frr`; the directory stays, with the vty socket files FRR leaves behind."""
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=20)
        self.procs.clear()

    def restart_as_the_lab_does(self, frr_conf: str) -> None:
        """`lab restart frr` (lab/gateway.py restart_frr): stop, start zebra and bgpd without config, wait for each
        to answer (lab.frr.answers_argv), then `vtysh -b` applies the integrated ``frr_conf``."""
        (self.dir / "frr.conf").write_text(frr_conf)
        (self.dir / "vtysh.conf").write_text("service integrated-vtysh-config\n")
        (self.dir / "bgpd.conf").write_text("!\n")
        self.stop_daemons()
        for name in ("zebra", "bgpd"):
            self._daemon(name)
            wait_for(lambda n=name: subprocess.run(["ip", "netns", "exec", self.ns, *answers_argv(n, str(self.dir))],
                                                   capture_output=True).returncode == 0, what=f"{name} answering")
        self.vtysh(["--config_dir", str(self.dir), "-b"])

    def log(self, name: str) -> str:
        path = self.dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def json(self, command: str) -> Any:
        return json.loads(self.vtysh(["-c", command]) or "{}")

    def neighbor_states(self) -> dict[str, str]:
        return {address: info.get("bgpState", "?") for address, info in self.json("show bgp neighbors json").items()
                if isinstance(info, dict)}


# --------------------------------------------------------------------- the two-tunnel BGP pair (test_bgp_netns, bench)
AMAZON_ASN = 64512  # AWS's default Amazon-side ASN
AWS_CIDR = "10.0.0.0/16"
DROP_TABLE = "hvtest_drop"


def sh(*args: str, input_text: str | None = None) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True, input=input_text).stdout


def aws_frr_conf(plan: Any) -> str:
    """The 'AWS' end as the lab's (lab/frr.py): ASN 64512, AWS's timers and route limit, the VPC CIDR, no ECMP."""
    return aws_bgpd_conf(amazon_asn=AMAZON_ASN, customer_asn=plan.routing.customer_asn,
                         router_id=str(plan.tunnels[0].aws_inside_ip),
                         neighbors=[str(t.gateway_inside_ip) for t in plan.tunnels], networks=[AWS_CIDR])


def wire_tunnels(gw: str, aws: str, plan: Any) -> dict[str, str]:
    """One veth pair per tunnel (gateway end named like its VTI, inside addresses as planned); tunnel -> AWS's link."""
    links = {}
    for i, t in enumerate(plan.tunnels, start=1):
        sh("ip", "-n", gw, "link", "add", t.interface, "type", "veth", "peer", "name", f"aws{i}", "netns", aws)
        sh("ip", "-n", gw, "addr", "add", f"{t.gateway_inside_ip}/{t.inside_cidr.prefixlen}", "dev", t.interface)
        sh("ip", "-n", aws, "addr", "add", f"{t.aws_inside_ip}/{t.inside_cidr.prefixlen}", "dev", f"aws{i}")
        sh("ip", "-n", gw, "link", "set", t.interface, "up")
        sh("ip", "-n", aws, "link", "set", f"aws{i}", "up")
        links[t.name] = f"aws{i}"
    return links


def drop_link(gw: str, interface: str) -> None:
    """Every packet on the gateway's ``interface`` dropped, the link left up: a VTI whose ESP died."""
    sh("ip", "netns", "exec", gw, "nft", "-f", "-", input_text=(
        f"table inet {DROP_TABLE} {{\n"
        f'  chain in {{ type filter hook input priority 0; iifname "{interface}" drop; }}\n'
        f'  chain out {{ type filter hook output priority 0; oifname "{interface}" drop; }}\n'
        "}\n"))


def heal_link(gw: str) -> None:
    sh("ip", "netns", "exec", gw, "nft", "delete", "table", "inet", DROP_TABLE)


def aws_egress(aws: str, address: str) -> str:
    """The AWS namespace's kernel decision for ``address``: the link it sends on (zebra installed FRR's best); "" while
    the kernel has no route for it (bgpd can have its best path a moment before zebra installs it: under load the
    wait for "AWS on the primary" read that moment and failed on `ip route get`'s "Network is unreachable")."""
    got = subprocess.run(["ip", "-n", aws, "-4", "route", "get", address], capture_output=True, text=True)
    words = got.stdout.split() if got.returncode == 0 else []
    return words[words.index("dev") + 1] if "dev" in words else ""


def aws_bgp_routes(aws: str) -> dict[str, str]:
    """prefix -> link of every BGP route in the AWS namespace's kernel."""
    return {r["dst"]: r.get("dev", "") for r in json.loads(sh("ip", "-n", aws, "-j", "-4", "route", "show",
                                                               "proto", "bgp") or "[]")}


def best(frr: FrrInstance, address: str) -> tuple[str, str] | None:
    """(prefix, peer) of bgpd's best path for ``address`` (longest match), None when there is none."""
    found = frr.json(f"show bgp ipv4 unicast {address} json")
    for path in found.get("paths", []):
        if path.get("bestpath", {}).get("overall"):
            return found["prefix"], path["peer"]["peerId"]
    return None


@contextlib.contextmanager
def frr_pair(gw: str, aws: str, plan: Any) -> Iterator[tuple[FrrInstance, FrrInstance]]:
    """The gateway's FRR with the rendered frr.conf and the 'AWS' one, both running; both stopped on exit."""
    from hostconfig.render import render_frr_conf

    started: list[FrrInstance] = []
    try:
        gateway = FrrInstance(gw, render_frr_conf(plan))
        started.append(gateway)
        gateway.start()
        amazon = FrrInstance(aws, aws_frr_conf(plan))
        started.append(amazon)
        amazon.start()
        yield gateway, amazon
    finally:
        for frr in reversed(started):
            frr.stop()
