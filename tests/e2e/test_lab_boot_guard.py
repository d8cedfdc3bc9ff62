"""Issue 13, points 4, 6 and 7 in the lab: the gateway's stack rebooted in unit order under traffic leaks nothing in
clear text, and a scan from every side finds only the intended ports open and the metadata address out of the VLAN's
reach.

Everything stays inside the lab's namespaces: the "public" addresses are documentation ranges, and the metadata service
(169.254.169.254) is emulated on the gateway's next hop (the nat namespace), as on Linode, and removed afterwards.
"""

from __future__ import annotations

import json
import re
import sys
import time

import pytest

from hostconfig import gateway_paths as gp
from hostconfig import plan
from lab import driver, paths
from tests.e2e.conftest import lab_exec
from tests.e2e.test_lab import AWS_CIDR_RE, VLAN_HOST, VPC_HOST, capture_on_gateway_public_nic

pytestmark = [pytest.mark.vm, pytest.mark.root]

GW_PUBLIC = "203.0.113.10"  # the gateway's 1:1 NAT address (lab/README.md)
GW_PRIVATE = "10.8.0.2"
GW_VLAN = "172.16.1.1"
GW_INSIDE = ("169.254.10.2", "169.254.11.2")
METADATA = "169.254.169.254"
METADATA_PORT = 80
NFT_TABLE = plan.OWNERSHIP["nft_table"]


def restart_stack() -> list[str]:
    """lab/gateway.py restart-stack where the namespaces live; returns the unit order it used."""
    r = lab_exec("root", "env", f"PYTHONPATH={paths.REPO}", sys.executable, "-m", "lab.gateway", "restart-stack",
                 timeout=900)
    return next(line for line in r.out.splitlines() if line.startswith("order: ")).split()[1:]


def nft_counter(chain: str, comment: str) -> int:
    """Packets counted by the rules with this comment in a chain of the gateway's table."""
    out = lab_exec("gw", "nft", "list", "chain", "inet", NFT_TABLE, chain, check=False).out
    found = re.findall(r'counter packets (\d+) bytes \d+ (?:\w+ )?comment "' + re.escape(comment) + '"', out)
    assert found, f"no counted rule {comment!r} in chain {chain}:\n{out}"
    return sum(int(n) for n in found)


# ------------------------------------------------------------------------------------------- point 4: boot order


def test_stack_restart_in_unit_order_under_traffic_leaks_no_clear_text(lab):
    seconds = 240  # the capture's limit: the reboot in the loaded TCG VM takes 60-150 s (checked below)
    # 20 packets/s from the VLAN to the VPC for the whole capture: the stream the restart must not leak.
    stream = driver.lab_popen("exec", "vlan", "ping", "-n", "-q", "-i", "0.05", "-w", str(seconds), VPC_HOST)
    order: list[str] = []

    took: list[float] = []

    def reboot():
        started = time.monotonic()
        order.extend(restart_stack())
        driver.wait_until(lambda: driver.ping("vlan", VPC_HOST), 300, "VLAN -> VPC traffic after the restart")
        took.append(time.monotonic() - started)

    try:
        lines = capture_on_gateway_public_nic(seconds, reboot, tail_seconds=10)  # the stream goes on after it
    finally:
        stream.kill()
        stream.wait(timeout=60)
    clear = [line for line in lines if AWS_CIDR_RE.search(line)]
    print(f"boot guard: {len(lines)} packets captured on the public NIC, {len(clear)} clear-text to/from the AWS "
          f"CIDR; unit order {' -> '.join(order)}; restart to traffic again {took[0]:.0f} s")
    assert took[0] < seconds - 5, f"the restart took {took[0]:.0f} s, longer than the capture ({seconds} s)"
    assert not clear, f"{len(clear)} clear-text packets on the public NIC during the restart:\n" + "\n".join(clear[:10])
    # positive control: the capture saw the tunnel carrying the stream after the restart
    encapsulated = [line for line in lines if ".4500" in line and "198.51.100." in line]
    assert len(encapsulated) >= 10, f"expected ESP-in-UDP packets in the capture, got:\n{lines[:20]}"
    # The order is the units' (lab/gateway.py start_order over their Before=/After=), not a list in the lab.
    assert order.index(gp.GUARD_UNIT) < order.index(gp.FAILOVER_UNIT) < order.index(gp.STRONGSWAN_UNIT), order


