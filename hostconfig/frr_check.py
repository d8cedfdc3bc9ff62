"""FRR's own verdict on a rendered frr.conf, before it is activated (routing.mode bgp, issue 16).

Two checks, both FRR 8.4's (Debian 12): ``vtysh --dryrun -f`` parses the file with the command tree of every daemon and
exits non-zero on an unknown or malformed command; ``bgpd --dryrun`` applies it inside a bgpd that exits at once,
but always exits 0, so its complaints are read from what it logs (``[EC ...]`` error codes).
"""

from __future__ import annotations

import logging
import re
import subprocess
import tempfile
from pathlib import Path

from hostconfig import gateway_paths

log = logging.getLogger(__name__)

_ERROR = re.compile(r"\[EC \d+\].*")
_ZEBRA_ONLY = re.compile(r"^(no )?zebra ")


def vtysh_dryrun_argv(path: str, *, vtysh: str = gateway_paths.VTYSH) -> tuple[str, ...]:
    """FRR's parse of a whole frr.conf, exiting non-zero on any command it does not know (the push's validation runs
    this too, on the gateway, before frr.service reloads the file)."""
    return (vtysh, "--dryrun", "-f", path)


def frr_config_problems(path: Path, *, vtysh: str = gateway_paths.VTYSH,
                        bgpd: str = gateway_paths.FRR_BGPD) -> list[str]:
    """Every problem FRR finds in ``path``; [] when both checks pass."""
    problems = []
    checked = subprocess.run(vtysh_dryrun_argv(str(path), vtysh=vtysh), capture_output=True, text=True, timeout=60)
    if checked.returncode != 0:
        problems.append(f"vtysh --dryrun exit {checked.returncode}: {(checked.stdout + checked.stderr).strip()}")
    with tempfile.TemporaryDirectory(prefix="hybrid-vpn-frr-check-") as scratch:
        # -S: no privilege change (no frr user needed); own vty socket dir and pid file: never the running bgpd's.
        # zebra's own commands are not bgpd's ("No such command"): vtysh --dryrun above checked them.
        for_bgpd = Path(scratch) / "bgpd.conf"
        for_bgpd.write_text("".join(line for line in path.read_text().splitlines(keepends=True)
                                    if not _ZEBRA_ONLY.match(line)))
        applied = subprocess.run([bgpd, "-S", "--dryrun", "-f", str(for_bgpd), "--vty_socket", scratch,
                                  "-i", f"{scratch}/bgpd.pid"], capture_output=True, text=True, timeout=60)
    problems.extend(f"bgpd --dryrun: {m.group(0)}" for m in _ERROR.finditer(applied.stdout + applied.stderr))
    log.info("frr check of %s: %d problem(s)", path, len(problems))
    return problems
