"""The agent's expected failures. `vpnctl` prints one as a line and exits 1; anything else is a bug (traceback).

A module of its own, importing nothing, so that catching them costs nothing: `vpnctl updown` must not load pyroute2
(seconds on a slow VM, while charon waits) just to name the netlink error it will not raise.
"""


class AgentError(RuntimeError):
    """A kernel, nftables or lock operation failed; the message says which and why."""
