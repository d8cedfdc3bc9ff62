"""Two one-way UDP streams through the VPN, one per direction, each timed where it arrives.

A round-trip ping cannot tell the directions apart: a reply lost on the way back looks like a request lost on the way
out, and during a failover the two directions really are out for different times (AWS moves its return traffic only
when its DPD declares the tunnel dead; the gateway moves at its probes' pace). So:

- the VLAN host sends `rate` numbered datagrams per second to the VPC host (gateway -> AWS, timed at the VPC host);
- the VPC host, from the first datagram on, sends its own numbered stream back to that address (AWS -> gateway, timed
  at the VLAN host). It is the reply direction of the same UDP flow, so the gateway's stateful firewall passes it.

Both ends run in the lab's namespaces of one kernel, so their `time.time()` is one clock, the clock `lab break` /
`lab maintenance` print. Run where the namespaces live (`lab exec root`): `python -m lab.flows run SECONDS [RATE]`
prints a line (STARTED) once both streams run, then one JSON object: per direction sent, received and the gaps
(> GAP_REPORT_SECONDS) with their start/end times.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from lab.addresses import LAB_PLAN
from lab.sh import ns_prefix

PORT = 40404
GAP_REPORT_SECONDS = 0.3
SETTLE_SECONDS = 5.0
STARTED = "flows: both streams running"  # the VPC side listens this long after the VLAN side stops, for late datagrams


@dataclass(frozen=True)
class Direction:
    sent: int
    received: int
    first: float | None
    last: float | None
    gaps: list[tuple[float, float]]  # (last arrival before, first arrival after), lab clock, longest first; a stream
    # that never came back ends its last gap at the sender's last datagram

    @property
    def longest_gap(self) -> float:
        return max((b - a for a, b in self.gaps), default=0.0)


def summarize(sent: int, arrivals: dict[int, float], gap_report: float = GAP_REPORT_SECONDS,
              sent_span: tuple[float, float] | None = None) -> Direction:
    """Gaps between consecutive arrivals (by arrival time: the blackout as the receiver lives it).

    `sent_span` is (first, last) datagram's send time: a blackout that lasted to the end of the stream is a gap from
    the last arrival (or the first send, when nothing arrived) to the last send, not "no outage"."""
    times = sorted(arrivals.values())
    edges = times
    if sent_span is not None:
        first_sent, last_sent = sent_span
        edges = [first_sent, last_sent] if not times else times + ([last_sent] if last_sent > times[-1] else [])
    gaps = sorted(((a, b) for a, b in zip(edges, edges[1:], strict=False) if b - a > gap_report),
                  key=lambda g: g[0] - g[1])
    return Direction(sent, len(arrivals), times[0] if times else None, times[-1] if times else None, gaps)


def outage_around(direction: Direction, at: float, slack: float = 1.0) -> float | None:
    """The blackout that covers the event at lab-clock time `at` (its gap starts at most `slack` s after it): its
    length, or None when no gap covers it (no outage at all)."""
    for a, b in direction.gaps:
        if a <= at + slack and b >= at:
            return b - a
    return None


def _send_loop(sock: socket.socket, dst: tuple[str, int] | None, seconds: float, rate: int, arrivals: dict[int, float],
               wait_first: bool, listen_extra: float = 0.0, started: Path | None = None) -> tuple[int, list[float]]:
    """Send `rate`/s numbered datagrams for `seconds` (then listen `listen_extra` s more) while recording arrivals;
    returns how many were sent and the send times of the first and the last (lab clock)."""
    interval, seq = 1.0 / rate, 0
    span: list[float] = []
    sock.settimeout(0.005)
    start = time.monotonic()
    end = start + seconds
    next_send = start
    give_up = start + seconds + 120  # the other side never sent anything
    while time.monotonic() < end + listen_extra or (wait_first and dst is None and time.monotonic() < give_up):
        now = time.monotonic()
        if dst is not None and now >= next_send and now < end:
            try:
                sock.sendto(f"{seq}".encode(), dst)
            except OSError:
                pass  # no route (both tunnels down: the gateway's unreachable route answers): a loss like any other
            sent_at = time.time()
            span = [span[0] if span else sent_at, sent_at]
            seq += 1
            next_send += interval
        try:
            data, src = sock.recvfrom(64)
            arrivals.setdefault(int(data), time.time())
            if wait_first and dst is None:
                dst = src
                if started is not None:
                    started.touch()
                start = time.monotonic()
                end, next_send = start + seconds, start
        except (TimeoutError, ValueError, OSError):
            pass
    return seq, span


def peer(seconds: float, rate: int, out: Path) -> None:
    """At the VPC host: time the gateway -> AWS stream, send the AWS -> gateway stream to whoever sent it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", PORT))
    arrivals: dict[int, float] = {}
    # stops sending a second before the VLAN side stops listening, so the tail of its stream is not counted as lost
    sent, span = _send_loop(sock, None, max(seconds - 1.0, 0.0), rate, arrivals, wait_first=True,
                            listen_extra=SETTLE_SECONDS + 1.0, started=out.with_suffix(".started"))
    out.write_text(json.dumps({"sent": sent, "span": span, "arrivals": arrivals}))


def client(seconds: float, rate: int, out: Path) -> None:
    """At the VLAN host: send the gateway -> AWS stream, time the AWS -> gateway one."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    arrivals: dict[int, float] = {}
    sent, span = _send_loop(sock, (LAB_PLAN.vpc_host_ip, PORT), seconds, rate, arrivals, wait_first=False)
    out.write_text(json.dumps({"sent": sent, "span": span, "arrivals": arrivals}))


def run(seconds: float, rate: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="hvlab-flows-") as tmp:
        peer_out, client_out = Path(tmp) / "peer.json", Path(tmp) / "client.json"
        me = [sys.executable, "-m", "lab.flows"]
        vpc = subprocess.Popen(ns_prefix("vpc") + me + ["peer", str(seconds), str(rate), str(peer_out)])
        time.sleep(1.0)  # the VPC side's socket is bound before the first datagram (pacing, not an assertion)
        vlan = subprocess.Popen(ns_prefix("vlan") + me + ["client", str(seconds), str(rate), str(client_out)])
        deadline = time.monotonic() + 120
        while not peer_out.with_suffix(".started").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        print(STARTED, flush=True)  # both streams run: the caller may inject its fault now
        if vlan.wait(timeout=seconds + 180) != 0:
            raise RuntimeError("the VLAN side of the flows failed")
        vpc.wait(timeout=seconds + 120)
        at_vpc = json.loads(peer_out.read_text())
        at_vlan = json.loads(client_out.read_text())
    to_aws = summarize(at_vlan["sent"], {int(k): v for k, v in at_vpc["arrivals"].items()},
                       sent_span=_span(at_vlan["span"]))
    to_gw = summarize(at_vpc["sent"], {int(k): v for k, v in at_vlan["arrivals"].items()},
                      sent_span=_span(at_vpc["span"]))
    return {"gateway_to_aws": asdict(to_aws), "aws_to_gateway": asdict(to_gw), "rate": rate}


def _span(times: list[float]) -> tuple[float, float] | None:
    return (times[0], times[-1]) if times else None


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "run":
        print(json.dumps(run(float(argv[1]), int(argv[2]) if len(argv) > 2 else 50)), flush=True)
        return 0
    if len(argv) == 4 and argv[0] in ("peer", "client"):
        (peer if argv[0] == "peer" else client)(float(argv[1]), int(argv[2]), Path(argv[3]))
        return 0
    print("usage: python -m lab.flows run SECONDS [RATE]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
