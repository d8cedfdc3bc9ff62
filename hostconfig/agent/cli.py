"""`vpnctl`: reconcile, updown (the strongSwan hook), daemon (failover), status, metrics, doctor."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from .config import DEFAULT_CONFIG_PATH, AgentConfig, ConfigError, load_config
from .errors import AgentError

log = logging.getLogger(__name__)

UPDOWN_LOCK_TIMEOUT = 10.0
RECONCILE_LOCK_TIMEOUT = 30.0
# A daemon being restarted (systemd, or kill + start) may still hold its lock for a moment while it exits.
DAEMON_LOCK_WAIT_SECONDS = 15.0


def setup_logging(verbose: bool) -> None:
    # Plain lines on stderr: journald adds the timestamp and the unit name.
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("pyroute2").setLevel(logging.WARNING)
    logging.getLogger("asyncio").setLevel(logging.WARNING)


def one_shot_view(config: AgentConfig, kernel: Any, event: tuple[str, bool] | None, ask_vici: bool) -> Any:
    """Health view for reconcile/updown: a running daemon's, else charon's, else the kernel's current routes."""
    from .desired import ACTIVE_METRIC, TunnelView
    from .health import view_for_one_shot
    from .state import daemon_state_is_fresh, read_daemon_state
    from .status_contract import ContractError
    from .vici_client import ViciUnavailable, installed_tunnels, list_sas

    names = config.tunnel_names
    try:
        daemon = read_daemon_state(config.paths.state_dir)
    except ContractError as exc:
        log.info("%s: ignoring the daemon's state", exc)
        daemon = None
    daemon_view = None
    if daemon is not None and daemon_state_is_fresh(daemon):
        up = frozenset(n for n in daemon.up if n in names)
        daemon_view = TunnelView(up, daemon.active if daemon.active in up else None)
    vici_up = None
    if ask_vici and daemon_view is None:
        try:
            vici_up = installed_tunnels(config, list_sas(config.paths.vici_socket))
        except ViciUnavailable as exc:
            log.info("charon not reachable (%s): keeping the tunnels the kernel routes through", exc)
    own = config.ownership
    routed = {r.ifname: r.metric for r in kernel.read_routes(own.route_table)
              if r.protocol == own.route_protocol and r.type == "unicast"}
    kernel_up = frozenset(t.name for t in config.tunnels if t.interface in routed)
    kernel_active = next((t.name for t in config.tunnels if routed.get(t.interface) == ACTIVE_METRIC), None)
    return view_for_one_shot(names, config.primary_tunnel, daemon_view=daemon_view, vici_up=vici_up,
                             kernel_up=kernel_up, kernel_active=kernel_active, event=event)


def cmd_reconcile(config: AgentConfig, args: argparse.Namespace) -> int:
    from .kernel import Kernel
    from .reconcile import Reconciler
    from .state import reconcile_lock

    with reconcile_lock(config.paths.state_dir, RECONCILE_LOCK_TIMEOUT), Kernel() as kernel:
        view = one_shot_view(config, kernel, None, ask_vici=True)
        result = Reconciler(config, kernel, args.tunnel_links).run(view)
    if args.json:
        print(json.dumps({"up": sorted(view.up), "active": view.active, "changes": [str(c) for c in result.changes],
                          "problems": result.problems, "seconds": round(result.seconds, 4)}, indent=2))
    else:
        print(f"active {view.active or 'none'}, up {sorted(view.up)}: {len(result.changes)} change(s)")
        for change in result.changes:
            print(f"  {change}")
        for problem in result.problems:
            print(f"  problem: {problem}")
    return 0 if result.ok else 1


def cmd_updown(config: AgentConfig, args: argparse.Namespace) -> int:
    from .state import daemon_lock_held
    from .updown import UpdownInputError, parse_environment, record_event, tunnel_for_event

    try:
        event = parse_environment(os.environ)
    except UpdownInputError as exc:
        log.error("updown: %s", exc)
        return 2
    tunnel = tunnel_for_event(config, event)
    record_event(config, event, tunnel)
    what = f"updown: {event.verb} {event.connection} (tunnel {tunnel or 'unknown'})"
    if tunnel is None or not (event.is_up or event.is_down):
        log.info("%s", what)
        return 0
    # charon runs this hook synchronously, holding the SA and one of its threads, so every second here is a second
    # charon cannot answer the peer. With the daemon alive the hook stops here: the daemon sees the same event over
    # VICI and switches within one probe round. The lab found the cost of not stopping: a reconcile in the hook
    # (importing pyroute2 alone takes seconds on a slow VM) held charon 11-30 s after a double outage, both ends'
    # IKE_SA_INIT timed out, and a tunnel stayed down.
    if daemon_lock_held(config.paths.state_dir):
        log.info("%s: recorded; the failover daemon acts on it", what)
        return 0
    log.info("%s: no failover daemon running, reconciling here", what)
    from .kernel import Kernel  # pyroute2: only on this path
    from .reconcile import Reconciler
    from .state import LockTimeout, reconcile_lock

    try:
        with reconcile_lock(config.paths.state_dir, UPDOWN_LOCK_TIMEOUT), Kernel() as kernel:
            view = one_shot_view(config, kernel, (tunnel, event.is_up), ask_vici=False)
            result = Reconciler(config, kernel, args.tunnel_links).run(view)
    except LockTimeout as exc:
        # Never fail charon's hook because someone else reconciles: the event is recorded, the daemon's periodic
        # reconcile (or the lock holder) converges.
        log.warning("updown: reconcile skipped, %s", exc)
        return 0
    return 0 if result.ok else 1