# ----------------------------------------------------------------------------------- points 6 and 7: the scan

SCAN = r"""
import json, select, socket, sys
targets, ports = json.loads(sys.argv[1])
out = {}
for target in targets:
  result = {}
  for chunk in range(0, len(ports), 520):  # the open-files limit (1024) bounds the sockets in flight
    # A chunk at once, non-blocking: connected = open, refused = closed (an RST came back), silence = filtered.
    pending = {}
    for port in ports[chunk:chunk + 520]:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        rc = s.connect_ex((target, port))
        if rc in (0, 115):
            pending[s] = port
        else:
            result[port] = "closed"
            s.close()
    while pending:
        _, ready, _ = select.select([], list(pending), [], 3.0)
        if not ready:
            break
        for s in ready:
            port = pending.pop(s)
            result[port] = "closed" if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) else "open"
            s.close()
    for s in pending:
        s.close()
  out[target] = {"tcp_open": sorted(p for p, r in result.items() if r == "open"),
                 "tcp_closed": sorted(p for p, r in result.items() if r == "closed")}
print(json.dumps(out))
"""

TCP_PORTS = list(range(1, 1025)) + [4500, 8080]
DATAGRAMS = 5


def scan(host: str, targets: list[str]) -> dict[str, dict]:
    """TCP connect scan of TCP_PORTS from a lab namespace, per target: the open and the closed (RST) ports."""
    r = lab_exec(host, "python3", "-c", SCAN, json.dumps([targets, TCP_PORTS]), timeout=600)
    return json.loads(r.out)


def udp_dropped(host: str, target: str, port: int) -> int:
    """Send DATAGRAMS datagrams; how many the gateway's input policy dropped (UDP gets no answer either way: charon
    ignores garbage, so its counter is what tells)."""
    before = nft_counter("input", "input not allowed")
    code = ("import socket, sys; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
            f"[s.sendto(b'hybrid-vpn scan', ({target!r}, {port})) for _ in range({DATAGRAMS})]")
    lab_exec(host, "python3", "-c", code)
    return nft_counter("input", "input not allowed") - before


def reaches(host: str, address: str, port: int) -> bool:
    code = (f"import socket; s = socket.create_connection(({address!r}, {port}), timeout=5); "
            "print(s.recv(64).decode())")
    return lab_exec(host, "python3", "-c", code, check=False, timeout=120).out.strip() == "metadata"


def test_scan_finds_only_the_intended_ports_open(lab):
    listening = lab_exec("gw", "ss", "-Hlntu").out
    assert ":22 " in listening and ":500 " in listening and ":4500 " in listening, listening  # something to find
    tcp = {
        "admin": scan("ops", [GW_PUBLIC]),  # 192.0.2.10: the lab's admin_cidrs are 192.0.2.0/24
        "internet": scan("inet", [GW_PUBLIC]),  # 203.0.113.1, 198.51.100.254, 192.0.2.1: no tunnel, no admin
        "aws outside": scan("aws", [GW_PUBLIC]),  # from 198.51.100.1, tunnel1's outside IP
        "vlan": scan("vlan", [GW_VLAN, GW_PRIVATE, *GW_INSIDE]),
        "vpc": scan("vpc", [GW_VLAN, *GW_INSIDE]),  # through the tunnels, like any host in the AWS VPC
    }
    print(f"scan TCP 1-1024,4500,8080: {tcp}")
    assert tcp["admin"][GW_PUBLIC] == {"tcp_open": [22], "tcp_closed": []}, tcp["admin"]
    # Without admin_cidrs in host_config SSH stays open on the public NIC (the fallback): checked apart, below.
    ssh = [22] if not ssh_limited_to_admins() else []
    for side in ("internet", "aws outside"):
        assert tcp[side][GW_PUBLIC] == {"tcp_open": ssh, "tcp_closed": []}, f"{side}: {tcp[side]}"
    for side in ("vlan", "vpc"):
        for target, ports in tcp[side].items():
            assert ports == {"tcp_open": [], "tcp_closed": []}, f"{side} -> {target}: {ports} (all filtered expected)"

    udp = {(host, port): udp_dropped(host, GW_PUBLIC, port)
           for host in ("ops", "inet", "aws") for port in (500, 4500, 68)}
    udp[("vlan", 500)] = udp_dropped("vlan", GW_VLAN, 500)
    print(f"scan UDP, datagrams dropped by the input policy of {DATAGRAMS} sent: {udp}")
    for (host, port), dropped in udp.items():
        if host == "aws" and port in (500, 4500):  # IKE and NAT-T from a tunnel's outside IP: passed to charon
            assert dropped < DATAGRAMS, (host, port, dropped)
        else:
            assert dropped >= DATAGRAMS, (host, port, dropped)


