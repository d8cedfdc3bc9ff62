"""The lab gateway driven by the project's real chain: host_config -> GatewayPlan -> rendered files -> SSH push from
the operator namespace -> `vpnctl daemon` (which reconciles at start) runs in the gateway -> charon loads the tunnels.

The lab has no systemd: the controller plays its part. It activates the pushed files with delivery's own activation
order (hostconfig.deliver.gateway.ACTIVATION_ORDER), each step done as the lab can (LAB_STEPS), and at a "reboot"
starts the gateway's units in the order their files give.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from hostconfig import gateway_paths as gp
from hostconfig.agent import state as agent_state
from hostconfig.deliver.gateway import activation_steps
from lab import operator, paths, topology
from lab.frr import FRR_USER, answers_argv, daemon_argv, enabled_daemons
from lab.sh import ns_prefix, pid_of, run, run_in, spawn_in

log = logging.getLogger(__name__)

OPS_DIR = paths.STATE_DIR / "ops"
PUSH_REPORT = OPS_DIR / "push-report.json"


@dataclass(frozen=True)
class OperatorKey:
    private_path: Path
    public: str


def make_operator_key() -> OperatorKey:
    """The operator's SSH key (in production: the user's key or agent) that the gateway authorises."""
    OPS_DIR.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = OPS_DIR / "id_ed25519"
    if not key.exists():
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "hybrid-vpn-lab-operator", "-f", str(key)])
    return OperatorKey(key, key.with_suffix(".pub").read_text().strip())


def host_config(operator_dir: Path, say: Callable[[str], None]) -> tuple[dict, str]:
    """(host_config, the gateway's SSH host private key) as the program evaluated them on the operator side."""
    data = json.loads((operator_dir / operator.PROGRAM_RESULT).read_text())
    hc = data["host_config"]
    say(f"program (evaluated on the operator side): VPN connection {hc['aws']['vpn_connection_id']}, tunnels "
        + ", ".join(f"{t['name']} {t['outside_ip']}" for t in hc["tunnels"]))
    return hc, data["ssh_host_private_key"]


def configure(operator_dir: Path, say: Callable[[str], None]) -> None:
    files = operator_dir / operator.GATEWAY_FILES
    say("delivery: pushing the rendered files over SSH from the operator namespace (192.0.2.10 -> 203.0.113.10)")
    proc = run(ns_prefix("ops") + [sys.executable, "-m", "lab.gateway", "push", str(files)], check=False, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"delivery failed: {proc.stderr.strip()[-2000:]}")
    report = json.loads(PUSH_REPORT.read_text())
    say(f"delivery: {len(report['changed'])} file(s) changed in {report['total_seconds']:.1f} s: "
        f"{', '.join(c['path'] for c in report['changed'])}")
    hc, _ = host_config(operator_dir, lambda _line: None)
    activate([c["path"] for c in report["changed"]], say, bgp="routing" in hc)


# charon-systemd's unit on Debian 12 (gp.STRONGSWAN_UNIT) is the one the lab's charon plays. Not rendered by
# hostconfig: its ordering comes from the rendered units (and from the distribution's file when this machine has it).
SYSTEM_UNIT_DIRS = (Path("/lib/systemd/system"), Path("/usr/lib/systemd/system"))


@dataclass(frozen=True)
class Unit:
    """What the lab needs of a systemd unit: its ordering, its ExecStart= lines and its path conditions."""

    name: str
    before: tuple[str, ...] = ()
    after: tuple[str, ...] = ()
    exec_start: tuple[str, ...] = ()
    path_conditions: tuple[str, ...] = ()


def parse_unit(name: str, text: str) -> Unit:
    """A unit file's keys; repeated keys accumulate, as systemd reads list settings."""
    values: dict[str, list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        values.setdefault(f"{section}.{key.strip()}", []).append(value.strip())

    def words(key: str) -> tuple[str, ...]:
        return tuple(w for v in values.get(key, []) for w in v.split())

    return Unit(name, words("Unit.Before"), words("Unit.After"), tuple(values.get("Service.ExecStart", [])),
                tuple(values.get("Unit.ConditionPathExists", [])))


def start_order(units: list[Unit]) -> list[str]:
    """The order systemd starts these units in, from their Before=/After= (either side may declare an edge);
    units with no ordering between them keep the order given."""
    names = [u.name for u in units]
    later: dict[str, set[str]] = {n: set() for n in names}  # name -> units that must start after it
    for u in units:
        later[u.name].update(b for b in u.before if b in later)
        for a in u.after:
            if a in later:
                later[a].add(u.name)
    order: list[str] = []
    pending = list(names)
    while pending:
        ready = [n for n in pending if not any(n in later[m] for m in pending)]
        if not ready:
            raise RuntimeError(f"ordering cycle among {', '.join(pending)}")
        order.append(ready[0])
        pending.remove(ready[0])
    return order


def _system_unit(name: str) -> Unit:
    system = next((d / name for d in SYSTEM_UNIT_DIRS if (d / name).is_file()), None)
    return parse_unit(name, system.read_text()) if system else Unit(name)


def gateway_units(bgp: bool) -> list[Unit]:
    """The gateway's units as pushed (read in its mount namespace), plus charon's, plus frr's in routing.mode bgp.
    frr after charon: bgpd's sessions run over the tunnels (it would retry, but a boot that starts it first only
    waits longer for its first session)."""
    units = []
    for unit_file in (gp.GUARD_UNIT_FILE, gp.FAILOVER_UNIT_FILE):
        proc = run_in("gw", ["cat", unit_file.path], check=False)
        if proc.returncode == 0:
            units.append(parse_unit(Path(unit_file.path).name, proc.stdout))
    units.append(_system_unit(gp.STRONGSWAN_UNIT))
    if bgp:
        frr = _system_unit(gp.FRR_UNIT)
        units.append(Unit(frr.name, frr.before, (*frr.after, gp.STRONGSWAN_UNIT), frr.exec_start,
                          frr.path_conditions))
    return units


def _load_swanctl() -> None:
    run_in("gw", ["swanctl", "--load-all", "--noprompt"], timeout=300)


def _none() -> None:
    """A step systemd needs and the lab does not: it reads the unit files when it starts a unit, and "enables" the
    guard by starting the units at each lab reboot (restart_stack_like_boot)."""


def _reload_sshd() -> None:
    pid = pid_of("gw-sshd")  # the gateway's own sshd: the namespaces share the machine's process table
    if pid is not None:
        os.kill(pid, signal.SIGHUP)


# --- FRR (routing.mode bgp): what frr.service does, without systemd ------------------------------------------------

FRR_PROCESS_PREFIX = "gw-frr-"


def bgp_mode() -> bool:
    """The gateway's stack is in routing.mode bgp: its agent.json carries the bgp section (hostconfig/plan.py)."""
    proc = run_in("gw", ["cat", gp.AGENT_CONFIG.path], check=False)
    return proc.returncode == 0 and "bgp" in json.loads(proc.stdout or "{}")


def _frr_processes() -> list[str]:
    pids = paths.STATE_DIR / "pids"
    return sorted(f.name for f in pids.iterdir() if f.name.startswith(FRR_PROCESS_PREFIX)) if pids.is_dir() else []


def start_frr() -> None:
    """`systemctl start frr`: the daemons /etc/frr/daemons enables, then `vtysh -b` applies /etc/frr/frr.conf (the
    integrated config, as frrinit.sh does)."""
    daemons = enabled_daemons(run_in("gw", ["cat", gp.FRR_DAEMONS.path]).stdout)
    run_in("gw", ["install", "-d", "-o", FRR_USER, "-g", FRR_USER, "-m", "0755", gp.FRR_RUN_DIR])
    for daemon in daemons:
        spawn_in("gw", FRR_PROCESS_PREFIX + daemon, daemon_argv(daemon))
        topology.wait_for(lambda d=daemon: run_in("gw", answers_argv(d), check=False).returncode == 0, 120,
                          f"the gateway's {daemon} answering")
    run_in("gw", [gp.VTYSH, "-b"], timeout=300)


def stop_frr() -> None:
    for name in reversed(_frr_processes()):
        topology.stop_process(name)


def restart_frr() -> None:
    stop_frr()
    start_frr()


def reload_frr() -> None:
    """`systemctl reload-or-restart frr`: frr-reload.py applies the difference (the sessions stay up); a stopped
    frr is started."""
    if pid_of(FRR_PROCESS_PREFIX + "bgpd") is None:
        restart_frr()
        return
    run_in("gw", [str(Path(gp.FRR_BGPD).parent / "frr-reload.py"), "--reload", gp.FRR_CONF.path], timeout=300)


# ACTIVATION_ORDER's steps as the lab does them: (what it does, what it says). tests/e2e/test_lab_units.py checks that
# every step of the product's order has an entry here.
LAB_STEPS: dict[str, tuple[Callable[[], None], str]] = {
    "reload-units": (_none, ""),
    "enable-guard": (_none, ""),
    "restart-agent": (lambda: restart_agent(), "vpnctl daemon running"),
    # `systemctl restart strongswan`: charon-systemd's unit loads the swanctl config when charon has started.
    "restart-charon": (lambda: topology.restart_gw_charon(), "charon restarted (strongswan.d changed)"),
    "load-swanctl": (_load_swanctl, "swanctl --load-all"),
    "reload-sshd": (_reload_sshd, "sshd reloaded (new host key)"),
    "restart-frr": (restart_frr, "frr (zebra + bgpd) restarted (daemons changed)"),
    "reload-frr": (reload_frr, "frr reloaded (frr.conf changed)"),
}


def activate(changed: list[str], say: Callable[[str], None], bgp: bool = False) -> list[str]:
    """Activate the changed gateway files in delivery's order (hostconfig.deliver.gateway.activation_steps); no
    separate `vpnctl reconcile`: the daemon's start is one (links, addresses, sysctls, routes, rule, nftables)."""
    done = []
    for step in activation_steps(changed, bgp=bgp):
        action, said = LAB_STEPS[step.name]
        action()
        if said:
            say(f"gateway: {said}")
        done.append(step.name)
    return done


def reset_to_boot_state() -> None:
    """What a reboot leaves of the gateway: no charon, no agent, none of the agent's kernel state (VTIs, routes, rule,
    nftables table, SAs), forwarding at the kernel's default (off), then the sysctl.d drop-in cloud-init wrote."""
    from hostconfig import render

    stop_frr()
    topology.stop_process("gw-vpnctl-daemon")
    topology.stop_process("gw-charon")
    # Forwarding off before the state goes (and after the agent, which would turn it back on): a booting kernel starts
    # with it off, and tearing the agent's state down with it on would itself leak (no table, no rule, no routes).
    run_in("gw", ["sysctl", "-q", "-w", "net.ipv4.ip_forward=0"])
    topology.remove_charon_runtime_files()
    agent = json.loads(run_in("gw", ["cat", gp.AGENT_CONFIG.path]).stdout)
    own = agent["ownership"]
    for cmd in (["nft", "delete", "table", "inet", own["nft_table"]],
                ["ip", "rule", "del", "pref", str(own["rule_priority"])],
                ["ip", "route", "flush", "table", str(own["route_table"])],
                *(["ip", "link", "del", t["interface"]] for t in agent["tunnels"]),
                ["ip", "xfrm", "state", "flush"], ["ip", "xfrm", "policy", "flush"],
                ["conntrack", "-F"]):  # a fresh kernel has no conntrack entries (skipped when conntrack is missing)
        run_in("gw", cmd, check=False)
    for line in render.render_sysctl().splitlines():  # what systemd-sysctl applies early at boot
        if line.strip() and not line.startswith("#"):
            run_in("gw", ["sysctl", "-q", "-w", line.replace(" ", "")])


def start_unit(unit: Unit) -> None:
    """Start one gateway unit as systemd would: the agent and charon are the lab's processes; a oneshot runs its
    ExecStart= lines in the gateway when its ConditionPathExists= hold."""
    if unit.name == gp.FAILOVER_UNIT:
        restart_agent()
    elif unit.name == gp.STRONGSWAN_UNIT:
        topology.restart_gw_charon()
    elif unit.name == gp.FRR_UNIT:
        restart_frr()
    elif all(run_in("gw", ["test", "-e", p], check=False).returncode == 0 for p in unit.path_conditions):
        for line in unit.exec_start:
            run_in("gw", shlex.split(line.lstrip("-@:+!")))


def restart_stack_like_boot(say: Callable[[str], None]) -> list[str]:
    """Reboot the gateway's stack: reset to the boot state, then start its units in the order their files give."""
    bgp = bgp_mode()
    reset_to_boot_state()
    say("gateway: boot state (no charon, no agent, no agent state, sysctl.d applied)")
    units = {u.name: u for u in gateway_units(bgp)}
    order = start_order(list(units.values()))
    for name in order:
        start_unit(units[name])
        say(f"gateway: started {name}")
    return order


DAEMON_LOCK = f"{gp.STATE_DIR.path}/{agent_state.DAEMON_LOCK}"  # the gateway's, as rendered into agent.json


def restart_agent() -> None:
    """Stop the daemon, start it, and return once it holds its lock: from then on updown hooks leave the work to it."""
    topology.stop_process("gw-vpnctl-daemon")
    spawn_in("gw", "gw-vpnctl-daemon", [gp.VPNCTL.path, "daemon"])
    # `flock -n -s` fails (1) while the daemon holds its exclusive lock
    topology.wait_for(lambda: run_in("gw", ["flock", "-n", "-s", DAEMON_LOCK, "true"], check=False).returncode == 1,
                      120, "the vpnctl daemon to take its lock")


def status(out: BinaryIO, err: BinaryIO) -> None:
    out.write(b"vpnctl status\n")
    out.flush()
    subprocess.run(ns_prefix("gw") + [gp.VPNCTL.path, "status"], stdout=out, stderr=err, check=False)


# --- runs in the operator namespace: `python -m lab.gateway push` -------------------------------------------------

def push(files_json: Path) -> int:
    from hostconfig.deliver.changes import DesiredFile
    from hostconfig.deliver.gateway import validation_commands
    from hostconfig.deliver.push import SshTarget, push_files

    hc = json.loads((paths.STATE_DIR / "host_config.json").read_text())
    bundle = json.loads(files_json.read_text())
    files = [DesiredFile(path=f["path"], content=base64.b64decode(f["content_b64"]), mode=f["mode"],
                         secret=f["secret"]) for f in bundle["files"]]
    target = SshTarget(host=hc["gateway"]["public_ip"], host_public_key=hc["gateway"]["ssh_host_public_key"],
                       private_key=(OPS_DIR / "id_ed25519").read_text(), connect_deadline_seconds=120)
    # Activation is done by the lab controller afterwards (activate: ACTIVATION_ORDER, each step as the lab can do it):
    # the lab has no systemd to run the activation commands.
    report = push_files(target, files, validate=validation_commands(bgp="routing" in hc), activate=[],
                        secret_values=bundle["secret_values"])
    PUSH_REPORT.write_text(json.dumps(report.as_dict()))
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.gateway")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("push", help="runs in the operator namespace").add_argument("files", type=Path)
    # Runs where the lab's namespaces live (`lab exec root ...`): a reboot of the gateway's stack, in unit order.
    sub.add_parser("restart-stack")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.cmd == "restart-stack":
        order = restart_stack_like_boot(lambda line: print(line, flush=True))
        print("order: " + " ".join(order), flush=True)
        return 0
    return push(args.files)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
