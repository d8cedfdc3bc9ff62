"""The seam for several VPN connections: one AWS Site-to-Site VPN connection with its tunnels, as a value.

The program (infra/outputs.py), the plan (hostconfig/plan.py) and the agent configuration (hostconfig/agent/config.py)
each hold a tuple of ``Connection`` of their own tunnel type, and read their flat ``tunnels`` from it. The stack
config and the contracts (host_config and agent.json, version 1) still carry exactly one connection; an HA pair of
gateways or several connections then change the readers and the schemas, not every user of ``tunnels``.
Stdlib only: the agent's zipapp ships it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

# The only connection of a version 1 host_config/agent.json when the input names none (agent.json carries no id).
SINGLE = "connection1"


@dataclass(frozen=True)
class Connection(Generic[T]):
    """``name``: the AWS VPN connection id where the reader knows it (host_config), else ``SINGLE``; ``tunnels`` in
    AWS's order (tunnel1 first)."""

    name: str
    tunnels: tuple[T, ...]


def tunnels_of(connections: Iterable[Connection[T]]) -> tuple[T, ...]:
    """Every tunnel of every connection, connection by connection (the order the single-connection readers had)."""
    return tuple(t for c in connections for t in c.tunnels)
