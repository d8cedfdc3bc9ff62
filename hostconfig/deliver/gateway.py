"""The gateway's delivered files (docs/contracts.md §4) and the commands that validate and activate them."""

from __future__ import annotations

import io
import tempfile
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from hostconfig import gateway_paths as gp
from hostconfig.agent.state import DAEMON_STATE
from hostconfig.deliver.changes import Command, DesiredFile
from hostconfig.frr_check import vtysh_dryrun_argv

# The agent's daemon rewrites this file every few seconds (hostconfig.agent.state): proof that it runs.
DAEMON_STATE_FILE = f"{gp.STATE_DIR.path}/{DAEMON_STATE}"
AGENT_READY_SECONDS = 120.0

# `systemctl restart` of a Type=simple unit returns once the process forked, even if the daemon then refuses its
# config and crash-loops (failover off). This restarts the unit and returns only when the daemon is ready: the unit
# active and the state file rewritten, after the restart, by the unit's current main process. Runs on the gateway,
# where it reads the state file through the agent's own contract (hostconfig.agent.status_contract, imported from the
# delivered vpnctl zipapp): a state file that is not a daemon state of this release is not "ready".
_RESTART_AND_WAIT_READY = r"""
import subprocess, sys, time
unit, state_file, deadline, vpnctl = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
sys.path.insert(0, vpnctl)
from hostconfig.agent.status_contract import ContractError, DaemonState
started = time.time()
rc = subprocess.run(["systemctl", "restart", unit]).returncode
if rc != 0:
    sys.exit(rc)
end = time.monotonic() + deadline
seen = "no state file"
while time.monotonic() < end:
    active = subprocess.run(["systemctl", "is-active", "--quiet", unit]).returncode == 0
    main_pid = subprocess.run(["systemctl", "show", "--property=MainPID", "--value", unit], capture_output=True,
                              text=True).stdout.strip()
    state = None
    try:
        with open(state_file) as handle:
            state = DaemonState.loads(handle.read())
        seen = f"state file by pid {state.pid} at {state.updated_at}, unit main pid {main_pid}"
    except OSError:
        pass
    except ContractError as exc:
        seen = f"{state_file}: {exc}"
    if active and state is not None and state.updated_at >= started and str(state.pid) == main_pid:
        print(f"{unit} ready: main pid {main_pid} wrote {state_file}")
        sys.exit(0)
    time.sleep(0.5)
log = subprocess.run(["journalctl", "-u", unit, "-n", "15", "--no-pager", "-o", "cat"], capture_output=True,
                     text=True).stdout
print(f"{unit} not ready {deadline:g}s after its restart ({seen}); its last log lines:\n{log}", file=sys.stderr)
sys.exit(1)
"""


def validation_commands(*, bgp: bool = False) -> list[Command]:
    """Checks run after the files are in place and before anything reloads them (paths under {root}).

    agent.json is checked by the agent's own reader (`vpnctl check-config`, the delivered vpnctl), so a config the
    daemon would refuse at start fails here and is rolled back, instead of a crash-looping daemon after the push.
    ``bgp`` (routing.mode bgp): frr.conf is checked by FRR itself (vtysh --dryrun); a static stack's list is unchanged.
    """
    commands = [
        Command(("nft", "-c", "-f", "{root}" + gp.NFT_RULESET.path), when_changed=(gp.NFT_RULESET.path,)),
        Command(("{root}" + gp.VPNCTL.path, "check-config", "{root}" + gp.AGENT_CONFIG.path),
                when_changed=(gp.AGENT_CONFIG.path, gp.VPNCTL.path)),
    ]
    if bgp:
        commands.append(Command(vtysh_dryrun_argv("{root}" + gp.FRR_CONF.path), when_changed=(gp.FRR_CONF.path,)))
    return commands


def _unit(name: str) -> str:
    """A unit as the commands have always named it, without ".service": the commands are inputs of every stack's
    gateway-config resource, so another spelling would show as an update of each of them."""
    return name.removesuffix(".service")


def agent_restart_command(agent_unit: str = _unit(gp.FAILOVER_UNIT), state_file: str = "{root}" + DAEMON_STATE_FILE,
                          ready_seconds: float = AGENT_READY_SECONDS,
                          vpnctl: str = "{root}" + gp.VPNCTL.path) -> tuple[str, ...]:
    """argv restarting the agent's unit and waiting until the daemon reports ready (see _RESTART_AND_WAIT_READY).
    ``vpnctl``: the delivered zipapp, whose status contract reads the state file."""
    return ("python3", "-c", _RESTART_AND_WAIT_READY, agent_unit, state_file, f"{ready_seconds:g}", vpnctl)


@dataclass(frozen=True)
class ActivationStep:
    """One step of bringing new files into service: what it does (``name``, which the lab maps to its own way of doing
    it, having no systemd), the files whose change calls for it, and the command a systemd gateway runs."""

    name: str
    when_changed: tuple[str, ...]
    argv: tuple[str, ...]