def ssh_limited_to_admins() -> bool:
    """Whether the ruleset the gateway runs limits SSH to admin_cidrs (host_config carried them)."""
    return "set admin_cidrs" in lab_exec("gw", "cat", gp.NFT_RULESET.path).out


def test_ssh_only_from_the_admin_network(lab):
    if not ssh_limited_to_admins():
        pytest.skip("the lab's host_config carries no admin_cidrs (infra/outputs.py does not export them yet): the "
                    "gateway's input policy accepts SSH from any source, as documented for that case")
    assert scan("ops", [GW_PUBLIC])[GW_PUBLIC]["tcp_open"] == [22]
    for host in ("inet", "aws"):
        assert scan(host, [GW_PUBLIC])[GW_PUBLIC]["tcp_open"] == [], f"SSH reachable from {host}"


@pytest.fixture
def metadata_service(lab):
    """169.254.169.254:80 on the gateway's next hop (the nat namespace), answering "metadata"; removed afterwards."""
    lab_exec("nat", "ip", "addr", "add", f"{METADATA}/32", "dev", "lo")
    # It ends by itself once idle for 120 s: `lab exec` gives no pid to stop it by.
    server = (f"import socket; s = socket.create_server(({METADATA!r}, {METADATA_PORT})); s.settimeout(120)\n"
              "while True:\n    c, _ = s.accept(); c.sendall(b'metadata'); c.close()")
    proc = driver.lab_popen("exec", "nat", "python3", "-c", server)
    try:
        driver.wait_until(lambda: f"{METADATA}:{METADATA_PORT}" in lab_exec("nat", "ss", "-Hlnt").out, 120,
                          "the emulated metadata service listening")
        yield
    finally:
        proc.kill()
        proc.wait(timeout=60)
        lab_exec("nat", "ip", "addr", "del", f"{METADATA}/32", "dev", "lo", check=False)


def test_the_vlan_cannot_reach_the_metadata_service(lab, metadata_service):
    # positive control: the gateway itself reaches it (cloud-init needs it), so the address is there and routed
    assert reaches("gw", METADATA, METADATA_PORT), "the gateway cannot reach the emulated metadata service"
    assert not reaches("vlan", METADATA, METADATA_PORT), "a VLAN host reached 169.254.169.254"
    refused = nft_counter("forward", "VLAN to link-local: metadata service, tunnel inside addresses")
    print(f"metadata: gateway reaches {METADATA}:{METADATA_PORT}; VLAN host {VLAN_HOST} refused, {refused} packets "
          "dropped by the forward rule so far")
    assert refused >= 1


FORGE = r"""
import socket, struct, sys
src, dst, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
def checksum(data):
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)  # IP_HDRINCL: our source address
for seq in range(count):
    body = struct.pack("!HH", 0x4242, seq) + b"forged probe reply.."
    icmp = struct.pack("!BBHHH", 0, 0, 0, 0x4242, seq) + body[4:]
    icmp = icmp[:2] + struct.pack("!H", checksum(icmp)) + icmp[4:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 0, 0, 64, socket.IPPROTO_ICMP, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    s.sendto(ip + icmp, (dst, 0))
"""


def test_forged_probe_replies_from_the_vlan_are_dropped(lab):
    # A VLAN host sends echo replies "from" each tunnel's AWS inside address to the gateway's inside address: what
    # the probes expect from a healthy tunnel. Only the tunnel's own VTI may carry that source.
    count = 10
    before = nft_counter("prerouting_guard", "inside /30 only on its VTI")
    for aws_inside, gw_inside in (("169.254.10.1", GW_INSIDE[0]), ("169.254.11.1", GW_INSIDE[1])):
        lab_exec("vlan", "python3", "-c", FORGE, aws_inside, gw_inside, str(count))
    dropped = nft_counter("prerouting_guard", "inside /30 only on its VTI") - before
    print(f"forged probe replies: {2 * count} sent from the VLAN, {dropped} dropped before conntrack")
    assert dropped >= 2 * count
