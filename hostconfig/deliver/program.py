"""Wiring for __main__.py: the GatewayConfig resource built from the `host_config` stack output.

Only values are computed inside apply() (the rendered files, the address, the pinned key); the resource itself is
created outside, once, with explicit dependencies on the VPN connection and the firewall.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pulumi
import pulumi_tls as tls

from hostconfig.deliver.gateway import activation_commands, host_key_files, validation_commands, vpnctl_file
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
                   *, include_vpnctl: bool = True, instance_id: pulumi.Input[str] | None = None,
                   bgp: bool = False) -> GatewayConfig:
    """The resource that pushes the rendered files over SSH. `delivery`: infra.config.DeliveryConfig.
    `instance_id`: the gateway instance's id; a rebuilt instance (same address, same host key) is pushed anew.
    `bgp`: the stack's routing.mode is bgp (host_config carries routing): FRR's validation and activation too."""
    vpnctl = vpnctl_file() if include_vpnctl else None  # independent of the stack: built once, outside apply
    key = delivery.ssh_private_key.reveal() if delivery.ssh_private_key is not None else None
    # The host key the gateway uses after the first push: never in user data. Rotate it (a compromised gateway,
    # docs/operations.md) with `pulumi up --replace` on this resource; the push pins the new key from then on.
    host_key = tls.PrivateKey(f"{name}-ssh-host-key", algorithm="ED25519")
    files = pulumi.Output.all(host_config, host_key.private_key_openssh, host_key.public_key_openssh).apply(
        lambda v: render_for_delivery(v[0], vpnctl) + encode_files(host_key_files(v[1], v[2])))
    args = GatewayConfigArgs(
        # The address and the pinned host keys are not secret; host_config is secret as a whole (PSKs).
        host=pulumi.Output.unsecret(host_config.apply(lambda hc: hc["gateway"]["public_ip"])),
        host_public_key=host_key.public_key_openssh.apply(str.strip),
        bootstrap_host_public_key=pulumi.Output.unsecret(
            host_config.apply(lambda hc: hc["gateway"]["ssh_host_public_key"])),
        files=files,
        private_key=key,
        user=delivery.ssh_user,
        connect_timeout_seconds=delivery.timeout_seconds,
        validate=validation_commands(bgp=bgp),
        activate=activation_commands(bgp=bgp),
        scrub=host_config.apply(lambda hc: [t["psk"] for t in hc["tunnels"]]),
        instance_id=pulumi.Output.from_input(instance_id).apply(str) if instance_id is not None else None,
    )
    resource = GatewayConfig(name, args, pulumi.ResourceOptions(depends_on=list(depends_on)))
    resource.pinned_host_public_key = args.host_public_key  # what the gateway presents after the first push
    return resource
