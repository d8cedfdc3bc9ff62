"""The gateway's delivered files (docs/contracts.md §4) and the commands that validate and activate them."""

from __future__ import annotations

from hostconfig.deliver.changes import Command

SWANCTL_CONF = "/etc/swanctl/conf.d/hybrid-vpn.conf"
CHARON_CONF = "/etc/strongswan.d/charon-hybrid-vpn.conf"
AGENT_CONFIG = "/etc/hybrid-vpn/agent.json"
NFT_RULESET = "/etc/hybrid-vpn/nftables.nft"
VPNCTL = "/usr/local/sbin/vpnctl"
FAILOVER_UNIT = "/etc/systemd/system/hybrid-vpn-failover.service"


def validation_commands() -> list[Command]:
    """Checks run after the files are in place and before anything reloads them (paths under {root})."""
    return [
        Command(("nft", "-c", "-f", "{root}" + NFT_RULESET), when_changed=(NFT_RULESET,)),
        Command(("python3", "-m", "json.tool", "{root}" + AGENT_CONFIG, "/dev/null"), when_changed=(AGENT_CONFIG,)),
        Command(("{root}" + VPNCTL, "--help"), when_changed=(VPNCTL,)),
    ]


def activation_commands(strongswan_unit: str = "strongswan", agent_unit: str = "hybrid-vpn-failover") -> list[Command]:
    """Reloads in dependency order; each runs only when a file it reads changed."""
    return [
        Command(("systemctl", "daemon-reload"), when_changed=(FAILOVER_UNIT,)),
        # charon reads strongswan.d (install_routes, the VICI socket) only when it starts.
        Command(("systemctl", "restart", strongswan_unit), when_changed=(CHARON_CONF,)),
        Command(("swanctl", "--load-all"), when_changed=(SWANCTL_CONF, CHARON_CONF)),
        Command(("systemctl", "restart", agent_unit),
                when_changed=(AGENT_CONFIG, NFT_RULESET, VPNCTL, FAILOVER_UNIT, SWANCTL_CONF)),
    ]
