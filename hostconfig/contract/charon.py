"""How the gateway applies an AWS tunnel option: the strongSwan setting (file section, keyword, value) a row of
hostconfig/contract/crypto.py TUNNEL_OPTIONS sets, and the facts those values encode (what charon does for each AWS
action). The renderer takes these settings generically: hostconfig/plan.py builds one list of lines per section from
the table, and the templates print that list with a loop, so a new option the gateway applies is its row only."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any


class Section(Enum):
    """Where a setting goes: swanctl.conf's connection (IKE_SA) or its child (CHILD_SA) of each tunnel, or the legacy
    ipsec.conf's ``conn <tunnel>``."""

    IKE = "swanctl connections.<tunnel>"
    CHILD = "swanctl connections.<tunnel>.children.<tunnel>"
    LEGACY = "ipsec.conf conn <tunnel>"


@dataclass(frozen=True)
class GatewaySetting:
    """One ``key = value`` line a tunnel option sets in ``section``, for both tunnels.

    ``value``: computed from the whole CryptoProfile (a charon timer can combine several options, e.g. rand_time is
    margin * fuzz); None: the option's own value. ``unit`` is appended ("s", "%"). ``comment``: lines printed above
    it, formatted with ``value`` (the rendered value) and ``aws`` (the option's AWS-side value). ``only_when_set``:
    written only when the option differs from its row's default; honest only where that default (AWS's) is also
    charon's own default for ``key``, so leaving the line out changes nothing on the gateway."""

    section: Section
    key: str
    value: Callable[[Any], Any] | None = None
    unit: str = ""
    comment: tuple[str, ...] = ()
    only_when_set: bool = False


def _setting_in(section: Section) -> Callable[..., GatewaySetting]:
    def setting(key: str, value: Callable[[Any], Any] | None = None, unit: str = "", *comment: str,
                only_when_set: bool = False) -> GatewaySetting:
        return GatewaySetting(section, key, value, unit, comment, only_when_set)

    return setting


# The rows' spelling: ike("rekey_time", value, "s", "comment line", ...), child(...), legacy(...).
ike = _setting_in(Section.IKE)
child = _setting_in(Section.CHILD)
legacy = _setting_in(Section.LEGACY)


# A rendered value is a number or a charon keyword: nothing a config parser could read as more than one token.
_PLAIN_VALUE = re.compile(r"[A-Za-z0-9_.%-]+")


def rendered(setting: GatewaySetting, own_value: Any, crypto: Any) -> dict[str, Any]:
    """The view model of one line: {"key", "value", "comment": [lines]}; refuses a value that is not one plain token
    (the table's values are numbers and keywords; a free-text option would need quoting first)."""
    raw = own_value if setting.value is None else setting.value(crypto)
    text = f"{str(raw).lower() if isinstance(raw, bool) else raw}{setting.unit}"
    if not _PLAIN_VALUE.fullmatch(text):
        raise ValueError(f"{setting.section.value} {setting.key}: {text!r} is not a plain number or keyword")
    return {"key": setting.key, "value": text,
            "comment": [line.format(value=text, aws=own_value) for line in setting.comment]}


# The gateway's reaction to a dead peer. AWS's action is what AWS does when *it* declares the gateway dead; the
# gateway must bring the tunnel back in every case, because (a) with startup action `add` AWS never initiates, so a
# gateway that clears would leave the tunnel down for good, and (b) the failover agent stops routing into a dead
# tunnel, so an on-demand `trap` would never be triggered by traffic. Duplicate SAs from both ends restarting at once
# are resolved by IKEv2 collision handling and `unique = replace`.
GATEWAY_DPD_ACTION = {"clear": "restart", "restart": "restart", "none": "restart"}
# AWS `add`: AWS waits for the customer gateway -> the gateway initiates as soon as the config is loaded (`start`),
# and re-initiates when AWS closes the CHILD_SA. AWS `start`: AWS initiates -> the gateway does not race it at load
# time, but installs trap policies so the first packet routed into the VTI (the agent's probes) makes the gateway
# initiate if AWS has not yet: never stuck waiting for the peer (`none` could be).
GATEWAY_START_ACTION = {"add": "start", "start": "trap"}
GATEWAY_CLOSE_ACTION = {"add": "start", "start": "trap"}
LEGACY_AUTO = {"add": "start", "start": "route"}
LEGACY_CLOSE_ACTION = {"add": "restart", "start": "hold"}
