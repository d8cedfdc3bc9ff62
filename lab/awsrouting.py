"""Which tunnel the emulated AWS side sends on towards the VLAN, decided from IKE state only.

AWS, with static routing and both tunnels UP, sends on ONE tunnel of its choice ("randomly"), sticky; it accepts on
both, and moves its return traffic off a tunnel only when that tunnel is DOWN by IKE (DPD timeout, an IKE DELETE, a
replaced endpoint): aws-vpn-facts.md, "How AWS notices a dead tunnel". Here a tunnel is UP while charon has an
ESTABLISHED IKE_SA with an INSTALLED CHILD_SA for it; charon's VICI events (ike-updown, child-updown) wake the loop and
`list-sas` is the truth. Nothing is probed inside the tunnels.

Sticky, as AWS: after a move AWS stays on the new tunnel when the old one comes back. The lab replaces AWS's random
pick with a deterministic one so tests and benchmarks know which case they measure: `lab prefer tunnelN` asks for a
tunnel, the request applies as soon as that tunnel is UP (at once if it is), and is then spent. Runs inside the aws
namespace: `python -m lab.awsrouting <monitor.json>`.

In routing.mode bgp nothing here chooses a route: the AWS side's real bgpd picks (longest prefix, then AS path length,
then MED) and zebra installs its pick towards a VTI. The monitor then only reports: which VTI the kernel sends each
VLAN CIDR on (`ip route get`), the BGP routes in the kernel, and bgpd's session states; and it does the one thing AWS
does with BGP when IKE declares a tunnel DOWN: that tunnel's BGP routes are withdrawn at once (``vti_link_commands``).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import vici

from hostconfig.agent.vici_client import parse_ike_sas
from lab.rpc import write_atomically

log = logging.getLogger(__name__)

RECHECK_SECONDS = 2.0  # list-sas at least this often even without events (a missed event costs at most this)
BGP_RECHECK_SECONDS = 1.0  # bgp mode: zebra moves the routes without an event here; the status follows within this
ROUTE_METRIC = 100


@dataclass(frozen=True)
class Choice:
    sending: str | None  # the tunnel AWS sends on, None while no tunnel is UP
    request: str | None  # a `lab prefer` request not applied yet (its tunnel is not UP)


def choose_sending_tunnel(current: str | None, up: list[str], request: str | None) -> Choice:
    """AWS's pick: a pending preference once its tunnel is UP; else stay on the current tunnel while it is UP; else
    the first UP tunnel (in the connection's order). Never a move away from an UP tunnel without a request."""
    if request is not None and request in up:
        return Choice(request, None)
    if current in up:
        return Choice(current, request)
    return Choice(up[0] if up else None, request)


def tunnels_up(list_sas_events: list[dict]) -> dict[str, dict[str, str]]:
    """tunnel -> {'ike': best IKE state, 'child': best CHILD state} from VICI list-sa events."""
    rank = {"ESTABLISHED": 3, "INSTALLED": 3, "REKEYING": 2, "REKEYED": 1}
    out: dict[str, dict[str, str]] = {}
    for event in list_sas_events:
        for ike in parse_ike_sas(event):
            entry = out.setdefault(ike.name, {"ike": "none", "child": "none"})
            if rank.get(ike.state, 0) > rank.get(entry["ike"], 0) or entry["ike"] == "none":
                entry["ike"] = ike.state
            if ike.state != "ESTABLISHED":
                continue
            for child in ike.children:
                if child.name == ike.name and (rank.get(child.state, 0) > rank.get(entry["child"], 0)
                                               or entry["child"] == "none"):
                    entry["child"] = child.state
    return out


def is_up(state: dict[str, str] | None) -> bool:
    return bool(state) and state["ike"] == "ESTABLISHED" and state["child"] == "INSTALLED"


def route_commands(vlan_cidrs: list[str], want: str | None, have: str | None) -> list[str]:
    """`ip -b` lines moving the VLAN routes from VTI `have` to VTI `want` (add first: no moment without a route)."""
    if want == have:
        return []
    cmds = [f"route replace {c} dev {want} metric {ROUTE_METRIC}" for c in vlan_cidrs] if want else []
    if have:
        cmds += [f"route del {c} dev {have} metric {ROUTE_METRIC}" for c in vlan_cidrs]
    return cmds


def vti_link_commands(vti_of: dict[str, str], up: dict[str, bool], link_up: dict[str, bool]) -> list[str]:
    """bgp mode: `ip -b` lines that keep each tunnel's VTI up exactly while the tunnel is UP by IKE (``link_up``: the
    state last set, {} at start). AWS withdraws a tunnel's BGP routes the moment its DPD or an IKE DELETE declares the
    tunnel DOWN (aws-vpn-facts.md); a VTI going down makes the AWS side's bgpd drop that session at once (its
    fast-external-failover, FRR's default, for a directly connected eBGP peer) and zebra remove the routes through it,
    instead of their lasting until the BGP hold timer (30 s). Up again once IKE is: bgpd reconnects when the peer's
    address is reachable again, without waiting for its connect-retry timer."""
    return [f"link set {vti_of[name]} {'up' if want else 'down'}"
            for name, want in up.items() if link_up.get(name) != want]


def probe_address(cidr: str) -> str:
    """An address inside ``cidr`` to ask the kernel about (its first host: inside the lower more-specific half too)."""
    return str(ipaddress.ip_network(cidr).network_address + 1)


def kernel_egress(address: str) -> str | None:
    """The link the kernel sends ``address`` on here, None without a route."""
    got = subprocess.run(["ip", "-4", "route", "get", address], capture_output=True, text=True, check=False)
    words = got.stdout.split() if got.returncode == 0 else []
    return words[words.index("dev") + 1] if "dev" in words else None


def bgp_view(vlan_cidrs: list[str], vti_of: dict[str, str], vty_socket: str) -> dict:
    """What bgpd and the kernel decided, in bgp mode: the tunnel the kernel sends towards the VLAN on, the BGP routes
    installed (prefix -> VTI) and bgpd's neighbor states (address -> state; {} when bgpd does not answer)."""
    from hostconfig.agent.frr import BgpdVty, FrrError, neighbor_states

    tunnel_of = {vti: name for name, vti in vti_of.items()}
    egress = {c: kernel_egress(probe_address(c)) for c in vlan_cidrs}
    got = subprocess.run(["ip", "-j", "-4", "route", "show", "proto", "bgp"], capture_output=True, text=True,
                         check=False)
    routes = {r["dst"]: r.get("dev", "") for r in json.loads(got.stdout or "[]")} if got.returncode == 0 else {}
    try:
        # bgpd's socket, not a vtysh process: one of those costs ~2 s of CPU in the lab's TCG VM, every second here
        sessions = neighbor_states(BgpdVty(vty_socket=vty_socket))
    except FrrError as exc:
        log.warning("AWS bgpd: %s", exc)
        sessions = {}
    sending = tunnel_of.get(egress[vlan_cidrs[0]] or "") if vlan_cidrs else None
    return {"sending": sending, "egress": egress, "routes": routes, "bgp": sessions}


def _session(path: str) -> vici.Session:
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(10)
    sock.connect(path)
    return vici.Session(sock)


def _listen(path: str, wake: threading.Event) -> None:
    """Wake the loop on every ike-updown / child-updown (reconnects while charon restarts)."""
    while True:
        try:
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(path)
            for _ in vici.Session(sock).listen(["ike-updown", "child-updown", "ike-rekey", "child-rekey"]):
                wake.set()
        except (OSError, vici.exception.SessionException) as exc:
            log.warning("VICI event stream: %s (retrying)", exc)
        time.sleep(1)


def _read_request(prefer_file: Path) -> str | None:
    try:
        return prefer_file.read_text().strip() or None
    except FileNotFoundError:
        return None


def monitor(conf_path: Path) -> None:
    conf = json.loads(conf_path.read_text())
    tunnels, vlan_cidrs = conf["tunnels"], conf["vlan_cidrs"]
    vti_of = {t["name"]: t["vti"] for t in tunnels}
    order = [t["name"] for t in tunnels]
    prefer_file, status_file = Path(conf["prefer"]), Path(conf["status"])
    wake = threading.Event()
    threading.Thread(target=_listen, args=(conf["vici"], wake), daemon=True).start()
    session = None
    sending: str | None = None
    states: dict[str, dict[str, str]] = {}
    changed_at: dict[str, float] = {}
    moved_at: float | None = None
    link_up: dict[str, bool] = {}  # bgp mode: each VTI's link state as last set (vti_link_commands)
    while True:
        wake.wait(BGP_RECHECK_SECONDS if conf.get("bgp_vty_socket") else RECHECK_SECONDS)
        wake.clear()
        try:
            session = session or _session(conf["vici"])
            new_states = tunnels_up(list(session.list_sas()))
        except (OSError, vici.exception.SessionException) as exc:
            log.warning("VICI list-sas: %s", exc)
            session = None
            continue
        for name in order:
            if is_up(new_states.get(name)) != is_up(states.get(name)) or name not in changed_at:
                changed_at[name] = time.time()
                log.warning("%s is %s (IKE %s, CHILD %s)", name, "UP" if is_up(new_states.get(name)) else "DOWN",
                            new_states.get(name, {}).get("ike", "none"), new_states.get(name, {}).get("child", "none"))
        states = new_states
        tunnel_status = {n: {**states.get(n, {"ike": "none", "child": "none"}), "up": is_up(states.get(n)),
                             "since": changed_at[n]} for n in order}
        if conf.get("bgp_vty_socket"):
            up = {n: is_up(states.get(n)) for n in order}
            links = vti_link_commands(vti_of, up, link_up)
            if links:
                subprocess.run(["ip", "-b", "-"], input="\n".join(links) + "\n", text=True, check=False)
                log.warning("BGP on the tunnels follows IKE (AWS withdraws a DOWN tunnel's routes): %s (lab clock "
                            "%.3f)", "; ".join(links), time.time())
                link_up = up
            view = bgp_view(vlan_cidrs, vti_of, conf["bgp_vty_socket"])
            if view["sending"] != sending:
                moved_at = time.time()
                log.warning("AWS (bgpd's best path) now sends to %s on %s (was %s)", ",".join(vlan_cidrs),
                            view["sending"] or "no tunnel", sending or "none")
            sending = view["sending"]
            write_atomically(status_file, json.dumps({**view, "mode": "bgp", "prefer_pending": None,
                                                      "time": time.time(), "moved_at": moved_at,
                                                      "tunnels": tunnel_status}).encode())
            continue
        request = _read_request(prefer_file)
        choice = choose_sending_tunnel(sending, [n for n in order if is_up(states.get(n))], request)
        if request is not None and choice.request is None:
            prefer_file.unlink(missing_ok=True)  # applied: spent
        cmds = route_commands(vlan_cidrs, vti_of.get(choice.sending or ""), vti_of.get(sending or ""))
        if cmds:
            subprocess.run(["ip", "-b", "-"], input="\n".join(cmds) + "\n", text=True, check=False)
        if choice.sending != sending:
            moved_at = time.time()
            log.warning("AWS now sends to %s on %s (was %s)", ",".join(vlan_cidrs), choice.sending or "no tunnel",
                        sending or "none")
        sending = choice.sending
        status = {"mode": "static", "sending": sending, "prefer_pending": choice.request, "time": time.time(),
                  "moved_at": moved_at, "routes": {vti_of[sending]: ROUTE_METRIC} if sending else {},
                  "tunnels": tunnel_status}
        write_atomically(status_file, json.dumps(status).encode())


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if len(argv) != 1:
        print("usage: python -m lab.awsrouting <monitor.json>", file=sys.stderr)
        return 2
    monitor(Path(argv[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
