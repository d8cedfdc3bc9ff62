"""The gateway's first boot, for real: a Debian 12 VM (systemd, cloud-init, sshd) booted from the program's user data,
then the real delivery, then a reboot with VLAN traffic running (lab/first_boot.py, lab/debian_image.py).

One VM per module, in order: boot -> cloud-init -> pinned key -> delivery -> units -> vpnctl -> secrets -> reboot.
No AWS side is attached (see lab/README.md, "First boot"): the tunnels stay down, which is the state the boot-time
leak window is about.

The stack is in routing.mode bgp: its gateway is a static stack's plus FRR (the same guard, units, files and delivery),
so one boot covers both, and FRR's own steps are the ones only a real boot can show: cloud-init installs and starts it,
the delivery activates frr.conf through systemd, and it comes back with bgpd at every boot. What a static stack's user
data leaves out (no FRR) is checked without a VM (tests/test_deliver_frr.py).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest

from hostconfig import gateway_paths as gp
from lab import debian_image, first_boot
from lab.host_config_source import BGP_ROUTING

pytestmark = [pytest.mark.vm, pytest.mark.root]

BOOT_TIMEOUT = 900.0  # TCG on a loaded 2-core machine: sshd up in 108-266 s measured; generous
CLOUD_INIT_TIMEOUT = 900.0
STREAM_PORT = 40404
UNITS = ("hybrid-vpn-guard.service", "hybrid-vpn-failover.service", "strongswan.service", "frr.service")
# cloud-init log lines at WARNING or above that are expected in this VM, with why. None so far: package_update's
# apt-get update, which cannot reach a mirror here, exits 0 (it keeps the image's lists) and logs no warning.
EXPLAINED_WARNINGS: tuple[str, ...] = ()


def _why_cannot_run() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, taps)"
    for tool in ("qemu-system-x86_64", "mmdebstrap", "mkfs.ext4", "debugfs", "cloud-localds", "ssh", "ssh-keyscan",
                 "tcpdump", "nft"):
        if shutil.which(tool) is None:
            return f"needs {tool} (apt-get install mmdebstrap cloud-image-utils genisoimage qemu-system-x86 ...)"
    return None


@pytest.fixture(scope="module")
def gateway():
    reason = _why_cannot_run()
    if reason:
        pytest.skip(reason)
    out = first_boot.reset_run_dir()
    op = first_boot.run_operator(out, routing_mode="bgp")
    t0 = time.monotonic()
    image = debian_image.ensure_image(debian_image.packages_of_user_data(op.user_data))
    print(f"image ready in {time.monotonic() - t0:.1f} s", flush=True)
    vm = first_boot.start(image, op, out)
    try:
        t1 = time.monotonic()
        vm.wait(vm.presented_host_key, BOOT_TIMEOUT, "sshd of the booted gateway answers", interval=3)
        vm.boot_seconds = time.monotonic() - t1
        print(f"sshd up {vm.boot_seconds:.1f} s after QEMU started", flush=True)
        yield vm
    finally:
        first_boot.stop(vm)


@pytest.fixture(scope="module")
def cloud_init_done(gateway):
    proc = gateway.ssh("cloud-init status --wait --long", timeout=CLOUD_INIT_TIMEOUT)
    return proc


@pytest.fixture(scope="module")
def delivered(gateway, cloud_init_done):
    t0 = time.monotonic()
    proc = subprocess.run(first_boot.in_ns("wan", [sys.executable, "-m", "lab.first_boot", "push", str(gateway.out)]),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"delivery failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}"
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"delivery {time.monotonic() - t0:.1f} s: {result['changed_paths']}", flush=True)
    return result


def _ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, f"rc {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_sshd_presents_the_pinned_bootstrap_key_from_user_data(gateway):
    assert gateway.presents(gateway.op.bootstrap_host_key), (
        f"sshd presents {gateway.presented_host_key()!r}, not the user data's key")


def test_cloud_init_completes_without_error(gateway, cloud_init_done):
    assert cloud_init_done.returncode == 0, f"cloud-init status:\n{cloud_init_done.stdout}{cloud_init_done.stderr}"
    assert re.search(r"^status: done$", cloud_init_done.stdout, re.M), cloud_init_done.stdout
    log = _ok(gateway.ssh("grep -E '\\[(WARNING|ERROR|CRITICAL)\\]' /var/log/cloud-init.log || true"))
    unexplained = [line for line in log.splitlines() if not any(k in line for k in EXPLAINED_WARNINGS)]
    assert not unexplained, "cloud-init logged:\n" + "\n".join(unexplained)
    # the user data's packages are installed (by the image build; cloud-init's package step found them there)
    packages = debian_image.packages_of_user_data(gateway.op.user_data)
    status = _ok(gateway.ssh("dpkg-query -W -f '${Package} ${db:Status-Status}\\n' " + " ".join(packages)))
    assert sorted(status.split("\n")[:-1]) == sorted(f"{p} installed" for p in packages)
    # the units the user data writes are in place and enabled, strongswan runs, and it is the only charon
    _ok(gateway.ssh("systemctl is-enabled hybrid-vpn-failover.service hybrid-vpn-guard.service strongswan.service"))
    assert _ok(gateway.ssh("systemctl is-active strongswan.service")).strip() == "active"
    assert gateway.ssh("systemctl is-active strongswan-starter.service").stdout.strip() != "active"
    assert _charon_processes(gateway) == {"charon-systemd": 1, "charon": 0, "starter": 0}


def _active(gateway) -> list[str]:
    return gateway.ssh("systemctl is-active " + " ".join(UNITS)).stdout.split()


def _bgp_neighbors(gateway) -> dict[str, dict]:
    """bgpd's neighbors (address -> facts) as FRR reports them on the gateway."""
    out = _ok(gateway.ssh("vtysh -c 'show bgp neighbors json'"))
    return json.loads(out)


