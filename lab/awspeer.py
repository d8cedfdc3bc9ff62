"""The emulated AWS side of the VPN connection: its own charon, two VTIs, the VPC network, and AWS's routing habit.

It is configured from the SAME VPN-connection inputs as the gateway (the `host_config` object): outside IPs, inside
CIDRs, PSKs and the crypto profile, with the proposals AWS would accept for that profile. A gateway that proposes
something else fails to negotiate here exactly as it would against AWS.

Like AWS, it sends on one tunnel of its choice (`lab prefer tunnelN`), accepts on both, and withdraws its route from a
tunnel that stops answering (the monitor below probes the gateway's inside address through each VTI).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from lab import paths
from lab.rpc import write_atomically
from lab.sh import ip_batch, run, spawn_in, sysctl_in

log = logging.getLogger(__name__)

AWS_DIR = paths.STATE_DIR / "aws"
PREFER_FILE = AWS_DIR / "prefer"
MONITOR_STATUS = AWS_DIR / "monitor-status.json"

ENCRYPTION = {"AES128": "aes128", "AES256": "aes256", "AES128-GCM-16": "aes128gcm16", "AES256-GCM-16": "aes256gcm16"}
INTEGRITY = {"SHA1": "sha1", "SHA2-256": "sha256", "SHA2-384": "sha384", "SHA2-512": "sha512"}
PRF = {"SHA1": "prfsha1", "SHA2-256": "prfsha256", "SHA2-384": "prfsha384", "SHA2-512": "prfsha512"}
DH_GROUPS = {2: "modp1024", 5: "modp1536", 14: "modp2048", 15: "modp3072", 16: "modp4096", 17: "modp6144",
             18: "modp8192", 19: "ecp256", 20: "ecp384", 21: "ecp521", 22: "modp1024s160", 23: "modp2048s224",
             24: "modp2048s256"}
DPD_ACTION = {"clear": "clear", "restart": "restart", "none": "none"}


def _keywords(table: dict, values: list, what: str) -> list[str]:
    out = []
    for v in values:
        if v not in table:
            allowed = ", ".join(map(str, table))
            raise ValueError(f"host_config crypto: {what} {v!r} is not an AWS value (one of {allowed})")
        out.append(table[v])
    return out


def aws_proposals(phase: dict, ike: bool) -> str:
    """The strongSwan proposals AWS accepts for one phase of the crypto profile (AEAD and classic kept apart)."""
    enc = phase["encryption"]
    aead = _keywords(ENCRYPTION, [e for e in enc if "GCM" in e], "encryption")
    classic = _keywords(ENCRYPTION, [e for e in enc if "GCM" not in e], "encryption")
    dh = _keywords(DH_GROUPS, phase.get("dh_groups", []), "DH group")
    proposals = []
    if classic:
        proposals.append("-".join(classic + _keywords(INTEGRITY, phase["integrity"], "integrity") + dh))
    if aead:
        prf = _keywords(PRF, phase["integrity"], "integrity") if ike else []
        proposals.append("-".join(aead + prf + dh))
    return ",".join(proposals)


@dataclass(frozen=True)
class AwsTunnel:
    name: str
    vti: str
    mark: int
    outside_ip: str
    aws_inside_cidr: str  # e.g. 169.254.10.1/30
    gateway_inside_ip: str


def aws_tunnels(host_config: dict) -> list[AwsTunnel]:
    out = []
    for i, t in enumerate(host_config["tunnels"], start=1):
        prefix = t["inside_cidr"].split("/")[1]
        out.append(AwsTunnel(t["name"], f"vti{i}", int(t["mark"]), t["outside_ip"], f"{t['aws_inside_ip']}/{prefix}",
                             t["gateway_inside_ip"]))
    return out


def render_strongswan_conf() -> str:
    # Paths as charon sees them: AWS_DIR is bind-mounted over /run in its mount namespace (its pid file is hard-coded
    # under /run).
    return """charon {
    load = random nonce openssl aes sha1 sha2 hmac gcm kdf pem pkcs1 x509 kernel-netlink socket-default vici
    install_routes = no
    install_virtual_ip = no
    retransmit_timeout = 2
    retransmit_base = 1.4
    retransmit_tries = 4
    plugins {
        vici { socket = unix:///run/charon.vici }
    }
    filelog {
        aws {
            path = /run/charon.log
            time_format = %T
            default = 1
            ike = 1
            flush_line = yes
        }
    }
}
swanctl {
    load = random openssl pem pkcs1 x509
}
"""


def render_swanctl_conf(host_config: dict) -> str:
    crypto = host_config["crypto"]
    ike = aws_proposals(crypto["phase1"], ike=True)
    esp = aws_proposals(crypto["phase2"], ike=False)
    p1_life = int(crypto["phase1"]["lifetime_seconds"])
    p2_life = int(crypto["phase2"]["lifetime_seconds"])
    margin = int(crypto["rekey_margin_seconds"])
    fuzz = int(margin * int(crypto["rekey_fuzz_percent"]) / 100)
    # AWS: "add" = the customer gateway initiates, AWS only answers; "start" = AWS initiates.
    start_action = "start" if crypto["startup_action"] == "start" else "none"
    cgw_ip = host_config["gateway"]["public_ip"]
    conns, secrets = [], []
    for t in aws_tunnels(host_config):
        conns.append(f"""    {t.name} {{
        version = {int(crypto['ike_version'])}
        local_addrs = {t.outside_ip}
        remote_addrs = {cgw_ip}
        proposals = {ike}
        rekey_time = {max(p1_life - margin, 60)}s
        over_time = {margin}s
        dpd_delay = 10s
        local {{
            auth = psk
            id = {t.outside_ip}
        }}
        remote {{
            auth = psk
            id = {cgw_ip}
        }}
        children {{
            {t.name} {{
                local_ts = 0.0.0.0/0
                remote_ts = 0.0.0.0/0
                esp_proposals = {esp}
                mark_in = {t.mark}
                mark_out = {t.mark}
                life_time = {p2_life}s
                rekey_time = {max(p2_life - margin, 60)}s
                rand_time = {fuzz}s
                replay_window = {int(crypto['replay_window'])}
                start_action = {start_action}
                dpd_action = {DPD_ACTION[crypto['dpd_timeout_action']]}
            }}
        }}
    }}""")
    for t, src in zip(aws_tunnels(host_config), host_config["tunnels"], strict=True):
        secrets.append(f"""    ike-{t.name} {{
        id-1 = {t.outside_ip}
        id-2 = {cgw_ip}
        secret = "{src['psk']}"
    }}""")
    return "connections {\n" + "\n".join(conns) + "\n}\nsecrets {\n" + "\n".join(secrets) + "\n}\n"


def swanctl(args: list[str], check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, STRONGSWAN_CONF=str(AWS_DIR / "strongswan.conf"))
    return run(["swanctl", *args, "--uri", f"unix://{AWS_DIR / 'charon.vici'}"], check=check, env=env)


def start(host_config: dict, prefer: str | None = None) -> None:
    AWS_DIR.mkdir(parents=True, exist_ok=True)
    (AWS_DIR / "strongswan.conf").write_text(render_strongswan_conf())
    conf = AWS_DIR / "swanctl.conf"
    conf.touch(mode=0o600)
    conf.write_text(render_swanctl_conf(host_config))
    tunnels = aws_tunnels(host_config)
    cgw_ip = host_config["gateway"]["public_ip"]
    mtu = int(host_config["tunnel_mtu"])
    lines = []
    for t in tunnels:
        lines += [f"link add {t.vti} type vti local {t.outside_ip} remote {cgw_ip} key {t.mark}",
                  f"addr add {t.aws_inside_cidr} dev {t.vti}",
                  f"link set {t.vti} mtu {mtu} up"]
    ip_batch("aws", lines)
    settings = {"net.ipv4.ip_forward": "1", "net.ipv4.conf.all.rp_filter": "0"}
    for t in tunnels:
        settings[f"net.ipv4.conf.{t.vti}.disable_policy"] = "1"
        settings[f"net.ipv4.conf.{t.vti}.rp_filter"] = "0"
    sysctl_in("aws", settings)
    PREFER_FILE.write_text(prefer or host_config["tunnels"][0]["name"])
    spawn_in("aws", "aws-charon", ["sh", "-c", f"mount --bind {AWS_DIR} /run && "
                                                "exec env STRONGSWAN_CONF=/run/strongswan.conf /usr/lib/ipsec/charon"])
    from lab.topology import wait_for
    wait_for(lambda: (AWS_DIR / "charon.vici").exists(), 120, "the AWS side's charon")
    swanctl(["--load-all", "--noprompt", "--file", str(conf)])
    monitor_conf = {"tunnels": [t.__dict__ for t in tunnels], "vlan_cidrs": host_config["linode"]["vlan_cidrs"]}
    write_atomically(AWS_DIR / "monitor.json", json.dumps(monitor_conf).encode())
    spawn_in("aws", "aws-route-monitor",
             [sys.executable, "-m", "lab.awspeer", "monitor", str(AWS_DIR / "monitor.json")])


def set_preference(tunnel: str, known: list[str]) -> None:
    if tunnel not in known:
        raise ValueError(f"unknown tunnel {tunnel!r}: expected one of {', '.join(known)}")
    write_atomically(PREFER_FILE, tunnel.encode())


# --- the route monitor (runs inside the aws namespace) -------------------------------------------------------------

# Faster than real AWS (which withdraws a dead tunnel's route only after DPD), so that the lab's blackout measures
# the gateway's reaction rather than the emulation's.
PROBE_INTERVAL = 0.1
PROBE_TIMEOUT = 0.25
DOWN_AFTER = 2
UP_AFTER = 3


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def _echo(ident: int, seq: int) -> bytes:
    header = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
    return struct.pack("!BBHHH", 8, 0, _checksum(header + b"hvlab"), ident, seq) + b"hvlab"


@dataclass
class TunnelHealth:
    up: bool = False
    successes: int = 0
    failures: int = 0

    def record(self, ok: bool) -> bool:
        """Count one probe; returns True when the verdict changed (hysteresis: DOWN_AFTER / UP_AFTER)."""
        if ok:
            self.successes, self.failures = self.successes + 1, 0
            if not self.up and self.successes >= UP_AFTER:
                self.up = True
                return True
        else:
            self.failures, self.successes = self.failures + 1, 0
            if self.up and self.failures >= DOWN_AFTER:
                self.up = False
                return True
        return False


def desired_routes(tunnels: list[dict], health: dict[str, TunnelHealth], prefer: str) -> dict[str, int]:
    """vti -> metric: the preferred healthy tunnel at 100, another healthy one at 200, dead ones withdrawn."""
    healthy = [t for t in tunnels if health[t["name"]].up]
    healthy.sort(key=lambda t: t["name"] != prefer)
    return {t["vti"]: 100 if i == 0 else 200 for i, t in enumerate(healthy)}


def _apply_routes(vlan_cidrs: list[str], tunnels: list[dict], want: dict[str, int], have: dict[str, int]) -> None:
    cmds = []
    for vti, metric in want.items():  # add first, then remove: never a moment without a route
        if have.get(vti) != metric:
            cmds += [f"route replace {c} dev {vti} metric {metric}" for c in vlan_cidrs]
    for vti, metric in have.items():
        if want.get(vti) != metric:
            cmds += [f"route del {c} dev {vti} metric {metric}" for c in vlan_cidrs]
    if cmds:
        subprocess.run(["ip", "-b", "-"], input="\n".join(cmds) + "\n", text=True, check=False)


def monitor(conf_path: Path) -> None:
    conf = json.loads(conf_path.read_text())
    tunnels, vlan_cidrs = conf["tunnels"], conf["vlan_cidrs"]
    socks = {}
    for t in tunnels:
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, t["vti"].encode())
        s.setblocking(False)
        socks[t["name"]] = s
    health = {t["name"]: TunnelHealth() for t in tunnels}
    have: dict[str, int] = {}
    ident = os.getpid() & 0xFFFF
    seq = 0
    while True:
        cycle_start = time.monotonic()
        seq = (seq + 1) & 0xFFFF
        for t in tunnels:
            try:
                socks[t["name"]].sendto(_echo(ident, seq), (t["gateway_inside_ip"], 0))
            except OSError:
                pass  # no route / no SA yet: counts as a miss
        answered: set[str] = set()
        deadline = cycle_start + PROBE_TIMEOUT
        while time.monotonic() < deadline and len(answered) < len(tunnels):
            for t in tunnels:
                try:
                    while True:
                        pkt, (src, _) = socks[t["name"]].recvfrom(2048)
                        ihl = (pkt[0] & 0x0F) * 4
                        typ, _, _, rid, rseq = struct.unpack("!BBHHH", pkt[ihl:ihl + 8])
                        if typ == 0 and rid == ident and rseq == seq and src == t["gateway_inside_ip"]:
                            answered.add(t["name"])
                except BlockingIOError:
                    pass
            time.sleep(0.01)
        changed = False
        for t in tunnels:
            if health[t["name"]].record(t["name"] in answered):
                changed = True
                log.warning("%s is %s", t["name"], "UP" if health[t["name"]].up else "DOWN")
        try:
            prefer = PREFER_FILE.read_text().strip()
        except FileNotFoundError:
            prefer = tunnels[0]["name"]
        want = desired_routes(tunnels, health, prefer)
        if want != have or changed:
            _apply_routes(vlan_cidrs, tunnels, want, have)
            log.warning("routes to %s: %s (prefer %s)", ",".join(vlan_cidrs), want or "none", prefer)
            have = want
        status = {"prefer": prefer, "routes": have, "time": time.time(),
                  "tunnels": {n: {"up": h.up} for n, h in health.items()}}
        write_atomically(MONITOR_STATUS, json.dumps(status).encode())
        time.sleep(max(0.0, PROBE_INTERVAL - (time.monotonic() - cycle_start)))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.awspeer")
    sub = parser.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("monitor", help="withdraw/restore the AWS side's VLAN routes by tunnel health")
    m.add_argument("config", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.cmd == "monitor":
        monitor(args.config)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

