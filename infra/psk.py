"""Tunnel pre-shared keys: from the stack config (secret) or generated within AWS's rules."""

from __future__ import annotations

import pulumi
import pulumi_random as random

from infra.config import PSK_PATTERN, TunnelsConfig

PSK_LENGTH = 32  # what AWS generates itself
PSK_SPECIALS = "._"  # the only non-alphanumerics AWS accepts


def aws_safe_psk(raw: str) -> str:
    """AWS refuses a PSK that starts with '0': RandomPassword cannot express that, so swap the first character."""
    psk = ("Z" + raw[1:]) if raw.startswith("0") else raw
    if not PSK_PATTERN.fullmatch(psk):
        # Never include the value: this message can reach logs.
        raise ValueError(f"generated PSK ({len(psk)} characters) breaks AWS's rules; check PSK_LENGTH/PSK_SPECIALS")
    return psk


def tunnel_psks(name: str, tunnels: TunnelsConfig,
                parent: pulumi.Resource | None = None) -> tuple[pulumi.Output[str], pulumi.Output[str]]:
    """The two PSKs as secret Outputs: the configured ones, or RandomPasswords kept in the (encrypted) state."""
    if tunnels.psks is not None:
        return (pulumi.Output.secret(tunnels.psks[0].reveal()), pulumi.Output.secret(tunnels.psks[1].reveal()))
    generated = []
    for n in (1, 2):
        password = random.RandomPassword(
            f"{name}-tunnel{n}-psk", length=PSK_LENGTH, lower=True, upper=True, numeric=True, special=True,
            override_special=PSK_SPECIALS, min_lower=1, min_upper=1, min_numeric=1,
            opts=pulumi.ResourceOptions(parent=parent))
        generated.append(pulumi.Output.secret(password.result.apply(aws_safe_psk)))
    return generated[0], generated[1]
