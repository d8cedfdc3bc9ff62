"""The lab's verbs, run where the namespaces live (inside the VM, or on the host when its kernel can do VTI + ESP).

Every verb writes what the user sees to `out`/`err` (binary streams), so the VM backend can stream them back over
the RPC files and the user sees the same output with either backend.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from pathlib import Path
from typing import BinaryIO

from hostconfig import gateway_paths as gp
from lab import awspeer, gateway, paths, topology
from lab.addresses import LAB_PLAN
from lab.rpc import write_atomically
from lab.sh import HOSTS, netns_name, ns_prefix, run_in

log = logging.getLogger(__name__)

HOST_CONFIG_FILE = paths.STATE_DIR / "host_config.json"  # 0600: holds the PSKs
SA_DEADLINE_SECONDS = float(os.environ.get("HYBRID_VPN_LAB_SA_DEADLINE", "300"))


class Printer:
    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.t0 = time.monotonic()

    def __call__(self, msg: str) -> None:
        self.out.write(f"lab: [{time.monotonic() - self.t0:6.1f}s] {msg}\n".encode())
        self.out.flush()


def load_host_config() -> dict:
    try:
        return json.loads(HOST_CONFIG_FILE.read_text())
    except FileNotFoundError:
        raise RuntimeError("the lab is not up (no host_config): run `lab up`") from None


def is_up() -> bool:
    return HOST_CONFIG_FILE.exists()


def installed_children(host: str) -> set[str]:
    """Names of the CHILD_SAs in INSTALLED state on one side (parsed from `swanctl --list-sas --raw`)."""
    if host == "gw":
        proc = run_in("gw", ["swanctl", "--list-sas", "--raw"], check=False)
    else:
        proc = awspeer.swanctl(["--list-sas", "--raw"], check=False)
    names = set()
    for line in proc.stdout.splitlines():
        # raw format: list-sa event {tunnel1 {... child-sas {tunnel1-3 {name=tunnel1 ... state=INSTALLED ...}}}}
        for chunk in line.split("child-sas {")[1:]:
            for part in chunk.split("name=")[1:]:
                name = part.split()[0]
                state_at = part.find("state=")
                if state_at >= 0 and part[state_at + 6:].startswith("INSTALLED"):
                    names.add(name)
    return names


def up(out: BinaryIO, err: BinaryIO, operator_dir: Path | None) -> int:
    say = Printer(out)
    if is_up():
        say("the lab is already up (`lab status`; `lab down` to start again)")
        return 0
    if operator_dir is None:
        err.write(b"lab up: no operator directory (the program's and renderer's output): start it with `lab up`\n")
        return 2
    paths.STATE_DIR.mkdir(parents=True, exist_ok=True)
    try:
        return _up(say, out, operator_dir)
    except Exception as exc:
        err.write(f"lab up failed: {exc}\n".encode())
        err.write(b"lab: logs of the lab's processes are in " + str(paths.STATE_DIR / "logs").encode() +
                  b" (`lab exec gw cat /var/log/charon.log`); `lab down` removes everything\n")
        return 1


def _up(say: Printer, out: BinaryIO, operator_dir: Path) -> int:
    plan = LAB_PLAN
    say(f"kernel {os.uname().release}: loading VTI/ESP/crypto modules (in the background)")
    modprobe = topology.start_preloading_modules()
    say("network namespaces: vlan, gw, nat (1:1 NAT), inet, aws, vpc, ops")
    topology.create_underlay(plan)
    say(f"gateway: own mount namespace (tmpfs over {', '.join(topology.GW_PRIVATE_DIRS)})")
    topology.create_gw_mount_namespace()
    operator_key = gateway.make_operator_key()
    host_config, host_private_key = gateway.host_config(operator_dir, say)
    host_key = topology.start_gw_sshd(plan, operator_key.public, host_private_key)
    say(f"gateway: sshd listening on {plan.gateway_private_ip}:22 (reached as {plan.gateway_public_ip} through the "
        "NAT), host key " + host_key.split()[1][:16] + "...")
    modprobe.wait()
    topology.start_gw_charon()
    say(f"gateway: charon running (VICI {gp.VICI_SOCKET})")
    HOST_CONFIG_FILE.touch(mode=0o600)
    write_atomically(HOST_CONFIG_FILE, json.dumps(host_config).encode())
    os.chmod(HOST_CONFIG_FILE, 0o600)
    awspeer.start(host_config)
    say(f"AWS side: charon + VTIs for {', '.join(t['name'] for t in host_config['tunnels'])}, "
        f"prefers {host_config['tunnels'][0]['name']}")
    gateway.configure(operator_dir, say)
    t0 = time.monotonic()
    want = {t["name"] for t in host_config["tunnels"]}
    topology.wait_for(lambda: want <= installed_children("gw"), SA_DEADLINE_SECONDS, "both CHILD_SAs installed")
    say(f"both tunnels up ({time.monotonic() - t0:.1f} s after the gateway config was loaded)")
    vpc_ip = plan.vpc_host_ip
    t0 = time.monotonic()
    try:
        topology.wait_for(lambda: run_in("vlan", ["ping", "-c", "1", "-W", "1", vpc_ip], check=False).returncode == 0,
                          120, f"a first ping VLAN host -> VPC host {vpc_ip}", interval=0.1)
    except TimeoutError:
        drops = [line.strip() for line in run_in("gw", ["nft", "list", "ruleset"], check=False).stdout.splitlines()
                 if "drop" in line and "packets" in line and " packets 0 " not in line]
        if drops:
            say("the tunnels are up but the gateway's nftables dropped packets: " + " | ".join(drops))
        raise
    say(f"first packet through: VLAN host {plan.vlan_host_ip} -> VPC host {vpc_ip} "
        f"({time.monotonic() - t0:.1f} s after the tunnels came up)")
    status(out, out)
    out.write(f"\n$ lab exec vlan ping -c 3 {vpc_ip}\n".encode())
    out.flush()
    subprocess.run(ns_prefix("vlan") + ["ping", "-c", "3", "-i", "0.3", vpc_ip], stdout=out, stderr=out, check=False)
    say("lab is up: try `lab status`, `lab exec gw ip route show table all`, `lab break tunnel1`, `lab down`")
    return 0


def down(out: BinaryIO) -> int:
    say = Printer(out)
    removed = topology.destroy()
    say(f"removed: {', '.join(removed) if removed else 'nothing (the lab was not up)'}")
    return 0


def status(out: BinaryIO, err: BinaryIO) -> int:
    if not is_up():
        out.write(b"lab: down\n")
        return 3
    hc = load_host_config()
    w = out.write
    w(f"lab: up ({'VM' if os.environ.get('HYBRID_VPN_LAB_IN_VM') else 'host kernel'}, {os.uname().release})\n".encode())
    w(("hosts: " + ", ".join(f"{h} ({netns_name(h)})" for h in HOSTS) + "\n").encode())
    w(b"\n== gateway: ")
    out.flush()
    gateway.status(out, err)
    w(b"\n== AWS side (emulated)\n")
    try:
        mon = json.loads(awspeer.MONITOR_STATUS.read_text())
        for t in hc["tunnels"]:
            name = t["name"]
            tun = mon["tunnels"][name]
            w(f"  {name}: outside {t['outside_ip']}  IKE_SA {tun['ike']:11}  CHILD_SA {tun['child']:9}  "
              f"{'UP' if tun['up'] else 'DOWN'}\n".encode())
        cidrs = ", ".join(hc["linode"]["vlan_cidrs"])
        if mon.get("mode") == "bgp":
            _aws_bgp_status(hc, mon, out)
            cidrs = ""
        pending = mon["prefer_pending"]
        pending = f"; `lab prefer {pending}` pending (that tunnel is not UP)" if pending else ""
        if cidrs:
            w(f"  sends to {cidrs} on {mon['sending'] or 'no tunnel (none UP)'} (sticky, moves only when it is DOWN "
              f"by IKE){pending}\n".encode())
    except FileNotFoundError:
        w(b"  route monitor has not reported yet\n")
    maintenance = awspeer.in_maintenance()
    if maintenance:
        w(f"  endpoint in maintenance (`lab maintenance`): {', '.join(maintenance)}\n".encode())
    breaks = [t["name"] for t in hc["tunnels"] if _break_table(t["name"]) in _inet_tables()]
    if breaks:
        w(f"  broken by `lab break`: {', '.join(breaks)}\n".encode())
    out.flush()
    return 0


def _aws_bgp_status(hc: dict, mon: dict, out: BinaryIO) -> None:
    """The AWS side's bgpd (routing.mode bgp): each tunnel's session, and where the kernel sends the VLAN CIDRs."""
    asn, customer = hc["routing"]["amazon_side_asn"], hc["routing"]["customer_asn"]
    for t in hc["tunnels"]:
        state = mon.get("bgp", {}).get(t["gateway_inside_ip"], "not configured")
        out.write(f"  {t['name']}: BGP (AS {asn}) neighbor {t['gateway_inside_ip']} (AS {customer}) {state}\n".encode())
    egress = ", ".join(f"{c} via {dev or 'no route'}" for c, dev in mon.get("egress", {}).items())
    routes = ", ".join(f"{p} dev {dev}" for p, dev in sorted(mon.get("routes", {}).items())) or "none"
    out.write(f"  sends to {egress} on {mon['sending'] or 'no tunnel'} (bgpd's best path, installed by zebra); "
              f"BGP routes in its kernel: {routes}\n".encode())


def exec_(host: str, argv: list[str], out: BinaryIO, err: BinaryIO) -> int:
    if not argv:
        err.write(b"usage: lab exec <host> <command...>\n")
        return 2
    if host == "root":  # the machine the namespaces live in (the VM, or the host): for debugging the lab itself
        try:
            return subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err).returncode
        except FileNotFoundError as exc:
            err.write(f"lab exec: {exc}\n".encode())
            return 127
    if host not in HOSTS:
        err.write(f"lab exec: unknown host {host!r}; hosts: {', '.join(HOSTS)}\n".encode())
        return 2
    if not is_up():
        err.write(b"lab exec: the lab is not up (run `lab up`)\n")
        return 3
    try:
        return subprocess.run(ns_prefix(host) + argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err).returncode
    except FileNotFoundError as exc:
        err.write(f"lab exec: {exc}\n".encode())
        return 127


def _break_table(tunnel: str) -> str:
    return f"lab_break_{tunnel}"


def _inet_tables() -> str:
    return run_in("inet", ["nft", "list", "tables"], check=False).stdout


def _tunnel(name: str) -> dict:
    hc = load_host_config()
    for t in hc["tunnels"]:
        if t["name"] == name:
            return t
    raise ValueError(f"unknown tunnel {name!r}: expected one of {', '.join(t['name'] for t in hc['tunnels'])}")


def break_(tunnel: str, out: BinaryIO) -> int:
    """Cut the tunnel's underlay on the 'internet' between the gateway and AWS: IKE and ESP both vanish."""
    t = _tunnel(tunnel)
    table = _break_table(tunnel)
    run_in("inet", ["nft", "-f", "-"], input=f"""
table inet {table} {{
    chain forward {{
        type filter hook forward priority -10;
        ip daddr {t['outside_ip']} drop
        ip saddr {t['outside_ip']} drop
    }}
}}
""")
    out.write(f"lab: {tunnel} broken (all packets to/from {t['outside_ip']} dropped on the internet path; lab clock "
              f"{time.time():.3f})\n".encode())
    return 0


