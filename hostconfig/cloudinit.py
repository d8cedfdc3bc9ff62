"""cloud-init user data for the gateway's first boot.

Rendered before the AWS side exists (the customer gateway needs the gateway's public IP first), so it depends on no
tunnel value: packages, the pinned SSH host key, sysctls, directories and the failover unit. No tunnel secrets: user
data is readable by anyone who can read the Linode through the API. The PSKs, the agent (vpnctl) and its configuration
arrive by the SSH push (hostconfig.deliver), which then starts the unit.
"""

from __future__ import annotations

import logging

from hostconfig import gateway_paths as gp
from hostconfig import render as rendermod
from hostconfig.contract import rules

log = logging.getLogger(__name__)

# strongSwan with swanctl/VICI; charon-systemd provides strongswan.service on Debian 12 (strongswan-charon alone
# ships the daemon but no unit that starts it). The agent is a zipapp run by python3 (pyroute2 and vici bundled).
PACKAGES = (
    "strongswan-charon",
    "strongswan-swanctl",
    "charon-systemd",
    "libcharon-extra-plugins",
    "libstrongswan-standard-plugins",
    "nftables",
    "python3",
)

# routing.mode bgp only (issue 16): Debian's FRR; frr-pythontools has frr-reload.py, which `systemctl reload frr`
# runs to apply a new frr.conf without dropping the BGP sessions.
BGP_PACKAGES = ("frr", "frr-pythontools")

_PRIVATE_BEGIN = "-----BEGIN OPENSSH PRIVATE KEY-----"
_PRIVATE_END = "-----END OPENSSH PRIVATE KEY-----"


class UserDataError(ValueError):
    """An argument of render_user_data is unusable; the message names it (never shows a key)."""


def _check(hostname: str, private: str, public: str) -> None:
    if problem := rules.HOSTNAME.problem(hostname):
        raise UserDataError(f"hostname: {problem}; example: {rules.HOSTNAME.example}")
    lines = private.strip().splitlines() if isinstance(private, str) else []
    if len(lines) < 3 or lines[0] != _PRIVATE_BEGIN or lines[-1] != _PRIVATE_END:
        raise UserDataError(
            "ssh_host_ed25519_private: not an OpenSSH private key (value not shown); expected the "
            f"text from '{_PRIVATE_BEGIN}' to '{_PRIVATE_END}' as ssh-keygen -t ed25519 writes it"
        )
    if problem := rules.ssh_public_key_problem(public, ("ssh-ed25519",)):
        raise UserDataError(f"ssh_host_ed25519_public: {problem}; expected 'ssh-ed25519 AAAA... comment'")


def _block(text: str) -> str:
    """Content for a YAML literal block: the block adds back exactly one final newline."""
    return text.rstrip("\n")


def _file(where: gp.GatewayFile, content: str, *, defer: bool = False) -> dict:
    return {"path": where.path, "mode": f"{where.mode:04o}", "content": _block(content), "defer": defer}


def _install_dirs(dirs: tuple[gp.GatewayDir, ...]) -> list[list[str]]:
    """One `install -d` per mode, in the table's order."""
    modes = dict.fromkeys(d.mode for d in dirs)
    return [["install", "-d", "-m", f"{mode:04o}", *(d.path for d in dirs if d.mode == mode)] for mode in modes]


def _bgp_additions(view: dict) -> None:
    """routing.mode bgp: FRR installed, bgpd enabled and running (without sessions until the push brings frr.conf).
    The daemons file is deferred (cloud-init writes it in its final stage, after the packages are installed) so the
    package's own conffile never meets it; runcmd, later still, restarts frr.service to start bgpd."""
    view["packages"].extend(BGP_PACKAGES)
    view["files"].append(_file(gp.FRR_DAEMONS, rendermod.render_frr_daemons(), defer=True))
    view["commands"].extend([["systemctl", "enable", gp.FRR_UNIT], ["systemctl", "restart", gp.FRR_UNIT]])


def render_user_data(*, hostname: str, ssh_host_ed25519_private: str, ssh_host_ed25519_public: str,
                     bgp: bool = False) -> str:
    """The gateway's `#cloud-config` user data (called by the Pulumi program). ``bgp``: the stack's routing.mode is
    bgp (a static stack's user data is unchanged)."""
    _check(hostname, ssh_host_ed25519_private, ssh_host_ed25519_public)
    view = {
        "hostname": hostname,
        "packages": list(PACKAGES),
        "ssh_host_ed25519_private": _block(ssh_host_ed25519_private.strip()),
        "ssh_host_ed25519_public": ssh_host_ed25519_public.strip(),
        "files": [
            _file(gp.SYSCTL_CONF, rendermod.render_sysctl()),
            _file(gp.FAILOVER_UNIT_FILE, rendermod.render_failover_unit()),
            _file(gp.GUARD_UNIT_FILE, rendermod.render_guard_unit()),
        ],
        "commands": [
            ["sysctl", "-p", gp.SYSCTL_CONF.path],
            *_install_dirs(gp.FIRST_BOOT_DIRS),
            *_install_dirs((gp.STATE_DIR,)),  # its own command, as user data has always had it (a change replaces)
            ["systemctl", "daemon-reload"],
            # Enabled now, started by the delivery push once vpnctl and agent.json exist (ConditionPathExists).
            ["systemctl", "enable", gp.FAILOVER_UNIT],
            # Enabled now so that every later boot loads the pushed ruleset before the network and charon start.
            ["systemctl", "enable", gp.GUARD_UNIT],
            ["systemctl", "enable", "--now", gp.STRONGSWAN_UNIT],
        ],
    }
    if bgp:
        _bgp_additions(view)
    text = rendermod.render("user-data.yaml.j2", view)
    log.info("rendered cloud-init user data for %s (%d bytes)", hostname, len(text))
    return text
