"""The Linode side: VPC + subnet, the dual-NIC gateway instance, and (later in the graph) its Cloud Firewall.

The dependency cycle of design.md is broken in two steps: ``LinodeGatewaySide`` creates the instance (its public IP
feeds the AWS customer gateway), and ``GatewayFirewall`` is a second component created after the VPN connection,
because its rules need the two AWS tunnel outside IPs.

ESP is not in the firewall: a Linode Cloud Firewall rule accepts only TCP, UDP, ICMP and IPENCAP (linode-facts.md).
The gateway sits behind 1:1 NAT, so IKE's NAT detection moves ESP into UDP 4500, and the rendered strongSwan config
sets ``encap = yes`` so it never depends on detection. UDP 500 + UDP 4500 from the two tunnel endpoints is all IPsec
needs.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pulumi
import pulumi_linode as linode

log = logging.getLogger(__name__)

PUBLIC_INTERFACE = "eth0"  # the VPC NIC comes first: default route, 1:1 NAT, Cloud Firewall
VLAN_INTERFACE = "eth1"


def linode_label(text: str, limit: int = 32) -> str:
    """A Linode label: letters, digits, dashes (and no leading/trailing dash), at most ``limit`` characters."""
    label = re.sub(r"[^A-Za-z0-9-]+|-{2,}", "-", text).strip("-")
    return label[:limit].rstrip("-")


def linode_tags(tags: Mapping[str, str]) -> list[str]:
    """Linode tags are plain strings: render ``{k: v}`` as ``k=v`` (sorted, stable diff)."""
    return sorted(f"{k}={v}"[:50] for k, v in tags.items())


@dataclass
class LinodeGatewaySideArgs:
    label: str  # e.g. hybrid-vpn-dev-gw
    region: str
    instance_type: str
    image: str
    authorized_keys: Sequence[str]
    subnet_cidr: str
    vlan_label: str
    gateway_vlan_address: str  # CIDR form
    user_data: pulumi.Input[str]  # cloud-init text (no secrets of the VPN in it); base64-encoded here
    tags: Mapping[str, str] = field(default_factory=dict)


class LinodeGatewaySide(pulumi.ComponentResource):
    """VPC + subnet and the gateway instance (VPC interface primary with 1:1 NAT, VLAN interface)."""

    instance: linode.Instance
    public_ip: pulumi.Output[str]  # the 1:1 NAT address: customer gateway IP and IKE identity
    private_ip: pulumi.Output[str]  # the address on the VPC NIC: IKE local address
    public_interface_id: pulumi.Output[int]  # the VPC interface, where the Cloud Firewall attaches

    def __init__(self, name: str, args: LinodeGatewaySideArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("hybrid-vpn:linode:LinodeGatewaySide", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        tags = linode_tags(args.tags)

        vpc = linode.Vpc(f"{name}-vpc", label=linode_label(f"{args.label}-vpc", 64), region=args.region,
                         description="hybrid-vpn gateway VPC", opts=child)
        subnet = linode.VpcSubnet(f"{name}-subnet", vpc_id=vpc.id.apply(int), label=linode_label(f"{args.label}-net"),
                                  ipv4=args.subnet_cidr, opts=child)
        self.instance = linode.Instance(
            f"{name}-instance",
            label=linode_label(args.label, 64),
            region=args.region,
            type=args.instance_type,
            image=args.image,
            authorized_keys=list(args.authorized_keys),
            tags=tags,
            # The current interface generation: interfaces belong to the Linode, not to a config profile.
            interface_generation="linode",
            linode_interfaces=[
                linode.InstanceLinodeInterfaceArgs(
                    default_route=linode.InstanceLinodeInterfaceDefaultRouteArgs(ipv4=True),
                    vpc=linode.InstanceLinodeInterfaceVpcArgs(
                        subnet_id=subnet.id.apply(int),
                        ipv4=linode.InstanceLinodeInterfaceVpcIpv4Args(addresses=[
                            linode.InstanceLinodeInterfaceVpcIpv4AddressArgs(address="auto", primary=True,
                                                                             nat11_address="auto"),
                        ]),
                    ),
                ),
                linode.InstanceLinodeInterfaceArgs(
                    vlan=linode.InstanceLinodeInterfaceVlanArgs(vlan_label=args.vlan_label,
                                                                ipam_address=args.gateway_vlan_address),
                ),
            ],
            metadatas=[linode.InstanceMetadataArgs(user_data=pulumi.Output.from_input(args.user_data).apply(_b64))],
            opts=child,
        )
        # Instance.ip_address is deprecated and the interface outputs carry no interface id: ask the networking
        # data source, which reports the VPC address, its 1:1 NAT address and the interface id together.
        networking = linode.get_instance_networking_output(
            linode_id=self.instance.id.apply(int), opts=pulumi.InvokeOutputOptions(parent=self))
        vpc_address = networking.ipv4s.apply(_vpc_address)
        self.public_ip = vpc_address.apply(lambda a: a["nat11"])
        self.private_ip = vpc_address.apply(lambda a: a["address"])
        self.public_interface_id = vpc_address.apply(lambda a: a["interface_id"])
        self.vpc_id = vpc.id
        self.subnet_id = subnet.id
        self.register_outputs({"public_ip": self.public_ip, "private_ip": self.private_ip,
                               "instance_id": self.instance.id})


def _b64(text: str) -> str:
    import base64

    return base64.b64encode(text.encode()).decode()


def _vpc_address(ipv4s: Sequence) -> dict:
    """The gateway's VPC address record (private address, 1:1 NAT public address, interface id)."""
    for block in ipv4s or ():
        for vpc in block.vpcs or ():
            if vpc.nat11:
                return {"address": vpc.address, "nat11": vpc.nat11, "interface_id": int(vpc.interface_id)}
    raise ValueError("the gateway has no VPC interface with a 1:1 NAT address (getInstanceNetworking ipv4.vpcs)")