def heal(tunnel: str, out: BinaryIO) -> int:
    _tunnel(tunnel)
    table = _break_table(tunnel)
    if table in _inet_tables():
        run_in("inet", ["nft", "delete", "table", "inet", table])
    out.write(f"lab: {tunnel} healed (lab clock {time.time():.3f})\n".encode())
    return 0


def prefer(tunnel: str, out: BinaryIO) -> int:
    hc = load_host_config()
    awspeer.set_preference(tunnel, [t["name"] for t in hc["tunnels"]])
    if "routing" in hc:
        out.write(b"lab: routing.mode bgp: the AWS side follows BGP (the gateway's advertisements), not `lab prefer`; "
                  b"the request is ignored\n")
        return 0
    out.write(f"lab: the AWS side sends towards the VLAN on {tunnel} as soon as that tunnel is UP (at once if it is), "
              "then stays there (sticky) until it goes DOWN\n".encode())
    return 0


MAINTENANCE_USAGE = "usage: lab maintenance <tunnel> [seconds (default 60)] [--no-delete]"


def maintenance(args: list[str], out: BinaryIO, err: BinaryIO) -> int:
    """`lab maintenance tunnelN [seconds] [--no-delete]`: an AWS tunnel endpoint replacement (lab/awspeer.py)."""
    with_delete = "--no-delete" not in args
    rest = [a for a in args if a != "--no-delete"]
    if not 1 <= len(rest) <= 2:
        err.write(f"{MAINTENANCE_USAGE}\n".encode())
        return 2
    try:
        seconds = float(rest[1]) if len(rest) == 2 else 60.0
    except ValueError:
        err.write(f"lab maintenance: seconds must be a number, e.g. 60 (got {rest[1]!r})\n".encode())
        return 2
    awspeer.maintenance(load_host_config(), rest[0], seconds, with_delete, Printer(out))
    return 0


