"""Pure BGP steering (routing.mode bgp, issue 16): what each tunnel's BGP session advertises to AWS.

AWS picks the tunnel it sends on by route priority: longest prefix first, then the shortest AS path (then MED). The
gateway already knows, sub-second from its probes, which tunnel carries traffic (``TunnelView.active``, from
``health.choose_active``, damped failback included); this module turns that into one outbound route-map per neighbor so
AWS sends its return traffic on the same tunnel:

- steady (the primary is active): the primary advertises the VLAN CIDRs plainly, the other tunnel with its AS path
  prepended, so AWS prefers the primary (symmetric paths);
- failed over (another tunnel is active because the primary's data path died): the active tunnel also advertises the
  more-specific halves of every VLAN CIDR, which beat the CIDRs on the dead tunnel whatever their AS path; AWS moves at
  once instead of after its DPD or BGP hold time (30 s), even though the dead tunnel's session may still look up;
- failback: ``choose_active`` returns to the primary only after the failback hold, and only then are the halves
  withdrawn: the order of ``apply_order`` adds the primary's plain CIDRs before the halves go (make before break).

No tunnel up: the rendered steady state (nothing better is known; AWS's own hold timer decides).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

from hostconfig.contract import rules

from .desired import TunnelView

log = logging.getLogger(__name__)


class Advertisement(Enum):
    """What one neighbor is sent, named by its route-map in frr.conf (hostconfig/templates/frr.conf.j2)."""

    STANDBY = rules.ROUTE_MAP_STANDBY
    PRIMARY = rules.ROUTE_MAP_PRIMARY
    PRIMARY_MORE_SPECIFIC = rules.ROUTE_MAP_PRIMARY_MORE_SPECIFIC

    @property
    def route_map(self) -> str:
        return self.value

    @property
    def weight(self) -> int:
        """How strongly it draws AWS's traffic: changes that draw more are applied before those that draw less."""
        return _WEIGHT[self]


_WEIGHT = {Advertisement.STANDBY: 0, Advertisement.PRIMARY: 1, Advertisement.PRIMARY_MORE_SPECIFIC: 2}


@dataclass(frozen=True)
class Steering:
    advertise: Mapping[str, Advertisement]  # tunnel name -> what its neighbor is sent
    reason: str


def steer(tunnels: Sequence[str], primary: str, view: TunnelView) -> Steering:
    """Each tunnel's advertisement for this health view (see the module docstring)."""
    if primary not in tunnels:
        raise ValueError(f"primary {primary!r} is none of the tunnels {list(tunnels)}")
    active = view.active
    if active is None:
        return Steering(_with(tunnels, primary, Advertisement.PRIMARY),
                        f"no tunnel is up: the steady advertisement ({primary} primary, the others prepended)")
    if active == primary:
        return Steering(_with(tunnels, active, Advertisement.PRIMARY),
                        f"{active} (primary) is active: plain CIDRs there, AS path prepended on the others")
    down = sorted(set(tunnels) - view.up)
    why = f"primary {primary} is down" if primary in down else f"primary {primary} is within its failback hold"
    return Steering(_with(tunnels, active, Advertisement.PRIMARY_MORE_SPECIFIC),
                    f"{active} is active ({why}): the VLAN CIDRs' more-specific halves there draw AWS's return traffic")


def _with(tunnels: Sequence[str], chosen: str, advertisement: Advertisement) -> dict[str, Advertisement]:
    return {name: advertisement if name == chosen else Advertisement.STANDBY for name in tunnels}


@dataclass(frozen=True)
class RouteMapChange:
    tunnel: str
    neighbor: str  # AWS's inside address on that tunnel
    old: str | None  # the route-map FRR has now (None: none, or the neighbor is unknown to FRR)
    new: Advertisement


def changes(steering: Steering, neighbors: Mapping[str, str],
            current: Mapping[str, str | None]) -> list[RouteMapChange]:
    """The route-map changes that bring FRR (``current``: neighbor address -> outbound route-map) to ``steering``,
    ordered make before break: what draws AWS's traffic to a tunnel is applied before what pushes it away."""
    out = [RouteMapChange(tunnel, neighbors[tunnel], current.get(neighbors[tunnel]), advertisement)
           for tunnel, advertisement in steering.advertise.items()
           if current.get(neighbors[tunnel]) != advertisement.route_map]
    return sorted(out, key=lambda c: -c.new.weight)
