"""A throwaway real sshd inside a network namespace, reached from the host through a veth pair.

Used by the delivery tests and bench/delivery_bench.py. Addresses come from 192.0.2.0/24 (documentation range) and
live only on the veth pair, so no packet leaves the machine. Needs root.
"""

from __future__ import annotations

import ipaddress
import logging
import random
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from hostconfig.deliver.push import SshTarget

logger = logging.getLogger(__name__)

DOC_NET = ipaddress.ip_network("192.0.2.0/24")
SSHD = "/usr/sbin/sshd"


def _run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def _host_addresses() -> set[str]:
    out = _run("ip", "-o", "-4", "addr", "show")
    return {line.split()[3].split("/")[0] for line in out.splitlines() if len(line.split()) > 3}


@dataclass
class VethLink:
    host_ifname: str
    host_ip: str
    ns_ip: str

    def delete(self) -> None:
        subprocess.run(["ip", "link", "del", self.host_ifname], check=False, capture_output=True)


def link_netns(netns: str) -> VethLink:
    """veth pair host <-> netns on a free /30 of 192.0.2.0/24 (host .1, namespace .2 of that /30)."""
    used = _host_addresses()
    subnets = list(DOC_NET.subnets(new_prefix=30))
    random.shuffle(subnets)
    for subnet in subnets:
        host_ip, ns_ip = (str(a) for a in list(subnet.hosts())[:2])
        if host_ip in used or ns_ip in used:
            continue
        host_if = f"hvd{uuid.uuid4().hex[:8]}"
        _run("ip", "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", netns)
        _run("ip", "addr", "add", f"{host_ip}/30", "dev", host_if)
        _run("ip", "link", "set", host_if, "up")
        _run("ip", "-n", netns, "addr", "add", f"{ns_ip}/30", "dev", "eth0")
        _run("ip", "-n", netns, "link", "set", "eth0", "up")
        return VethLink(host_if, host_ip, ns_ip)
    raise RuntimeError("no free /30 in 192.0.2.0/24 on this host")


def make_keypair(path: Path, kind: str = "ed25519") -> tuple[str, str]:
    """(private key text, public key line) written by ssh-keygen to `path` (keys go to files, never to argv)."""
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", f"hybrid-vpn-test-{kind}", "-f", str(path)],
                   check=True, capture_output=True)
    return path.read_text(), Path(f"{path}.pub").read_text().strip()


@dataclass
class SshdLab:
    netns: str
    link: VethLink
    workdir: Path
    port: int
    host_public_key: str
    client_private_key: str = field(repr=False)
    log_path: Path
    process: subprocess.Popen | None = None

    def start(self, deadline_seconds: float = 30.0) -> None:
        """Start `sshd -D -e` in the namespace with a private /run; return once it accepts TCP connections."""
        log_file = self.log_path.open("ab")
        # `ip netns exec` gives a private mount namespace: the /run bind mount stays inside it.
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, "sh", "-c",
             'mount --bind "$1" /run && mkdir -p /run/sshd && exec "$2" -D -e -f "$3"',
             "sh", str(self.workdir / "run"), SSHD, str(self.workdir / "sshd_config")],
            stdout=log_file, stderr=subprocess.STDOUT,
        )
        log_file.close()
        end = time.monotonic() + deadline_seconds
        while time.monotonic() < end:
            if self.process.poll() is not None:
                raise RuntimeError(f"sshd exited with {self.process.returncode}: {self.log()[-2000:]}")
            try:
                with socket.create_connection((self.link.ns_ip, self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"sshd in {self.netns} not listening on {self.link.ns_ip}:{self.port} "
                           f"after {deadline_seconds}s")

    def target(self, **overrides) -> SshTarget:
        values = dict(host=self.link.ns_ip, port=self.port, user="root", host_public_key=self.host_public_key,
                      private_key=self.client_private_key, connect_deadline_seconds=60.0)
        values.update(overrides)
        return SshTarget(**values)

    def reload_command(self) -> list[str]:
        """What `systemctl reload ssh` does, for this sshd: SIGHUP (sshd re-executes itself and re-reads its keys)."""
        return ["sh", "-c", 'kill -HUP "$(cat "$1")"', "sh", str(self.workdir / "sshd.pid")]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def netns_exec(self, *argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.netns, *argv], capture_output=True, text=True)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.link.delete()


SFTP_SERVER = "/usr/lib/openssh/sftp-server"


def _sshd_config(workdir: Path, listen: str, port: int, sftp_log: Path | None = None,
                 host_key: Path | None = None) -> str:
    # internal-sftp logs to syslog only; with sftp_log the external sftp-server writes its log (every OPEN with the
    # mode it asked for) to that file, with umask 0 so the mode in the request alone decides the created file's mode.
    sftp = "Subsystem sftp internal-sftp -l DEBUG3"
    if sftp_log is not None:
        wrapper = workdir / "sftp-server-logged"  # sshd_config cannot quote a shell command line
        wrapper.write_text(f'#!/bin/sh\numask 0\nexec {SFTP_SERVER} -e -l DEBUG3 2>>"{sftp_log}"\n')
        wrapper.chmod(0o755)
        sftp = f"Subsystem sftp {wrapper}"
    return "\n".join([
        f"Port {port}",
        f"ListenAddress {listen}",
        f"HostKey {host_key or workdir / 'ssh_host_ed25519_key'}",
        f"PidFile {workdir / 'sshd.pid'}",
        f"AuthorizedKeysFile {workdir / 'authorized_keys'}",
        "UsePAM no",
        "StrictModes no",
        "PermitRootLogin prohibit-password",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        # The most verbose level, so the log test sees everything sshd could ever write about a session.
        "LogLevel DEBUG3",
        sftp,
        "",
    ])


def prepare_sshd(netns: str, workdir: Path, port: int = 2222, link: VethLink | None = None,
                 sftp_log: Path | None = None, host_key: Path | None = None) -> SshdLab:
    """Keys, authorized_keys, config and the veth link, without starting sshd (a test can start it later).
    `host_key`: where the host key lives (a test that replaces it, as delivery does); default in workdir."""
    if not Path(SSHD).exists():
        raise FileNotFoundError(f"{SSHD} not installed (Debian package openssh-server)")
    workdir.mkdir(parents=True, exist_ok=True)
    link = link or link_netns(netns)
    if host_key is not None:
        host_key.parent.mkdir(parents=True, exist_ok=True)
    _, host_public = make_keypair(host_key or workdir / "ssh_host_ed25519_key")
    client_private, client_public = make_keypair(workdir / "client_key")
    (workdir / "authorized_keys").write_text(client_public + "\n")
    (workdir / "client_key").unlink()  # the test holds the key in memory only, like the Pulumi config does
    (workdir / "sshd_config").write_text(_sshd_config(workdir, link.ns_ip, port, sftp_log, host_key))
    (workdir / "run").mkdir(exist_ok=True)
    return SshdLab(netns, link, workdir, port, host_public, client_private, workdir / "sshd.log")


def start_sshd(netns: str, workdir: Path, port: int = 2222, deadline_seconds: float = 30.0) -> SshdLab:
    lab = prepare_sshd(netns, workdir, port)
    try:
        lab.start(deadline_seconds)
    except BaseException:
        lab.stop()
        raise
    return lab