def cmd_daemon(config: AgentConfig, args: argparse.Namespace) -> int:
    from .state import LockTimeout, acquire_daemon_lock

    try:
        lock = acquire_daemon_lock(config.paths.state_dir, DAEMON_LOCK_WAIT_SECONDS)
    except LockTimeout as exc:
        log.error("daemon: %s; one daemon per gateway (`systemctl status hybrid-vpn-failover`)", exc)
        return 1
    # The lock first, the heavy imports (pyroute2) after: from now on updown hooks leave the work to this daemon.
    from .daemon import FailoverDaemon

    try:
        FailoverDaemon(config, args.tunnel_links,
                       full_reconcile_seconds=args.full_reconcile_seconds).run(duration=args.duration)
    finally:
        os.close(lock)
    return 0


def cmd_status(config: AgentConfig, args: argparse.Namespace) -> int:
    from .status import gather_status, render_status

    status = gather_status(config)
    if args.json:
        sys.stdout.write(status.dumps())
    else:
        sys.stdout.write(render_status(status))
    return 0


def cmd_metrics(config: AgentConfig, args: argparse.Namespace) -> int:
    from .metrics import render_metrics, write_metrics
    from .state import daemon_state_is_fresh, read_daemon_state
    from .status_contract import ContractError

    try:
        state = read_daemon_state(config.paths.state_dir)
    except ContractError as exc:
        log.warning("%s: publishing every tunnel down", exc)
        state = None
    switches = state.switches_total if state is not None else 0
    if not daemon_state_is_fresh(state):
        state = None  # stale numbers would look healthy: publish only what we know (nothing up, no active tunnel)
    if args.write:
        write_metrics(config.paths.metrics_file, state, config.tunnel_names, switches)
    else:
        sys.stdout.write(render_metrics(state, config.tunnel_names, switches))
    return 0


def cmd_doctor(config: AgentConfig, args: argparse.Namespace) -> int:
    from .doctor import run

    return run(config, args)


def cmd_check_config(args: argparse.Namespace) -> int:
    """Parse FILE with the reader the daemon uses at start (delivery validates agent.json with this)."""
    try:
        config = load_config(args.file)
    except ConfigError as exc:
        print(f"vpnctl check-config: {exc}", file=sys.stderr)
        return 2
    print(f"{args.file}: ok ({len(config.tunnels)} tunnels, primary {config.primary_tunnel})")
    return 0


def build_parser(doctor_options: bool = True) -> argparse.ArgumentParser:
    """All sub-commands. doctor_options=False leaves the doctor's own options out, and its 1000-line module unloaded:
    the updown hook, which charon waits for, parses its arguments with that (0.5 s of 1.9 s in the lab's VM)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, default=DEFAULT_CONFIG_PATH,
                        help=f"agent configuration (default {DEFAULT_CONFIG_PATH})")
    common.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    links = argparse.ArgumentParser(add_help=False)
    links.add_argument("--tunnel-links", choices=("vti", "given"), default="vti",
                       help="vti (default): create the VTIs; given: use existing links of those names "
                            "(tests on kernels without ip_vti)")
    parser = argparse.ArgumentParser(prog="vpnctl",
                                     description="hybrid-vpn gateway agent (every sub-command takes --config)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("reconcile", parents=[common, links], help="converge links, routes, rule, sysctls, nftables")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_reconcile)
    p = sub.add_parser("updown", parents=[common, links], help="strongSwan updown hook (PLUTO_* in the environment)")
    p.set_defaults(func=cmd_updown)
    p = sub.add_parser("daemon", parents=[common, links], help="failover daemon (probes, VICI events)")
    p.add_argument("--duration", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument("--full-reconcile-seconds", type=float, default=30.0, metavar="S",
                   help="backstop: reconcile everything at least this often (default 30; changes by others are "
                        "repaired at once from netlink notifications)")
    p.set_defaults(func=cmd_daemon)
    p = sub.add_parser("status", parents=[common], help="tunnels, SAs, probes, active path, last switch")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("metrics", parents=[common], help="Prometheus textfile metrics (stdout, or --write)")
    p.add_argument("--write", action="store_true", help="write paths.metrics_file atomically instead")
    p.set_defaults(func=cmd_metrics)
    p = sub.add_parser("check-config", help="validate an agent configuration file the way the daemon reads it")
    p.add_argument("file", type=Path, metavar="FILE")
    p.set_defaults(func=None)
    p = sub.add_parser("doctor", parents=[common, links], help="read-only checks of everything the design needs "
                       "(--tunnel-links given: the links are not VTIs, their kind/ends/key are not checked)")
    if doctor_options:
        from .doctor import add_arguments as add_doctor_arguments

        add_doctor_arguments(p)
    p.set_defaults(func=cmd_doctor)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(doctor_options=argv[:1] != ["updown"]).parse_args(argv)
    if args.command == "check-config":
        return cmd_check_config(args)
    setup_logging(args.verbose)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"vpnctl: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        return args.func(config, args)
    except AgentError as exc:  # netlink, nftables, lock: one line, no traceback
        print(f"vpnctl {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