@dataclass
class GatewayFirewallArgs:
    label: str
    public_interface_id: pulumi.Input[int]
    tunnel_outside_ips: Sequence[pulumi.Input[str]]  # the two AWS tunnel endpoints
    admin_cidrs: Sequence[str]
    tags: Mapping[str, str] = field(default_factory=dict)


def firewall_inbound_rules(tunnel_outside_ips: Sequence[pulumi.Input[str]],
                           admin_cidrs: Sequence[str]) -> list[linode.FirewallInboundArgs]:
    """IKE and NAT-T from the two tunnel endpoints only; SSH from the admin networks only; the rest is dropped."""
    peers = [pulumi.Output.concat(ip, "/32") for ip in tunnel_outside_ips]
    rules = [
        linode.FirewallInboundArgs(label="ike-from-aws", action="ACCEPT", protocol="UDP", ports="500", ipv4s=peers,
                                   description="IKE from the two AWS tunnel endpoints"),
        linode.FirewallInboundArgs(label="natt-from-aws", action="ACCEPT", protocol="UDP", ports="4500",
                                   ipv4s=peers, description="IKE + ESP-in-UDP (encap=yes) from the AWS endpoints"),
    ]
    if admin_cidrs:
        rules.append(linode.FirewallInboundArgs(label="ssh-from-admins", action="ACCEPT", protocol="TCP", ports="22",
                                                ipv4s=list(admin_cidrs), description="SSH for delivery and operators"))
    return rules


class GatewayFirewall(pulumi.ComponentResource):
    """The Cloud Firewall on the gateway's VPC (public-facing) interface. Created after the VPN connection."""

    firewall: linode.Firewall

    def __init__(self, name: str, args: GatewayFirewallArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("hybrid-vpn:linode:GatewayFirewall", name, None, opts)
        self.firewall = linode.Firewall(
            f"{name}-firewall",
            label=linode_label(args.label),
            inbound_policy="DROP",
            outbound_policy="ACCEPT",
            inbounds=firewall_inbound_rules(args.tunnel_outside_ips, args.admin_cidrs),
            # Attached per interface (current generation); VLAN interfaces cannot carry a firewall.
            interfaces=[args.public_interface_id],
            tags=linode_tags(args.tags),
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.register_outputs({"firewall_id": self.firewall.id})