def _charon_processes(gateway) -> dict[str, int]:
    """IKE daemons by process name: charon-systemd (strongswan.service) and the starter's charon, which must not run."""
    names = ("charon-systemd", "charon", "starter")
    out = _ok(gateway.ssh("; ".join(f"pgrep -c -x {n} || true" for n in names)))
    return dict(zip(names, (int(n) for n in out.split()), strict=True))


def test_delivery_pushes_and_activates_through_systemd(gateway, delivered):
    assert "/etc/swanctl/conf.d/hybrid-vpn.conf" in delivered["changed_paths"]
    assert "/usr/local/sbin/vpnctl" in delivered["changed_paths"]
    states = _active(gateway)
    assert states == ["active"] * len(UNITS), dict(zip(UNITS, states, strict=False))
    assert _charon_processes(gateway) == {"charon-systemd": 1, "charon": 0, "starter": 0}
    # the push installed the delivered host key and sshd serves it; the bootstrap key is gone
    assert gateway.presents(gateway.op.delivered_host_key)
    assert gateway.ssh("nft list table inet hybrid_vpn").returncode == 0
    conns = _ok(gateway.ssh("swanctl --list-conns"))
    assert "tunnel1" in conns and "tunnel2" in conns


def test_frr_runs_the_delivered_bgp_config_through_systemd(gateway, delivered):
    """cloud-init started bgpd without sessions; the push's frr.conf (checked by FRR, then `systemctl reload-or-restart
    frr`) gave it one neighbor per tunnel at AWS's inside address, AWS's ASN and timers, and the agent sees them."""
    assert gp.FRR_CONF.path in delivered["changed_paths"]
    _ok(gateway.ssh("systemctl is-enabled frr.service"))
    assert _ok(gateway.ssh("pgrep -c -x bgpd")).strip() == "1"
    hc = gateway.op.host_config
    aws_inside = {t["aws_inside_ip"] for t in hc["tunnels"]}
    neighbors = _bgp_neighbors(gateway)
    assert set(neighbors) == aws_inside, neighbors.keys()
    for address, facts in neighbors.items():
        assert facts["remoteAs"] == hc["routing"]["amazon_side_asn"], (address, facts["remoteAs"])
        assert facts["localAs"] == hc["routing"]["customer_asn"] == BGP_ROUTING["customer_asn"], facts
        assert (facts["bgpTimerConfiguredHoldTimeMsecs"], facts["bgpTimerConfiguredKeepAliveIntervalMsecs"]) == (
            30000, 10000), facts
    # no AWS side here: the sessions cannot come up, but the agent reads them from bgpd (not "missing")
    sessions = json.loads(_ok(gateway.ssh("vpnctl status --json")))["bgp"]["sessions"]
    assert set(sessions) == {"tunnel1", "tunnel2"} and "missing" not in sessions.values(), sessions
    # the product's file with the product's owner and mode (hostconfig/gateway_paths.py), as every delivered file
    f = gp.FRR_CONF
    assert _ok(gateway.ssh(f"stat -c '%u %g %a' {f.path}")).split() == [str(f.uid), str(f.gid), f"{f.mode:o}"]


