"""Kept importable for older callers: AWS's rules now live once, in hostconfig/contract/rules.py."""

from hostconfig.contract.rules import (  # noqa: F401  (re-exports)
    AWS_DPD_ACTIONS,
    AWS_ENCRYPTION,
    AWS_INTEGRITY,
    AWS_PHASE1_DH,
    AWS_PHASE2_DH,
    AWS_RESERVED_INSIDE,
    AWS_STARTUP_ACTIONS,
    DPD_TIMEOUT_MIN,
    LINK_LOCAL,
    MAX_ROUTES_TO_AWS,
    MAX_TUNNEL_MTU,
    PHASE1_LIFETIME,
    PHASE2_LIFETIME,
    PSK_PATTERN,
    PSK_RULE,
    REKEY_MARGIN_MIN,
    REPLAY_WINDOW,
    RFC1918,
)
