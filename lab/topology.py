"""The lab's hosts as network namespaces, the 1:1 NAT hop, and the gateway's own mount namespace with sshd and charon.

    vlan (172.16.1.10) --eth0/eth1-- gw (eth0 10.8.0.2) --lan0-- nat (203.0.113.10 <-> 10.8.0.2)
    nat --wan0-- inet (router) --aws0-- aws (198.51.100.1, .2; VTIs; 10.0.0.1/16) --vpc0-- vpc (10.0.4.85)
                 inet --ops0-- ops (192.0.2.10: the operator's machine, pushes the gateway files over SSH)

Runs inside the lab VM, or on the host when its kernel can do VTI + ESP.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from hostconfig import gateway_paths as gp
from lab import paths
from lab.addresses import LabAddressPlan
from lab.sh import HOSTS, gw_mount_ns_file, ip_batch, netns_name, pid_of, run, run_in, spawn_in, sysctl_in

log = logging.getLogger(__name__)

CRYPTO_MODULES = ("ip_vti esp4 xfrm_user xfrm_interface gcm ghash_generic seqiv echainiv authenc cbc hmac "
                  "sha256_generic sha1_generic sha512_generic drbg jitterentropy_rng veth nf_tables nft_chain_nat "
                  "nf_nat nft_ct").split()
OPTIONAL_MODULES = ("aesni_intel", "ghash_clmulni_intel")

# Directories the gateway sees as its own (tmpfs in its mount namespace), so the production paths of
# docs/contracts.md §4 work unchanged without touching the machine's real /etc. Values: populate from the system copy?
GW_PRIVATE_DIRS = {
    os.path.dirname(gp.SWANCTL_CONF_DIR.path): True,  # /etc/swanctl
    os.path.dirname(gp.CHARON_CONF.path): True,  # /etc/strongswan.d
    gp.CONFIG_DIR.path: False,
    os.path.dirname(gp.SSH_HOST_KEY.path): False,  # /etc/ssh
    os.path.dirname(gp.FRR_CONF.path): True,  # /etc/frr: Debian's frr package files; routing.mode bgp pushes its own
    gp.UNIT_DIR: False,
    os.path.dirname(gp.VPNCTL.path): False,  # /usr/local/sbin
    "/var/lib": False,  # the metrics dir and delivery's state dir
    "/var/log": False,
    "/run": False,  # last: it hides the lab's own state dir
}

LAB_CHARON_LOGGING = """# lab only: charon logs to /var/log/charon.log (the lab has no syslog)
charon {
    filelog {
        lab {
            path = /var/log/charon.log
            time_format = %T
            default = 1
            ike = 1
            knl = 1
            flush_line = yes
        }
    }
}
"""

SSHD_CONFIG = """# lab gateway sshd: the delivery path pushes the rendered files through it
Port 22
ListenAddress {listen}
HostKey {host_key}
PidFile /run/sshd.pid
AuthorizedKeysFile /etc/ssh/authorized_keys/%u
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
Subsystem sftp internal-sftp
"""


def start_preloading_modules() -> subprocess.Popen:
    """Load the crypto/VTI modules up front (otherwise the first SA install forks modprobe many times), in the
    background: reading them over 9p takes seconds under TCG. Missing optional ones (aesni on UML) are fine."""
    mods = " ".join(CRYPTO_MODULES)
    opt = " ".join(OPTIONAL_MODULES)
    return subprocess.Popen(["sh", "-c", f"command -v modprobe >/dev/null || exit 0; modprobe -a {mods}; "
                                         f"for m in {opt}; do modprobe -q $m; done; exit 0"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def create_underlay(plan: LabAddressPlan) -> None:
    existing = set(run(["ip", "netns", "list"]).stdout.split())
    clash = [netns_name(h) for h in HOSTS if netns_name(h) in existing]
    if clash:
        raise RuntimeError(f"lab namespaces already exist ({', '.join(clash)}): run `lab down` first")
    for host in HOSTS:
        run(["ip", "netns", "add", netns_name(host)])
    n = netns_name
    gw_priv_prefix = plan.gateway_private_cidr.split("/")[1]
    ip_batch("vlan", [
        "link set lo up",
        f"link add eth0 type veth peer name eth1 netns {n('gw')}",
        f"addr add {plan.vlan_host_cidr} dev eth0",
        "link set eth0 up",
        f"route add default via {plan.vlan_gateway_ip}",
    ])
    ip_batch("gw", [
        "link set lo up",
        f"link add eth0 type veth peer name lan0 netns {n('nat')}",
        f"addr add {plan.gateway_private_ip}/{gw_priv_prefix} dev eth0",
        "link set eth0 up",
        f"addr add {plan.vlan_gateway_cidr} dev eth1",
        "link set eth1 up",
        f"route add default via {plan.nat_inside_ip}",
    ])
    ip_batch("nat", [
        "link set lo up",
        f"addr add {plan.nat_inside_ip}/{gw_priv_prefix} dev lan0",
        "link set lan0 up",
        f"link add wan0 type veth peer name nat0 netns {n('inet')}",
        f"addr add {plan.gateway_public_ip}/{plan.nat_outside_cidr.split('/')[1]} dev wan0",
        "link set wan0 up",
        f"route add default via {plan.inet_nat_side_ip}",
    ])
    ip_batch("inet", [
        "link set lo up",
        f"addr add {plan.inet_nat_side_ip}/{plan.nat_outside_cidr.split('/')[1]} dev nat0",
        "link set nat0 up",
        f"link add aws0 type veth peer name eth0 netns {n('aws')}",
        f"addr add {plan.inet_aws_side_ip}/{plan.aws_outside_cidr.split('/')[1]} dev aws0",
        "link set aws0 up",
        f"link add ops0 type veth peer name eth0 netns {n('ops')}",
        f"addr add {plan.inet_operator_side_ip}/{plan.operator_cidr.split('/')[1]} dev ops0",
        "link set ops0 up",
    ])
    aws_prefix = plan.aws_outside_cidr.split("/")[1]
    ip_batch("aws", [
        "link set lo up",
        *(f"addr add {ip}/{aws_prefix} dev eth0" for ip in plan.aws_outside_ips),
        "link set eth0 up",
        f"route add default via {plan.inet_aws_side_ip}",
        f"link add vpc0 type veth peer name eth0 netns {n('vpc')}",
        f"addr add {plan.vpc_router_cidr} dev vpc0",
        "link set vpc0 up",
    ])
    ip_batch("vpc", [
        "link set lo up",
        f"addr add {plan.vpc_host_cidr} dev eth0",
        "link set eth0 up",
        f"route add default via {plan.vpc_router_ip}",
    ])
    ip_batch("ops", [
        "link set lo up",
        f"addr add {plan.operator_ip}/{plan.operator_cidr.split('/')[1]} dev eth0",
        "link set eth0 up",
        f"route add default via {plan.inet_operator_side_ip}",
    ])
    for host in ("nat", "inet", "aws"):
        sysctl_in(host, {"net.ipv4.ip_forward": "1"})
    # Linode's 1:1 NAT: the gateway holds only its private address; the public one lives on this hop.
    run_in("nat", ["nft", "-f", "-"], input=f"""