def test_vpnctl_status_and_doctor_run(gateway, delivered):
    status = _ok(gateway.ssh("vpnctl status --json"))
    names = [t["name"] for t in json.loads(status)["tunnels"]]
    assert names == ["tunnel1", "tunnel2"]
    doctor = gateway.ssh("vpnctl doctor --json")
    assert doctor.returncode in (0, 1), doctor.stderr  # 1: a check fails (no AWS side here: tunnels down)
    report = json.loads(doctor.stdout)
    assert report["checks"], report
    by_name = {c["name"]: c["status"] for c in report["checks"]}
    print("doctor:", by_name, flush=True)


def test_no_psk_in_the_journal_or_in_files_non_root_can_read(gateway, delivered):
    psks = "\n".join(gateway.op.psks) + "\n"
    # the PSKs go in on stdin, never on a command line; only counts come back
    journal = _ok(gateway.ssh("journalctl -b --no-pager -o cat | grep -c -F -f /dev/stdin || true", input=psks))
    assert journal.strip() == "0", f"{journal.strip()} journal lines hold a PSK"
    procs = _ok(gateway.ssh("ps -e -ww -o args= | grep -c -F -f /dev/stdin || true", input=psks))
    assert procs.strip() == "0", f"{procs.strip()} process command lines hold a PSK"
    # control: a world-readable canary file the search must find (and nothing else)
    canary, canary_path = "hybrid-vpn-canary-" + os.urandom(8).hex(), "/run/hybrid-vpn-first-boot-canary"
    _ok(gateway.ssh(f"umask 022; cat > {canary_path}", input=canary + "\n"))
    readable = _ok(gateway.ssh("python3 -c " + shlex.quote(READABLE_BY_OTHERS_WITH), input=psks + canary + "\n",
                               timeout=900))
    gateway.ssh(f"rm -f {canary_path}")
    assert readable.split() == [canary_path], f"files readable by a non-root user hold a PSK: {readable.split()}"
    # and the secret file is there for root, 0600 (so the search above could have found it)
    assert _ok(gateway.ssh("stat -c %a /etc/swanctl/conf.d/hybrid-vpn.conf")).strip() == "600"
    assert _ok(gateway.ssh("grep -c -F -f /dev/stdin /etc/swanctl/conf.d/hybrid-vpn.conf", input=psks)).strip() == "2"


# On the gateway, PSKs on stdin: every regular file a non-root user can read (others' bit; group bit with a non-root
# group; a non-root owner) under the trees anything writes to at run time, the journal's files included.
READABLE_BY_OTHERS_WITH = r"""
import os, stat, sys
keys = [k.encode() for k in sys.stdin.read().split()]
for top in ("/etc", "/var", "/run", "/tmp", "/root", "/home", "/usr/local", "/srv", "/opt"):
    for root, _dirs, files in os.walk(top):
        for name in files:
            path = os.path.join(root, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            m = st.st_mode
            if not stat.S_ISREG(m) or st.st_size > 64 << 20:
                continue
            if not (m & 0o004 or (m & 0o040 and st.st_gid != 0) or (m & 0o400 and st.st_uid != 0)):
                continue
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except OSError:
                continue
            if any(k in data for k in keys):
                print(path)
"""

