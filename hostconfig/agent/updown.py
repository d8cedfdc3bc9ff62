"""The strongSwan updown hook: PLUTO_* environment values are validated data, recorded, then a reconcile runs.

Nothing from the environment reaches a shell or a command line. The hook never asks charon anything over VICI: charon
runs it while the IKE SA is checked out, and list-sas would wait for that very SA.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from ipaddress import IPv4Address

from .config import AgentConfig
from .state import EVENT_PREFIX, atomic_write_text

log = logging.getLogger(__name__)

UP_VERBS = {"up-client", "up-host", "up-client-v6", "up-host-v6"}
DOWN_VERBS = {"down-client", "down-host", "down-client-v6", "down-host-v6"}
OTHER_VERBS = {"prepare-client", "prepare-host", "route-client", "route-host", "unroute-client", "unroute-host",
               "prepare-client-v6", "prepare-host-v6", "route-client-v6", "route-host-v6", "unroute-client-v6",
               "unroute-host-v6"}
_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_MARK = re.compile(r"^(0x[0-9A-Fa-f]{1,8}|[0-9]{1,10})(/(0x[0-9A-Fa-f]{1,8}|[0-9]{1,10}))?$")
_UNIQUEID = re.compile(r"^[0-9]{1,10}$")
EVENT_LOG = "updown-events.log"
EVENT_LOG_MAX_BYTES = 256 * 1024


class UpdownInputError(ValueError):
    """A PLUTO_* variable is missing or not a value strongSwan would send."""


@dataclass(frozen=True)
class UpdownEvent:
    verb: str
    connection: str
    peer: str | None
    mark_in: int | None
    unique_id: str | None

    @property
    def is_up(self) -> bool:
        return self.verb in UP_VERBS

    @property
    def is_down(self) -> bool:
        return self.verb in DOWN_VERBS


def _show(value: str) -> str:
    return repr(value[:40] + ("..." if len(value) > 40 else ""))


def parse_environment(env: Mapping[str, str]) -> UpdownEvent:
    """Validate the PLUTO_* values we use; raise UpdownInputError naming the variable and a right value."""
    verb = env.get("PLUTO_VERB")
    if verb is None:
        raise UpdownInputError("PLUTO_VERB: missing; vpnctl updown is run by charon, e.g. PLUTO_VERB=up-client")
    if verb not in UP_VERBS | DOWN_VERBS | OTHER_VERBS:
        raise UpdownInputError(f"PLUTO_VERB: not an updown verb (got {_show(verb)}), e.g. up-client or down-client")
    connection = env.get("PLUTO_CONNECTION")
    # fullmatch throughout: "$" also matches before a trailing newline, which would let "tunnel1\n" through (and
    # into the log as a forged line break).
    if connection is None or not _NAME.fullmatch(connection):
        raise UpdownInputError(f"PLUTO_CONNECTION: must be 1-64 of A-Z a-z 0-9 _ . : - (got "
                               f"{_show(connection) if connection is not None else 'nothing'}), e.g. tunnel1")
    peer = env.get("PLUTO_PEER")
    if peer is not None:
        try:
            peer = str(IPv4Address(peer))
        except ValueError:
            raise UpdownInputError(f"PLUTO_PEER: must be an IPv4 address (got {_show(peer)}),"
                                   " e.g. 198.51.100.1") from None
    mark_in = None
    raw_mark = env.get("PLUTO_MARK_IN")
    if raw_mark:
        match = _MARK.fullmatch(raw_mark)
        if not match:
            raise UpdownInputError(f"PLUTO_MARK_IN: must be value[/mask] in decimal or 0x hex (got {_show(raw_mark)}),"
                                   " e.g. 100/0xffffffff")
        mark_in = int(match.group(1), 0)
        if mark_in > 0xFFFFFFFF:
            raise UpdownInputError(f"PLUTO_MARK_IN: {mark_in} exceeds 32 bits, e.g. 100/0xffffffff")
    unique_id = env.get("PLUTO_UNIQUEID")
    if unique_id is not None and not _UNIQUEID.fullmatch(unique_id):
        raise UpdownInputError(f"PLUTO_UNIQUEID: must be a decimal number (got {_show(unique_id)}), e.g. 7")
    return UpdownEvent(verb=verb, connection=connection, peer=peer, mark_in=mark_in, unique_id=unique_id)


def tunnel_for_event(config: AgentConfig, event: UpdownEvent) -> str | None:
    """The tunnel an event is about: by XFRM mark (the VTI key), else peer address, else connection name."""
    if event.mark_in is not None:
        for tunnel in config.tunnels:
            if tunnel.mark == event.mark_in:
                return tunnel.name
    if event.peer is not None:
        for tunnel in config.tunnels:
            if str(tunnel.remote_outside_ip) == event.peer:
                return tunnel.name
    for tunnel in config.tunnels:
        if tunnel.name == event.connection:
            return tunnel.name
    return None


def record_event(config: AgentConfig, event: UpdownEvent, tunnel: str | None) -> None:
    """Last event per tunnel (one file each, so one tunnel's event never hides the other's) plus a bounded log."""
    state_dir = config.paths.state_dir
    state_dir.mkdir(parents=True, exist_ok=True)
    entry = {"at": time.time(), "tunnel": tunnel, **asdict(event)}
    line = json.dumps(entry, sort_keys=True) + "\n"
    if tunnel is not None:
        atomic_write_text(state_dir / f"{EVENT_PREFIX}{tunnel}.json", line)
    log_path = state_dir / EVENT_LOG
    try:
        if log_path.stat().st_size > EVENT_LOG_MAX_BYTES:
            os.replace(log_path, state_dir / (EVENT_LOG + ".1"))
    except FileNotFoundError:
        pass
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, line.encode())  # one write with O_APPEND: concurrent hooks never interleave a line
    finally:
        os.close(fd)