table ip lab_one_to_one_nat {{
    chain prerouting {{
        type nat hook prerouting priority dstnat;
        ip daddr {plan.gateway_public_ip} dnat to {plan.gateway_private_ip}
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat;
        ip saddr {plan.gateway_private_ip} snat to {plan.gateway_public_ip}
    }}
}}
""")


def create_gw_mount_namespace() -> None:
    """A persistent mount namespace for the gateway (bound to a file), with the production paths on tmpfs."""
    ns_dir = gw_mount_ns_file().parent
    ns_dir.mkdir(parents=True, exist_ok=True)
    # The file a mount namespace is bound to must sit on a private mount (else the bind propagates and loops).
    run(["mount", "--bind", str(ns_dir), str(ns_dir)])
    run(["mount", "--make-private", str(ns_dir)])
    gw_mount_ns_file().touch()
    stage = paths.STATE_DIR / "gw-stage"
    created = paths.STATE_DIR / "gw-created-mountpoints"
    lines = ["set -e", "mount -t sysfs sysfs /sys"]  # /sys/class/net of the gateway's network namespace
    made: list[str] = []
    for d, populate in GW_PRIVATE_DIRS.items():
        if not os.path.isdir(d):
            made.append(d)  # only on a host-mode lab: removed again at `lab down`
        lines.append(f"mkdir -p {d}")
        if populate:
            lines.append(f"mkdir -p {stage}{d} && cp -a {d}/. {stage}{d}/")
        lines.append(f"mount -t tmpfs -o mode=0755 hvlab-gw {d}")
        if populate:
            lines.append(f"cp -a {stage}{d}/. {d}/")
    created.write_text("\n".join(made))
    # What cloud-init's first boot makes (hostconfig/cloudinit.py), then what the lab's sshd needs.
    lines += [f"install -d -m {d.mode:04o} {d.path}" for d in gp.FIRST_BOOT_DIRS]
    lines += ["mkdir -p /run/sshd /etc/ssh/authorized_keys",
              "chmod 0700 /etc/ssh/authorized_keys",
              # sshd (UsePAM no) refuses a root whose shadow entry is locked ('!', as virtme-ng's guest has): the
              # gateway's own shadow copy has root without a password ('*'), key login only, like a cloud image.
              "(sed 's/^root:[^:]*:/root:*:/' /etc/shadow 2>/dev/null | grep -q '^root:' && "
              "sed 's/^root:[^:]*:/root:*:/' /etc/shadow || echo 'root:*:19000:0:99999:7:::') > /run/lab-shadow",
              "chmod 0640 /run/lab-shadow", "mount --bind /run/lab-shadow /etc/shadow"]
    run(["unshare", f"--mount={gw_mount_ns_file()}", "--propagation", "private", "--",
         "nsenter", f"--net=/run/netns/{netns_name('gw')}", "--", "sh", "-c", "\n".join(lines)])
    shutil.rmtree(stage, ignore_errors=True)
    run_in("gw", ["sh", "-c", "cat > /etc/strongswan.d/charon-lab-logging.conf"], input=LAB_CHARON_LOGGING)


def start_gw_sshd(plan: LabAddressPlan, authorized_public_key: str, host_private_key: str) -> str:
    """Start sshd in the gateway with the host key the program generated (installed as cloud-init would); returns the
    host public key line."""
    run_in("gw", ["sh", "-ec", "cat > /etc/ssh/sshd_config"],
           input=SSHD_CONFIG.format(listen=plan.gateway_private_ip, host_key=gp.SSH_HOST_KEY.path))
    run_in("gw", ["sh", "-ec", "cat > /etc/ssh/authorized_keys/root; chmod 0644 /etc/ssh/authorized_keys/root"],
           input=authorized_public_key.strip() + "\n")
    run_in("gw", ["sh", "-ec", 'umask 077; cat > "$1"', "sh", gp.SSH_HOST_KEY.path], input=host_private_key)
    host_key = run_in("gw", ["ssh-keygen", "-y", "-f", gp.SSH_HOST_KEY.path]).stdout.strip()
    spawn_in("gw", "gw-sshd", ["/usr/sbin/sshd", "-D", "-e", "-f", "/etc/ssh/sshd_config"])
    wait_for(lambda: ":22 " in run_in("gw", ["ss", "-Hltn"], check=False).stdout, 60, "sshd listening in gw")
    return host_key


def start_gw_charon() -> None:
    """charon as on a real gateway: default strongswan.conf, default VICI socket (gateway_paths.VICI_SOCKET)."""
    spawn_in("gw", "gw-charon", ["/usr/lib/ipsec/charon"])
    wait_for(lambda: run_in("gw", ["test", "-S", gp.VICI_SOCKET], check=False).returncode == 0, 120,
             "charon's VICI socket in gw")


def gw_swanctl(args: list[str], **kw):
    return run_in("gw", ["swanctl", *args], **kw)


def remove_charon_runtime_files() -> None:
    """What a stopped charon leaves in /run and a reboot removes: its VICI socket and pid file."""
    run_in("gw", ["rm", "-f", gp.VICI_SOCKET, "/run/charon.pid"], check=False)


def restart_gw_charon() -> None:
    """What `systemctl restart strongswan` does on the gateway: stop charon, start it, load the swanctl config."""
    stop_process("gw-charon")
    remove_charon_runtime_files()
    start_gw_charon()
    gw_swanctl(["--load-all", "--noprompt"])


def stop_process(name: str, timeout: float = 20.0) -> None:
    pid = pid_of(name)
    if pid is None:
        (paths.STATE_DIR / "pids" / name).unlink(missing_ok=True)
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and pid_of(name) is not None:
        time.sleep(0.1)
    if pid_of(name) is not None:
        os.kill(pid, signal.SIGKILL)
    (paths.STATE_DIR / "pids" / name).unlink(missing_ok=True)


def wait_for(condition, timeout: float, what: str, interval: float = 0.2) -> float:
    t0 = time.monotonic()
    while not condition():
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
    return time.monotonic() - t0


def destroy() -> list[str]:
    """Remove every namespace, process, mount and file the lab made; returns what it removed (for the user)."""
    removed: list[str] = []
    pid_dir = paths.STATE_DIR / "pids"
    if pid_dir.is_dir():
        for f in sorted(pid_dir.iterdir()):
            stop_process(f.name, timeout=10)
            removed.append(f"process {f.name}")
    existing = set(run(["ip", "netns", "list"], check=False).stdout.split())
    for host in HOSTS:
        name = netns_name(host)
        if name not in existing:
            continue
        # anything still running in the namespace (a user's `lab exec ... &`, a tcpdump) goes too
        for pid in run(["ip", "netns", "pids", name], check=False).stdout.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        run(["ip", "netns", "del", name], check=False)
        removed.append(f"netns {name}")
    ns_dir = gw_mount_ns_file().parent
    if gw_mount_ns_file().exists():
        run(["umount", str(gw_mount_ns_file())], check=False)
        removed.append("gw mount namespace")
    if ns_dir.exists():
        run(["umount", str(ns_dir)], check=False)
    created = paths.STATE_DIR / "gw-created-mountpoints"
    if created.exists():
        for d in created.read_text().split():
            try:
                Path(d).rmdir()
            except OSError:
                pass
    if paths.STATE_DIR.exists():
        shutil.rmtree(paths.STATE_DIR, ignore_errors=True)
        removed.append(str(paths.STATE_DIR))
    return removed
