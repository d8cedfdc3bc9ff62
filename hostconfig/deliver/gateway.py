"""The gateway's delivered files (docs/contracts.md §4) and the commands that validate and activate them."""

from __future__ import annotations

import io
import tempfile
import zipfile
from pathlib import Path

from hostconfig.deliver.changes import Command, DesiredFile

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
    """Reloads in dependency order; each runs only when a file it reads changed.

    The agent first: its daemon creates the VTIs at start and, once running, keeps charon's updown hook to a few
    milliseconds of work (charon waits for the hook). SAs brought up before it would each run a hook that reconciles
    itself; in the lab's slow VM those held charon for 20 s at start-up and a tunnel failed to come up.
    """
    return [
        Command(("systemctl", "daemon-reload"), when_changed=(FAILOVER_UNIT,)),
        Command(("systemctl", "restart", agent_unit),
                when_changed=(AGENT_CONFIG, NFT_RULESET, VPNCTL, FAILOVER_UNIT, SWANCTL_CONF)),
        # charon reads strongswan.d (install_routes, the VICI socket) only when it starts.
        Command(("systemctl", "restart", strongswan_unit), when_changed=(CHARON_CONF,)),
        Command(("swanctl", "--load-all"), when_changed=(SWANCTL_CONF, CHARON_CONF)),
    ]


# Zip entries carry a modification time; build_zipapp writes some files fresh on every build, which would make every
# `pulumi up` see a "new" vpnctl. Entries are rewritten with this fixed time so equal sources give equal bytes.
_FIXED_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def reproducible_zipapp(data: bytes) -> bytes:
    """The same zipapp (shebang line + zip) with sorted entries, fixed timestamps and fixed permissions."""
    shebang, _, _ = data.partition(b"\n")
    if not shebang.startswith(b"#!"):
        raise ValueError("vpnctl zipapp: expected a '#!' interpreter line before the zip archive")
    out = io.BytesIO()
    out.write(shebang + b"\n")
    with zipfile.ZipFile(io.BytesIO(data)) as source, zipfile.ZipFile(out, "w") as target:
        for info in sorted(source.infolist(), key=lambda i: i.filename):
            fixed = zipfile.ZipInfo(info.filename, date_time=_FIXED_ZIP_TIME)
            fixed.compress_type = info.compress_type
            fixed.external_attr = (0o755 if info.is_dir() else 0o644) << 16
            target.writestr(fixed, source.read(info.filename))
    return out.getvalue()


def vpnctl_file() -> DesiredFile:
    """The agent zipapp (hostconfig.agent.bundle) as the file delivered to /usr/local/sbin/vpnctl, mode 0755."""
    from hostconfig.agent.bundle import build_zipapp

    with tempfile.TemporaryDirectory(prefix="hybrid-vpn-vpnctl-") as tmp:
        built = build_zipapp(Path(tmp) / "vpnctl.pyz")
        data = reproducible_zipapp(built.read_bytes())
    return DesiredFile(VPNCTL, data, 0o755, secret=False)