# The activation order, for delivery and the lab alike. The agent before charon: its daemon creates the VTIs at start
# and, once running, keeps charon's updown hook to a few milliseconds of work (charon waits for the hook). SAs brought
# up before it would each run a hook that reconciles itself; in the lab's slow VM those held charon for 20 s at
# start-up and a tunnel failed to come up.
ACTIVATION_ORDER = (
    ActivationStep("reload-units", (gp.FAILOVER_UNIT_FILE.path, gp.GUARD_UNIT_FILE.path),
                   ("systemctl", "daemon-reload")),
    # The leak guard that loads the ruleset at boot before forwarding and charon (hostconfig/templates): enabled here
    # too, because a gateway that booted before the unit existed has only the push to enable it.
    ActivationStep("enable-guard", (gp.GUARD_UNIT_FILE.path,), ("systemctl", "enable", gp.GUARD_UNIT)),
    ActivationStep("restart-agent", (gp.AGENT_CONFIG.path, gp.NFT_RULESET.path, gp.VPNCTL.path,
                                     gp.FAILOVER_UNIT_FILE.path, gp.SWANCTL_CONF.path),
                   agent_restart_command()),
    # charon reads strongswan.d (install_routes, the VICI socket) only when it starts.
    ActivationStep("restart-charon", (gp.CHARON_CONF.path,), ("systemctl", "restart", _unit(gp.STRONGSWAN_UNIT))),
    ActivationStep("load-swanctl", (gp.SWANCTL_CONF.path, gp.CHARON_CONF.path), ("swanctl", "--load-all")),
    # sshd re-reads its host keys on reload; the push's own connection stays up, the next one pins the new key.
    ActivationStep("reload-sshd", (gp.SSH_HOST_KEY.path,), ("systemctl", "reload", _unit(gp.SSH_UNIT))),
)


# routing.mode bgp only, after load-swanctl: bgpd's sessions run over the VTIs the tunnels bring up. A new daemons
# list needs a restart (bgpd not running yet); a new frr.conf only a reload (frr-reload.py applies the difference,
# the BGP sessions stay up, so AWS keeps its routes), which starts frr.service if it is not running.
FRR_ACTIVATION = (
    ActivationStep("restart-frr", (gp.FRR_DAEMONS.path,), ("systemctl", "restart", _unit(gp.FRR_UNIT))),
    ActivationStep("reload-frr", (gp.FRR_CONF.path,), ("systemctl", "reload-or-restart", _unit(gp.FRR_UNIT))),
)


def activation_order(*, bgp: bool = False) -> tuple[ActivationStep, ...]:
    """ACTIVATION_ORDER, with FRR's steps right after load-swanctl in routing.mode bgp."""
    if not bgp:
        return ACTIVATION_ORDER
    after = [s.name for s in ACTIVATION_ORDER].index("load-swanctl") + 1
    return (*ACTIVATION_ORDER[:after], *FRR_ACTIVATION, *ACTIVATION_ORDER[after:])


def activation_steps(changed: Iterable[str], *, bgp: bool = False) -> list[ActivationStep]:
    """The steps that ``changed`` (gateway paths) calls for, in activation_order(bgp)."""
    changed = set(changed)
    return [step for step in activation_order(bgp=bgp) if changed & set(step.when_changed)]


def activation_commands(*, bgp: bool = False) -> list[Command]:
    """activation_order(bgp) as delivery's commands; on the gateway each runs only when a file it reads changed."""
    return [Command(step.argv, when_changed=step.when_changed) for step in activation_order(bgp=bgp)]


def host_key_files(private_openssh: str, public_openssh: str) -> list[DesiredFile]:
    """The delivered SSH host key (an ed25519 key the program made, a Pulumi secret) as the files sshd reads: the key
    sshd uses from the first push on. The one in user data (readable by anyone who can read the instance through the
    API, and by the metadata service) is only the bootstrap key the first push connects with."""
    return [
        DesiredFile(gp.SSH_HOST_KEY.path, private_openssh.encode(), gp.SSH_HOST_KEY.mode,
                    secret=gp.SSH_HOST_KEY.secret),
        DesiredFile(gp.SSH_HOST_PUBLIC_KEY.path, public_openssh.strip().encode() + b"\n", gp.SSH_HOST_PUBLIC_KEY.mode),
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
    """The agent zipapp (hostconfig.agent.bundle) as the file delivered to gateway_paths.VPNCTL."""
    from hostconfig.agent.bundle import build_zipapp

    with tempfile.TemporaryDirectory(prefix="hybrid-vpn-vpnctl-") as tmp:
        built = build_zipapp(Path(tmp) / "vpnctl.pyz")
        data = reproducible_zipapp(built.read_bytes())
    return DesiredFile(gp.VPNCTL.path, data, gp.VPNCTL.mode, secret=gp.VPNCTL.secret)
