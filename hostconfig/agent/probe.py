"""Non-blocking ICMP echo probes over raw sockets, driven by the daemon's select() loop.

Each tunnel's prober binds to the gateway's inside address of that tunnel and pings the AWS inside address: the reply
is addressed to an address that only that tunnel routes, so it can only come back through that tunnel and the verdict
does not depend on which tunnel AWS prefers for other traffic (the guide's `ping -I` flaw).
"""

from __future__ import annotations

import errno
import logging
import socket
import struct
from dataclasses import dataclass
from ipaddress import IPv4Address

log = logging.getLogger(__name__)

ICMP_ECHO_REQUEST = 8
ICMP_ECHO_REPLY = 0
_PAYLOAD = b"hybrid-vpn-probe"


@dataclass(frozen=True)
class ProbeResult:
    key: str
    ok: bool
    rtt: float | None = None


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def echo_request(ident: int, seq: int) -> bytes:
    header = struct.pack("!BBHHH", ICMP_ECHO_REQUEST, 0, 0, ident, seq)
    csum = checksum(header + _PAYLOAD)
    return struct.pack("!BBHHH", ICMP_ECHO_REQUEST, 0, csum, ident, seq) + _PAYLOAD


def parse_echo_reply(packet: bytes) -> tuple[IPv4Address, int, int] | None:
    """(source, id, seq) of an ICMP echo reply carried in an IPv4 packet, else None."""
    if len(packet) < 20:
        return None
    ihl = (packet[0] & 0x0F) * 4
    if len(packet) < ihl + 8:
        return None
    icmp_type, _code, _csum, ident, seq = struct.unpack("!BBHHH", packet[ihl:ihl + 8])
    if icmp_type != ICMP_ECHO_REPLY:
        return None
    return IPv4Address(packet[12:16]), ident, seq


class IcmpProber:
    """One target from one source address; outstanding probes expire after ``timeout`` seconds as misses."""

    def __init__(self, key: str, source: IPv4Address | None, target: IPv4Address, ident: int, timeout: float):
        self.key = key
        self.source = source
        self.target = target
        self.ident = ident & 0xFFFF
        self.timeout = timeout
        self.seq = 0
        self.outstanding: dict[int, float] = {}
        self.sock: socket.socket | None = None
        self.last_error: str | None = None

    def fileno(self) -> int:
        return self.sock.fileno() if self.sock else -1

    def _open(self) -> bool:
        if self.sock is not None:
            return True
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        sock.setblocking(False)
        try:
            if self.source is not None:
                # Binding fails until the tunnel's inside address exists: every interval then counts as a miss.
                sock.bind((str(self.source), 0))
        except OSError as exc:
            sock.close()
            self._error(f"bind {self.source}: {exc.strerror}")
            return False
        self.sock = sock
        return True

    def _error(self, text: str) -> None:
        if text != self.last_error:
            log.debug("probe %s: %s", self.key, text)
        self.last_error = text

    def send(self, now: float) -> list[ProbeResult]:
        """Send one echo request; a send that cannot happen is an immediate miss."""
        self.seq = (self.seq + 1) & 0xFFFF
        if not self._open():
            return [ProbeResult(self.key, False)]
        try:
            self.sock.sendto(echo_request(self.ident, self.seq), (str(self.target), 0))
        except OSError as exc:
            self._error(f"send to {self.target}: {exc.strerror}")
            if exc.errno in (errno.EBADF, errno.EADDRNOTAVAIL, errno.EINVAL):
                self.close()
            return [ProbeResult(self.key, False)]
        self.last_error = None
        self.outstanding[self.seq] = now
        return []

    def receive(self, now: float) -> list[ProbeResult]:
        """Drain the socket; replies to our id from our target are successes with their RTT."""
        results: list[ProbeResult] = []
        while self.sock is not None:
            try:
                packet = self.sock.recv(2048)
            except BlockingIOError:
                break
            except OSError as exc:
                self._error(f"recv: {exc.strerror}")
                break
            parsed = parse_echo_reply(packet)
            if parsed is None:
                continue
            source, ident, seq = parsed
            if ident != self.ident or source != self.target or seq not in self.outstanding:
                continue  # someone else's ping, or a reply that already counted as a miss
            sent = self.outstanding.pop(seq)
            results.append(ProbeResult(self.key, True, now - sent))
        return results

    def expire(self, now: float) -> list[ProbeResult]:
        expired = [seq for seq, sent in self.outstanding.items() if now - sent >= self.timeout]
        for seq in expired:
            del self.outstanding[seq]
        return [ProbeResult(self.key, False) for _ in expired]

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
