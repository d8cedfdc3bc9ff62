"""The emulated AWS side of the VPN connection: its own charon, two VTIs, the VPC network, and AWS's routing habit.

It is configured from the SAME VPN-connection inputs as the gateway (the `host_config` object): outside IPs, inside
CIDRs, PSKs and the crypto profile, with the proposals AWS would accept for that profile. A gateway that proposes
something else fails to negotiate here exactly as it would against AWS.

It notices a dead peer the way AWS documents it (../shared/aws-vpn-facts.md, "How AWS notices a dead tunnel") and no
other way: IKE only. DPD R-U-THERE after 10 s without inbound traffic, the peer declared dead at the stack's
`dpd_timeout_seconds`, then the stack's DPD timeout action; startup action `add` (AWS never initiates) or `start`.
Nothing probes inside the tunnels: lab/awsrouting.py moves AWS's one sending tunnel only when charon says that tunnel's
SAs are gone.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from hostconfig.agent.frr import Vtysh
from lab import paths
from lab.frr import FRR_USER, aws_bgpd_conf, daemon_argv
from lab.rpc import write_atomically
from lab.sh import ip_batch, run, run_in, spawn_in, sysctl_in

log = logging.getLogger(__name__)

AWS_DIR = paths.STATE_DIR / "aws"
PREFER_FILE = AWS_DIR / "prefer"  # a `lab prefer` request, consumed by lab/awsrouting.py once that tunnel is UP
MONITOR_STATUS = AWS_DIR / "monitor-status.json"
MONITOR_CONF = AWS_DIR / "monitor.json"
FRR_DIR = AWS_DIR / "frr"  # the AWS side's zebra + bgpd (routing.mode bgp): config, vty sockets, logs

ENCRYPTION = {"AES128": "aes128", "AES256": "aes256", "AES128-GCM-16": "aes128gcm16", "AES256-GCM-16": "aes256gcm16"}
INTEGRITY = {"SHA1": "sha1", "SHA2-256": "sha256", "SHA2-384": "sha384", "SHA2-512": "sha512"}
PRF = {"SHA1": "prfsha1", "SHA2-256": "prfsha256", "SHA2-384": "prfsha384", "SHA2-512": "prfsha512"}
DH_GROUPS = {2: "modp1024", 5: "modp1536", 14: "modp2048", 15: "modp3072", 16: "modp4096", 17: "modp6144",
             18: "modp8192", 19: "ecp256", 20: "ecp384", 21: "ecp521", 22: "modp1024s160", 23: "modp2048s224",
             24: "modp2048s256"}
DPD_ACTION = {"clear": "clear", "restart": "restart", "none": "none"}
# AWS sends DPD R-U-THERE after 10 s without inbound traffic (aws-vpn-facts.md).
AWS_DPD_DELAY_SECONDS = 10
# IKEv2 has no DPD timeout: charon declares a peer dead when the retransmissions of its DPD request run out. Equal
# retransmission intervals (base 1) split what is left of AWS's DPD timeout after the 10 s of silence, so the peer is
# dead `dpd_timeout_seconds` after the last packet AWS received from it, as AWS counts it.
AWS_RETRANSMIT_TRIES = 3
AWS_RETRANSMIT_BASE = 1.0


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


@dataclass(frozen=True)
class DpdSchedule:
    """When AWS's charon gives up on a silent peer: dpd_delay, then (tries + 1) equal retransmission timeouts."""

    delay: int
    retransmit_timeout: float
    retransmit_tries: int
    retransmit_base: float = AWS_RETRANSMIT_BASE

    @property
    def give_up_seconds(self) -> float:
        """Seconds from the peer's last packet to charon declaring it dead (what AWS calls the DPD timeout)."""
        waits = sum(self.retransmit_timeout * self.retransmit_base ** n for n in range(self.retransmit_tries + 1))
        return self.delay + waits


def dpd_schedule(crypto: dict) -> DpdSchedule:
    timeout = int(crypto["dpd_timeout_seconds"])
    if timeout <= AWS_DPD_DELAY_SECONDS:
        raise ValueError(f"host_config crypto.dpd_timeout_seconds: {timeout} must exceed AWS's DPD delay "
                         f"({AWS_DPD_DELAY_SECONDS} s); AWS's minimum is 30, e.g. 30")
    per_try = (timeout - AWS_DPD_DELAY_SECONDS) / (AWS_RETRANSMIT_TRIES + 1)
    return DpdSchedule(AWS_DPD_DELAY_SECONDS, per_try, AWS_RETRANSMIT_TRIES)


