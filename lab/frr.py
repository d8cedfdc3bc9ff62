"""Real FRR (Debian's zebra + bgpd) in the lab: how a daemon is started outside systemd, and the emulated AWS side's
bgpd configuration. Shared with the netns tests (tests/frr_testlib.py), so the lab's AWS and the tests' AWS are one.

AWS's BGP facts (../shared/aws-vpn-facts.md): Amazon-side ASN (default 64512), keepalive 10 s / hold 30 s, no ECMP on
a virtual private gateway, at most 100 routes from the customer gateway (the session goes down beyond that). Route
priority among BGP routes is bgpd's own best-path selection (longest prefix in the kernel FIB, then AS path length,
then MED): nothing here chooses a route.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from hostconfig import gateway_paths as gp

log = logging.getLogger(__name__)

FRR_DAEMONS_DIR = Path(gp.FRR_BGPD).parent
FRR_USER = "frr"  # the daemons drop to it (root is not in the frrvty group their vty sockets need)
AWS_KEEPALIVE_SECONDS = 10
AWS_HOLD_SECONDS = 30
AWS_MAX_ROUTES_FROM_CUSTOMER = 100  # aws-vpn-facts.md "Limits": from the customer gateway to a VGW


def daemon_argv(name: str, run_dir: str | None = None, conf: str | None = None, extra: Sequence[str] = ()) -> list[str]:
    """argv of one FRR daemon in the foreground, no TCP vty (-P 0). ``run_dir``: its pid file, vty socket and zserv
    socket (None: FRR's defaults under /run/frr, as frr.service has them); ``conf``: a config file (None: FRR's own
    default, and the config comes from `vtysh -b` as frr.service applies an integrated frr.conf)."""
    argv = [str(FRR_DAEMONS_DIR / name), "-u", FRR_USER, "-g", FRR_USER, "-P", "0"]
    if run_dir is not None:
        argv += ["-z", f"{run_dir}/zserv.api", "-i", f"{run_dir}/{name}.pid", "--vty_socket", run_dir]
    if conf is not None:
        argv += ["-f", conf]
    return [*argv, *extra]


def answers_argv(daemon: str, vty_socket: str | None = None) -> list[str]:
    """vtysh asking one daemon for its version: exits 0 only once that daemon listens on its vty socket.

    Not the socket file's existence: FRR 8.4 leaves it behind when a daemon exits (SIGTERM), so after a stop `test -S`
    passes at once, and a `vtysh -b` run then configures only the daemons that answer and still exits 0. Measured on
    the host (netns, bench/bgp_restart_bench.py): the restarted bgpd got no config and both sessions stayed down for
    200 s; waiting for the answer, both were Established again ~5 s after the restart."""
    return [gp.VTYSH, *(["--vty_socket", vty_socket] if vty_socket else []), "-d", daemon, "-c", "show version"]


def enabled_daemons(daemons_file: str) -> list[str]:
    """zebra, then every daemon ``/etc/frr/daemons`` sets to yes (frrinit.sh's reading of that file)."""
    wanted = ["zebra"]
    for line in daemons_file.splitlines():
        key, _, value = line.strip().partition("=")
        if value.strip().strip('"') == "yes" and (FRR_DAEMONS_DIR / key).exists() and key not in wanted:
            wanted.append(key)
    return wanted


def aws_bgpd_conf(*, amazon_asn: int, customer_asn: int, router_id: str, neighbors: Sequence[str],
                  networks: Sequence[str], max_prefix: int = AWS_MAX_ROUTES_FROM_CUSTOMER) -> str:
    """The AWS end: one neighbor per tunnel at the gateway's inside address, AWS's timers, its CIDRs advertised,
    ``maximum-paths 1`` (a VGW does not ECMP) and AWS's route limit per neighbor (exceeded: session down)."""
    peers = "".join(f" neighbor {n} remote-as {customer_asn}\n"
                    f" neighbor {n} timers {AWS_KEEPALIVE_SECONDS} {AWS_HOLD_SECONDS}\n" for n in neighbors)
    activate = "".join(f"  neighbor {n} activate\n  neighbor {n} maximum-prefix {max_prefix}\n" for n in neighbors)
    nets = "".join(f"  network {c}\n" for c in networks)
    return (f"frr defaults traditional\nhostname aws\nrouter bgp {amazon_asn}\n"
            f" bgp router-id {router_id}\n no bgp ebgp-requires-policy\n"
            " no bgp default ipv4-unicast\n no bgp network import-check\n"
            f" timers bgp {AWS_KEEPALIVE_SECONDS} {AWS_HOLD_SECONDS}\n"
            f"{peers} address-family ipv4 unicast\n{nets}  maximum-paths 1\n"
            f"{activate} exit-address-family\nexit\n")