def restart(component: str, out: BinaryIO) -> int:
    """Restart a gateway component as systemd would (`lab restart charon|agent|frr`)."""
    if component == "charon":
        topology.restart_gw_charon()
    elif component == "agent":
        gateway.restart_agent()
    elif component == "frr" and gateway.bgp_mode():
        gateway.restart_frr()  # `systemctl restart frr`: zebra + bgpd, then vtysh -b applies frr.conf
    else:
        raise ValueError(f"unknown component {component!r}: expected charon, agent or (routing.mode bgp) frr")
    out.write(f"lab: gateway {component} restarted\n".encode())
    return 0


def lifetimes(mode: str, out: BinaryIO) -> int:
    """Short lifetimes on both charons for the rekey tests, or back to the rendered ones (lab/lifetimes.py)."""
    from lab import lifetimes as lifetimes_knob

    lifetimes_knob.apply(mode, Printer(out))
    return 0


def dispatch(verb: str, args: list[str], out: BinaryIO, err: BinaryIO) -> int:
    """One entry point for both backends (the CLI in-process, or the guest controller over RPC)."""
    try:
        if verb == "up":
            return up(out, err, Path(args[0]) if args else None)
        if verb in ("down", "shutdown"):
            return down(out)
        if verb == "status":
            return status(out, err)
        if verb == "exec":
            return exec_(args[0] if args else "", args[1:], out, err)
        if verb == "maintenance":
            if not is_up():
                err.write(b"lab maintenance: the lab is not up (run `lab up`)\n")
                return 3
            return maintenance(args, out, err)
        if verb in ("break", "heal", "prefer", "restart", "lifetimes"):
            if len(args) != 1:
                what = {"restart": "charon|agent|frr", "lifetimes": "short|normal"}.get(verb, "tunnel")
                err.write(f"usage: lab {verb} <{what}>\n".encode())
                return 2
            if not is_up():
                err.write(f"lab {verb}: the lab is not up (run `lab up`)\n".encode())
                return 3
            return {"break": break_, "heal": heal, "prefer": prefer, "restart": restart,
                    "lifetimes": lifetimes}[verb](args[0], out)
    except (ValueError, RuntimeError, TimeoutError) as exc:
        err.write(f"lab {verb}: {exc}\n".encode())
        return 1
    err.write(f"lab: unknown verb {verb!r}\n".encode())
    return 2