def dpd_delay_for(crypto: dict) -> int:
    """dpd_delay of AWS's connections. DPD action `none`: AWS never gives up on the peer, and keeps sending into a
    dead tunnel. charon (IKEv2) would delete the IKE_SA at the end of its retransmissions whatever the action, so the
    faithful emulation of `none` sends no DPD at all."""
    if crypto["dpd_timeout_action"] == "none":
        return 0
    return dpd_schedule(crypto).delay


def render_strongswan_conf(crypto: dict) -> str:
    # Paths as charon sees them: AWS_DIR is bind-mounted over /run in its mount namespace (its pid file is hard-coded
    # under /run). The retransmission settings also pace AWS's own rekeys and DELETEs, as one schedule does on AWS.
    dpd = dpd_schedule(crypto)
    return f"""charon {{
    load = random nonce openssl aes sha1 sha2 hmac gcm kdf pem pkcs1 x509 kernel-netlink socket-default vici
    install_routes = no
    install_virtual_ip = no
    retransmit_timeout = {dpd.retransmit_timeout:g}
    retransmit_base = {dpd.retransmit_base:g}
    retransmit_tries = {dpd.retransmit_tries}
    plugins {{
        vici {{ socket = unix:///run/charon.vici }}
    }}
    filelog {{
        aws {{
            path = /run/charon.log
            time_format = %T
            default = 1
            ike = 1
            flush_line = yes
        }}
    }}
}}
swanctl {{
    load = random openssl pem pkcs1 x509
}}
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
    dpd_delay = dpd_delay_for(crypto)
    conns, secrets = [], []
    for t in aws_tunnels(host_config):
        conns.append(f"""    {t.name} {{
        version = {int(crypto['ike_version'])}
        local_addrs = {t.outside_ip}
        remote_addrs = {cgw_ip}
        proposals = {ike}
        rekey_time = {max(p1_life - margin, 60)}s
        over_time = {margin}s
        dpd_delay = {dpd_delay}s
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
    (AWS_DIR / "strongswan.conf").write_text(render_strongswan_conf(host_config["crypto"]))
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
    bgp = "routing" in host_config
    if bgp:
        start_bgp(host_config)
    monitor_conf = {"tunnels": [t.__dict__ for t in tunnels], "vlan_cidrs": host_config["linode"]["vlan_cidrs"],
                    "vici": str(AWS_DIR / "charon.vici"), "status": str(MONITOR_STATUS), "prefer": str(PREFER_FILE),
                    "bgp_vty_socket": str(FRR_DIR) if bgp else None}
    write_atomically(MONITOR_CONF, json.dumps(monitor_conf).encode())
    spawn_in("aws", "aws-route-monitor", [sys.executable, "-m", "lab.awsrouting", str(MONITOR_CONF)])


def render_bgpd_conf(host_config: dict) -> str:
    """AWS's bgpd for this VPN connection: the VGW's ASN, a neighbor at the gateway's inside address of each tunnel,
    the VPC CIDRs advertised (lab/frr.py has AWS's timers, route limit and no-ECMP)."""
    routing = host_config["routing"]
    tunnels = aws_tunnels(host_config)
    return aws_bgpd_conf(amazon_asn=int(routing["amazon_side_asn"]), customer_asn=int(routing["customer_asn"]),
                         router_id=tunnels[0].aws_inside_cidr.split("/")[0],
                         neighbors=[t.gateway_inside_ip for t in tunnels], networks=host_config["aws"]["cidrs"])


def start_bgp(host_config: dict) -> None:
    """Real FRR in the aws namespace: zebra installs bgpd's best paths into the kernel, towards the VTIs."""
    FRR_DIR.mkdir(parents=True, exist_ok=True)
    (FRR_DIR / "zebra.conf").write_text("!\n")
    (FRR_DIR / "bgpd.conf").write_text(render_bgpd_conf(host_config))
    for path in (FRR_DIR, FRR_DIR / "zebra.conf", FRR_DIR / "bgpd.conf"):
        shutil.chown(path, FRR_USER, FRR_USER)
    from lab.topology import wait_for
    for daemon in ("zebra", "bgpd"):
        spawn_in("aws", f"aws-frr-{daemon}", daemon_argv(daemon, str(FRR_DIR), str(FRR_DIR / f"{daemon}.conf"),
                                                         ["--log", f"file:{FRR_DIR}/{daemon}.log"]))
        wait_for(lambda d=daemon: (FRR_DIR / f"{d}.vty").exists(), 120, f"the AWS side's {daemon}")


def vtysh() -> Vtysh:
    """vtysh of the AWS side's FRR (run it in the aws namespace's process tree: any, the socket is a file)."""
    return Vtysh(vty_socket=str(FRR_DIR))


def set_preference(tunnel: str, known: list[str]) -> None:
    if tunnel not in known:
        raise ValueError(f"unknown tunnel {tunnel!r}: expected one of {', '.join(known)}")
    write_atomically(PREFER_FILE, tunnel.encode())





# --- maintenance: what an AWS tunnel endpoint replacement does ------------------------------------------------------

def _maintenance_table(tunnel: str) -> str:
    return f"lab_maintenance_{tunnel}"


def render_maintenance_rules(tunnel: AwsTunnel, cgw_ip: str, with_delete: bool) -> str:
    """nft script for the aws namespace while the tunnel's endpoint is replaced: the gateway cannot bring the tunnel
    back (its IKE is dropped). Without a DELETE the old endpoint also falls silent, so the gateway notices only by its
    own DPD. With one, the gateway's ESP is not filtered: it keeps arriving until the forced terminate destroys the
    endpoint's SAs (then the kernel drops it), as on AWS, where the DELETE and the end of the SAs are one event.
    Filtering it first made the gateway -> AWS outage include the terminate's own start-up time (seconds under
    load), a blackout AWS does not cause."""
    inbound = [f"ip saddr {cgw_ip} ip daddr {tunnel.outside_ip} udp dport {{ 500, 4500 }} drop"]
    if not with_delete:
        inbound.append(f"ip saddr {cgw_ip} ip daddr {tunnel.outside_ip} ip protocol esp drop")
    outbound = [] if with_delete else [
        f"ip saddr {tunnel.outside_ip} ip daddr {cgw_ip} udp sport {{ 500, 4500 }} drop",
        f"ip saddr {tunnel.outside_ip} ip daddr {cgw_ip} ip protocol esp drop"]
    rules = "\n".join(f"        {r}" for r in inbound)
    out_rules = "\n".join(f"        {r}" for r in outbound)
    return (f"table inet {_maintenance_table(tunnel.name)} {{\n"
            f"    chain input {{\n        type filter hook input priority -10;\n{rules}\n    }}\n"
            f"    chain output {{\n        type filter hook output priority -10;\n{out_rules}\n    }}\n}}\n")


def in_maintenance() -> list[str]:
    tables = run_in("aws", ["nft", "list", "tables"], check=False).stdout
    prefix = _maintenance_table("")
    return sorted(w[len(prefix):] for w in tables.split() if w.startswith(prefix))


def maintenance(host_config: dict, name: str, seconds: float, with_delete: bool, say: Callable[[str], None]) -> None:
    """Replace one tunnel's endpoint: its SAs end (with an IKE DELETE, or silently), it stays unreachable for
    `seconds`, then answers again on the same outside IP; with startup action `add` only the gateway brings it up."""
    tunnel = next((t for t in aws_tunnels(host_config) if t.name == name), None)
    if tunnel is None:
        known = ", ".join(t.name for t in aws_tunnels(host_config))
        raise ValueError(f"unknown tunnel {name!r}: expected one of {known}")
    if seconds < 0:
        raise ValueError(f"maintenance seconds must be >= 0, e.g. 60 (got {seconds:g})")
    cgw_ip = host_config["gateway"]["public_ip"]
    began = time.time()  # the lab-clock time of the fault (before the swanctl call, which takes seconds under load)
    run_in("aws", ["nft", "-f", "-"], input=render_maintenance_rules(tunnel, cgw_ip, with_delete))
    try:
        # --force: the DELETE goes out (or into the drop rule) and the SAs are gone at once, as on a replaced endpoint
        swanctl(["--terminate", "--ike", name, "--force"], check=False)
        say(f"{name}: endpoint down for maintenance ({'IKE DELETE sent' if with_delete else 'silent, no DELETE'}; "
            f"lab clock {began:.3f}); back in {seconds:g} s")
        time.sleep(seconds)  # the maintenance window itself, not a wait for a condition
    finally:
        run_in("aws", ["nft", "delete", "table", "inet", _maintenance_table(name)], check=False)
    if host_config["crypto"]["startup_action"] == "start":
        swanctl(["--initiate", "--child", name, "--timeout", "1"], check=False)  # AWS initiates (IKEv2, `start`)
        say(f"{name}: endpoint back on {tunnel.outside_ip}; AWS initiates (startup action start)")
    else:
        say(f"{name}: endpoint back on {tunnel.outside_ip} (lab clock {time.time():.3f}); waiting for the gateway to "
            "initiate (startup action add)")
