"""The lab's address plan: every address a lab host uses, in documentation or private ranges only.

The Pulumi program evaluated by lab/cloud.py gets the cloud-side part of this plan (the addresses a real cloud would
allocate); the underlay part (NAT hop, internet router, operator) exists only in the lab.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class LabAddressPlan:
    gateway_public_ip: str = "203.0.113.10"        # Linode 1:1 NAT address (held by the nat hop)
    gateway_private_ip: str = "10.8.0.2"           # gateway VPC NIC
    gateway_private_cidr: str = "10.8.0.0/24"
    nat_inside_ip: str = "10.8.0.1"                # gateway's default route
    nat_outside_cidr: str = "203.0.113.0/24"
    inet_nat_side_ip: str = "203.0.113.1"
    aws_outside_ips: tuple[str, str] = ("198.51.100.1", "198.51.100.2")
    aws_outside_cidr: str = "198.51.100.0/24"
    inet_aws_side_ip: str = "198.51.100.254"
    operator_ip: str = "192.0.2.10"                # where `pulumi up` / the SSH push runs from
    inet_operator_side_ip: str = "192.0.2.1"
    operator_cidr: str = "192.0.2.0/24"
    vlan_gateway_cidr: str = "172.16.1.1/24"
    vlan_host_cidr: str = "172.16.1.10/24"
    vlan_cidrs: tuple[str, ...] = ("172.16.0.0/12",)
    vpc_cidr: str = "10.0.0.0/16"
    vpc_router_cidr: str = "10.0.0.1/16"
    vpc_host_cidr: str = "10.0.4.85/16"
    inside_cidrs: tuple[str, str] = ("169.254.10.0/30", "169.254.11.0/30")
    extra: dict = field(default_factory=dict)

    @property
    def vlan_host_ip(self) -> str:
        return self.vlan_host_cidr.split("/")[0]

    @property
    def vpc_host_ip(self) -> str:
        return self.vpc_host_cidr.split("/")[0]

    @property
    def vlan_gateway_ip(self) -> str:
        return self.vlan_gateway_cidr.split("/")[0]

    @property
    def vpc_router_ip(self) -> str:
        return self.vpc_router_cidr.split("/")[0]


LAB_PLAN = LabAddressPlan()
