"""Wiring for __main__.py: the GatewayConfig resource built from the `host_config` stack output.

Only values are computed inside apply() (the rendered files, the address, the pinned key); the resource itself is
created outside, once, with explicit dependencies on the VPN connection and the firewall.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pulumi

from hostconfig.deliver.gateway import activation_commands, validation_commands, vpnctl_file
from hostconfig.deliver.provider import GatewayConfig, GatewayConfigArgs, encode_files


def render_for_delivery(host_config: dict[str, Any], vpnctl: Any | None) -> list[dict[str, Any]]:
    """host_config (docs/contracts.md §1) -> the encoded files of §4 (rendered files plus the vpnctl zipapp)."""
    from hostconfig.plan import GatewayPlan
    from hostconfig.render import render_gateway_files

    files = list(render_gateway_files(GatewayPlan.from_host_config(host_config)))
    if vpnctl is not None:
        files.append(vpnctl)
    return encode_files(files)


def gateway_config(name: str, host_config: pulumi.Output, delivery: Any, depends_on: Sequence[pulumi.Resource],
                   *, include_vpnctl: bool = True, instance_id: pulumi.Input[str] | None = None) -> GatewayConfig:
    """The resource that pushes the rendered files over SSH. `delivery`: infra.config.DeliveryConfig.
    `instance_id`: the gateway instance's id; a rebuilt instance (same address, same host key) is pushed anew."""
    vpnctl = vpnctl_file() if include_vpnctl else None  # independent of the stack: built once, outside apply
    key = delivery.ssh_private_key.reveal() if delivery.ssh_private_key is not None else None
    args = GatewayConfigArgs(
        # The address and the pinned host key are not secret; host_config is secret as a whole (PSKs).
        host=pulumi.Output.unsecret(host_config.apply(lambda hc: hc["gateway"]["public_ip"])),
        host_public_key=pulumi.Output.unsecret(host_config.apply(lambda hc: hc["gateway"]["ssh_host_public_key"])),
        files=host_config.apply(lambda hc: render_for_delivery(hc, vpnctl)),
        private_key=key,
        user=delivery.ssh_user,
        connect_timeout_seconds=delivery.timeout_seconds,
        validate=validation_commands(),
        activate=activation_commands(),
        scrub=host_config.apply(lambda hc: [t["psk"] for t in hc["tunnels"]]),
        instance_id=pulumi.Output.from_input(instance_id).apply(str) if instance_id is not None else None,
    )
    return GatewayConfig(name, args, pulumi.ResourceOptions(depends_on=list(depends_on)))