STREAM = r"""
import socket, sys, time, os
dst, port, stop_file, limit = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sent, end, n = 0, time.monotonic() + limit, 0
while time.monotonic() < end and not os.path.exists(stop_file):
    n += 1
    try:
        s.sendto(b"hybrid-vpn-first-boot %d" % n, (dst, port)); sent += 1
    except OSError:
        pass
    time.sleep(0.02)
print(sent)
"""


def _capture(ns: str, iface: str, pcap, bpf: list[str]) -> subprocess.Popen:
    proc = subprocess.Popen(first_boot.in_ns(ns, ["tcpdump", "-i", iface, "-n", "-U", "-w", str(pcap), *bpf]),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not pcap.exists() and time.monotonic() < deadline:  # tcpdump creates the file once it listens
        time.sleep(0.1)
    return proc


def _count(pcap, bpf: str) -> list[str]:
    proc = subprocess.run(["tcpdump", "-r", str(pcap), "-n", bpf], capture_output=True, text=True, timeout=120)
    return proc.stdout.splitlines()


def test_reboot_with_a_vlan_stream_leaks_nothing_and_the_agent_comes_back(gateway, delivered):
    hc = gateway.op.host_config
    vpc_host = "10.0.4.85"  # any address of the AWS CIDRs; the lab's VPC host
    assert any(vpc_host.startswith(c.split(".")[0] + ".") for c in hc["aws"]["cidrs"])
    out = gateway.out
    wan_pcap, vlan_pcap, stop_file = out / "wan.pcap", out / "vlan.pcap", out / "stream.stop"
    wan = _capture("wan", first_boot.WAN_TAP, wan_pcap, [])
    vlan = _capture("vlan", first_boot.VLAN_TAP, vlan_pcap, ["udp", "port", str(STREAM_PORT)])
    stream = subprocess.Popen(first_boot.in_ns("vlan", [sys.executable, "-c", STREAM, vpc_host, str(STREAM_PORT),
                                                        str(stop_file), "1500"]), stdout=subprocess.PIPE, text=True)
    try:
        old_boot = gateway.boot_id()
        assert old_boot
        t0 = time.monotonic()
        gateway.ssh("systemctl reboot", timeout=60)
        gateway.wait(lambda: (b := gateway.boot_id()) and b != old_boot, BOOT_TIMEOUT, "the gateway back after reboot",
                     interval=3)
        gateway.wait(lambda: _active(gateway) == ["active"] * len(UNITS), 300,
                     "guard, agent, strongswan and frr active after the reboot")
        print(f"reboot: agent active again {time.monotonic() - t0:.1f} s after `systemctl reboot`", flush=True)
        _ok(gateway.ssh("vpnctl status"))
        assert set(_bgp_neighbors(gateway)) == {t["aws_inside_ip"] for t in hc["tunnels"]}, "bgpd after the reboot"
        time.sleep(10)  # traffic keeps arriving at the running gateway: a leak now would show too
    finally:
        stop_file.touch()
        sent = int((stream.communicate(timeout=60)[0] or "0").strip() or 0)
        for proc in (wan, vlan):
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60)
    aws, vlans = hc["aws"]["cidrs"], hc["linode"]["vlan_cidrs"]
    clear = " or ".join([f"dst net {c}" for c in aws] + [f"src net {c}" for c in vlans])
    leaked = _count(wan_pcap, f"ip and ({clear}) and not esp and not (udp port 4500)")
    assert leaked == [], f"{len(leaked)} clear-text packets on the outside link, first: {leaked[:5]}"
    # the captures worked: the stream reached the gateway's VLAN NIC, and the outside link saw the gateway's IKE
    reached = _count(vlan_pcap, f"udp and dst host {vpc_host}")
    ike = _count(wan_pcap, "udp port 500")
    print(f"stream: sent {sent}, seen on the VLAN link {len(reached)}, IKE packets outside {len(ike)}, leaked 0")
    assert sent > 0 and len(reached) > 0 and ike, (sent, len(reached), len(ike))
