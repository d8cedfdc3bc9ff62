"""Where everything lives on the gateway, with its mode and owner: the one table (docs/contracts.md §4).

Read by the renderer, cloud-init, delivery, the agent (bundled into the vpnctl zipapp: stdlib only, no hostconfig
import), the doctor and the lab. A path written anywhere else is a copy that can drift; tests/test_gateway_paths.py
greps for such copies.
"""

from __future__ import annotations

from dataclasses import dataclass

ROOT_UID = ROOT_GID = 0  # every file below is root's: only root reconfigures the tunnels


@dataclass(frozen=True)
class GatewayFile:
    """A file the project puts on the gateway: where, with which mode, whose, and whether it holds a secret."""

    path: str
    mode: int
    secret: bool = False
    uid: int = ROOT_UID
    gid: int = ROOT_GID


@dataclass(frozen=True)
class GatewayDir:
    path: str
    mode: int


# --- units (names: systemctl takes them; their files are below) ---
FAILOVER_UNIT = "hybrid-vpn-failover.service"
GUARD_UNIT = "hybrid-vpn-guard.service"  # loads the nftables ruleset at boot, before forwarding and charon
STRONGSWAN_UNIT = "strongswan.service"  # charon-systemd's unit on Debian 12 (not rendered by hostconfig)
SSH_UNIT = "ssh.service"
UNIT_DIR = "/etc/systemd/system"

# --- directories ---
CONFIG_DIR = GatewayDir("/etc/hybrid-vpn", 0o755)
SWANCTL_CONF_DIR = GatewayDir("/etc/swanctl/conf.d", 0o755)
METRICS_DIR = GatewayDir("/var/lib/prometheus/node-exporter", 0o755)  # node_exporter's textfile collector
STATE_DIR = GatewayDir("/run/hybrid-vpn", 0o755)  # the agent's: daemon state, lock, updown log (gone at reboot)
# Delivery's own: the lock, the activated record, manifests and results. Persistent (STATE_DIR is /run): the record
# must survive a reboot between install and activation.
DELIVERY_STATE_DIR = GatewayDir("/var/lib/hybrid-vpn-delivery", 0o700)
# cloud-init makes these (and STATE_DIR) at first boot, before any push (the push uploads beside each file's path).
FIRST_BOOT_DIRS = (CONFIG_DIR, SWANCTL_CONF_DIR, METRICS_DIR)

# --- the files ---
SWANCTL_CONF = GatewayFile(f"{SWANCTL_CONF_DIR.path}/hybrid-vpn.conf", 0o600, secret=True)  # holds the PSKs
CHARON_CONF = GatewayFile("/etc/strongswan.d/charon-hybrid-vpn.conf", 0o644)
AGENT_CONFIG = GatewayFile(f"{CONFIG_DIR.path}/agent.json", 0o644)  # no secrets (contracts §2)
NFT_RULESET = GatewayFile(f"{CONFIG_DIR.path}/nftables.nft", 0o644)
FAILOVER_UNIT_FILE = GatewayFile(f"{UNIT_DIR}/{FAILOVER_UNIT}", 0o644)
GUARD_UNIT_FILE = GatewayFile(f"{UNIT_DIR}/{GUARD_UNIT}", 0o644)
SYSCTL_CONF = GatewayFile("/etc/sysctl.d/60-hybrid-vpn.conf", 0o644)  # written by cloud-init only
VPNCTL = GatewayFile("/usr/local/sbin/vpnctl", 0o755)  # the agent zipapp (hostconfig.agent.bundle)
# The host key sshd uses from the first push on (the one in user data is only the bootstrap key).
SSH_HOST_KEY = GatewayFile("/etc/ssh/ssh_host_ed25519_key", 0o600, secret=True)
SSH_HOST_PUBLIC_KEY = GatewayFile(f"{SSH_HOST_KEY.path}.pub", 0o644)
# For users of the legacy `ipsec` starter (rendered on request, never pushed).
LEGACY_IPSEC_CONF = GatewayFile("/etc/ipsec.conf", 0o644)
LEGACY_IPSEC_SECRETS = GatewayFile("/etc/ipsec.secrets", 0o600, secret=True)
METRICS_FILE = f"{METRICS_DIR.path}/hybrid_vpn.prom"  # the agent writes it (0644, atomically)

# --- what the gateway's distribution provides ---
VICI_SOCKET = "/run/charon.vici"  # charon's default
NFT = "/usr/sbin/nft"
# Written by cloud-init's last stage when the first boot is over.
CLOUD_INIT_DONE = "/var/lib/cloud/instance/boot-finished"

UPDOWN_COMMAND = f"{VPNCTL.path} updown"

# --- BGP mode (routing.mode bgp, issue 16): FRR from Debian's frr package ---
# Root's, 0640: vtysh -b (root, frr.service's start) reads it; no secrets (AWS's BGP sessions carry no password).
FRR_CONF = GatewayFile("/etc/frr/frr.conf", 0o640)
# Which daemons frr.service starts (bgpd=yes): cloud-init writes it after the package is installed, the push keeps it.
FRR_DAEMONS = GatewayFile("/etc/frr/daemons", 0o640)
FRR_UNIT = "frr.service"
VTYSH = "/usr/bin/vtysh"
FRR_BGPD = "/usr/lib/frr/bgpd"  # Debian's frr puts its daemons in /usr/lib/frr
FRR_RUN_DIR = "/run/frr"  # frr.service's: each daemon's vty socket (<daemon>.vty: vtysh connects there), pid files
