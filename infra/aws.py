"""The AWS side: VGW (+ attachment, + the VPC when asked), customer gateway, VPN connection, routes, propagation."""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_aws as aws

from hostconfig.contract import rules
from hostconfig.contract.crypto import TUNNEL_OPTIONS
from infra.config import TUNNEL_NAMES, ConfigError, CryptoProfile, RoutingConfig, TunnelsConfig

log = logging.getLogger(__name__)

IKE_VERSION_NAMES = {1: "ikev1", 2: "ikev2"}


@dataclass
class AwsVpnSideArgs:
    """Flat, typed inputs of the AWS side."""

    customer_gateway_ip: pulumi.Input[str]  # the Linode gateway's public IPv4 (its 1:1 NAT address)
    linode_cidrs: Sequence[str]  # one static VPN route each
    crypto: CryptoProfile
    psks: tuple[pulumi.Input[str], pulumi.Input[str]]  # secret
    amazon_side_asn: int
    vpc_id: str | None = None  # an existing VPC ...
    vpc_cidr: str | None = None  # ... or the CIDR of a new one
    route_table_ids: Sequence[str] | None = None  # None: every route table of the VPC
    inside_cidrs: tuple[str, str] | None = None  # None: AWS picks
    allow_linode_in_security_group_id: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    routing: RoutingConfig = RoutingConfig()  # bgp: no static routes, the gateway's FRR advertises the VLAN CIDRs


# aws:* keys whose values are credentials: secret inputs of the provider, never plain in the state.
AWS_SECRET_SETTINGS = ("accessKey", "secretKey", "token")


def aws_provider_args(settings: Mapping[str, Any], region: str) -> dict[str, Any]:
    """The explicit AWS provider's arguments: the region of ``hybrid-vpn:aws`` plus every ``aws:*`` stack setting.

    An explicit provider reads no stack config (only Pulumi's default provider does), so without this
    ``pulumi config set aws:profile ops`` would be silently ignored. Each ``aws:<camelCase>`` key maps to the
    provider argument of the same name (``aws:sharedCredentialsFiles`` -> ``shared_credentials_files``); nested values
    (``aws:assumeRoles[0].roleArn``) pass as set, in the engine's camelCase. ``aws:assumeRole`` (the pre-v7 singular)
    becomes a one-element ``assume_roles``. A key the provider does not have is refused at preview.
    """
    accepted = set(inspect.signature(aws.Provider._internal_init).parameters) - {"self", "resource_name", "opts"}
    args: dict[str, Any] = {"region": region}
    problems = []
    for key, value in sorted(settings.items()):
        if value is None:
            continue
        if key == "region":
            if value != region:
                problems.append(f"aws:region: {value} differs from hybrid-vpn:aws.region {region}; the program uses "
                                f"hybrid-vpn:aws.region (also in host_config): remove aws:region or set it to {region}")
            continue
        if key == "assumeRole":
            key, value = "assumeRoles", [value]
        name = re.sub(r"(?<!^)(?=[A-Z])", "_", key).lower()
        if name not in accepted:
            problems.append(f"aws:{key}: not a setting of the AWS provider (pulumi-aws {aws_version()}); "
                            "e.g. aws:profile, aws:sharedCredentialsFiles, aws:assumeRoles")
            continue
        args[name] = pulumi.Output.secret(value) if key in AWS_SECRET_SETTINGS else value
    if problems:
        raise ConfigError(problems)
    return args


def aws_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pulumi_aws")
    except PackageNotFoundError:  # pragma: no cover
        return "unknown"


def customer_gateway_asn_args(asn: int) -> dict[str, str]:
    """CreateCustomerGateway takes an ASN up to 2,147,483,647 as BgpAsn, a larger one only as BgpAsnExtended."""
    if asn <= rules.CUSTOMER_ASN_BGP_ASN_MAX:
        return {"bgp_asn": str(asn)}
    return {"bgp_asn_extended": str(asn)}


def tunnel_options(crypto: CryptoProfile, tunnel: int) -> dict[str, object]:
    """The VpnConnection arguments of one tunnel, from the ONE crypto profile (pure; unit-tested)."""
    p = f"tunnel{tunnel}_"
    return {
        f"{p}ike_versions": [IKE_VERSION_NAMES[crypto.ike_version]],
        f"{p}phase1_encryption_algorithms": list(crypto.phase1.encryption),
        f"{p}phase1_integrity_algorithms": list(crypto.phase1.integrity),
        f"{p}phase1_dh_group_numbers": list(crypto.phase1.dh_groups),
        f"{p}phase1_lifetime_seconds": crypto.phase1.lifetime_seconds,
        f"{p}phase2_encryption_algorithms": list(crypto.phase2.encryption),
        f"{p}phase2_integrity_algorithms": list(crypto.phase2.integrity),
        f"{p}phase2_dh_group_numbers": list(crypto.phase2.dh_groups),
        f"{p}phase2_lifetime_seconds": crypto.phase2.lifetime_seconds,
        **{f"{p}{option.aws}": getattr(crypto, option.key) for option in TUNNEL_OPTIONS},
    }


class AwsVpnSide(pulumi.ComponentResource):
    """VGW attached to the VPC, a customer gateway for the Linode gateway, and a two-tunnel static VPN connection."""

    vpc_id: pulumi.Output[str]
    vgw_id: pulumi.Output[str]
    vpn_connection: aws.ec2.VpnConnection
    customer_gateway: aws.ec2.CustomerGateway

    def __init__(self, name: str, args: AwsVpnSideArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("hybrid-vpn:aws:AwsVpnSide", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        tags = dict(args.tags)

        if args.vpc_cidr:
            vpc = aws.ec2.Vpc(f"{name}-vpc", cidr_block=args.vpc_cidr, enable_dns_support=True,
                              enable_dns_hostnames=True, tags={**tags, "Name": f"{name}-vpc"}, opts=child)
            vpc_id: pulumi.Input[str] = vpc.id
        elif args.vpc_id:
            vpc = None
            vpc_id = args.vpc_id
        else:
            raise ValueError("AwsVpnSideArgs needs vpc_id or vpc_cidr")  # config validation prevents this

        vgw = aws.ec2.VpnGateway(f"{name}-vgw", amazon_side_asn=str(args.amazon_side_asn),
                                 tags={**tags, "Name": f"{name}-vgw"}, opts=child)
        attachment = aws.ec2.VpnGatewayAttachment(f"{name}-vgw-attachment", vpc_id=vpc_id, vpn_gateway_id=vgw.id,
                                                  opts=child)
        self.customer_gateway = aws.ec2.CustomerGateway(
            f"{name}-cgw", **customer_gateway_asn_args(args.routing.customer_asn), ip_address=args.customer_gateway_ip,
            type="ipsec.1", tags={**tags, "Name": f"{name}-cgw"}, opts=child)

        options: dict[str, object] = {**tunnel_options(args.crypto, 1), **tunnel_options(args.crypto, 2)}
        if args.inside_cidrs:
            options["tunnel1_inside_cidr"], options["tunnel2_inside_cidr"] = args.inside_cidrs
        self.vpn_connection = aws.ec2.VpnConnection(
            f"{name}-vpn",
            vpn_gateway_id=vgw.id,
            customer_gateway_id=self.customer_gateway.id,
            type="ipsec.1",
            static_routes_only=not args.routing.bgp,
            tunnel1_preshared_key=pulumi.Output.secret(args.psks[0]),
            tunnel2_preshared_key=pulumi.Output.secret(args.psks[1]),
            tags={**tags, "Name": f"{name}-vpn"},
            opts=pulumi.ResourceOptions(parent=self, depends_on=[attachment]),
            **options,
        )
        # Named by what they are, not by list position: inserting a CIDR or a route table renames nothing else.
        # The aliases move stacks created with the index names (see position_alias); delete_before_replace because
        # AWS refuses a second route for the same CIDR (or propagation for the same table) while the old one exists.
        for i, cidr in enumerate(() if args.routing.bgp else args.linode_cidrs):  # bgp: FRR advertises them
            aws.ec2.VpnConnectionRoute(
                f"{name}-route-{resource_slug(cidr)}", destination_cidr_block=cidr,
                vpn_connection_id=self.vpn_connection.id,
                opts=pulumi.ResourceOptions(parent=self, delete_before_replace=True,
                                            aliases=[position_alias(f"{name}-route", i)]))

        for i, (key, rtb_id) in enumerate(self._route_tables(args, vpc)):
            aws.ec2.VpnGatewayRoutePropagation(
                f"{name}-propagation-{key}", vpn_gateway_id=vgw.id, route_table_id=rtb_id,
                opts=pulumi.ResourceOptions(parent=self, depends_on=[attachment], delete_before_replace=True,
                                            aliases=[position_alias(f"{name}-propagation", i)]))

        if args.allow_linode_in_security_group_id:
            aws.ec2.SecurityGroupRule(
                f"{name}-allow-linode", type="ingress", security_group_id=args.allow_linode_in_security_group_id,
                protocol="-1", from_port=0, to_port=0, cidr_blocks=list(args.linode_cidrs),
                description="hybrid-vpn: traffic from the Linode VLAN through the VPN", opts=child)

        self.vpc_id = pulumi.Output.from_input(vpc_id)
        self.vgw_id = vgw.id
        self.register_outputs({"vpc_id": self.vpc_id, "vgw_id": self.vgw_id,
                               "vpn_connection_id": self.vpn_connection.id})

    def tunnel_outputs(self, tunnels: TunnelsConfig) -> list[dict[str, object]]:
        """The ``tunnels`` stack output: per tunnel its facts as plain Outputs and its PSK as a secret one."""
        c = self.vpn_connection
        return [
            {
                "name": name,
                "interface": interface,
                "outside_ip": getattr(c, f"tunnel{n}_address"),
                "inside_cidr": getattr(c, f"tunnel{n}_inside_cidr"),
                "aws_inside_ip": getattr(c, f"tunnel{n}_vgw_inside_address"),
                "gateway_inside_ip": getattr(c, f"tunnel{n}_cgw_inside_address"),
                "psk": pulumi.Output.secret(getattr(c, f"tunnel{n}_preshared_key")),
                "mark": mark,
            }
            for n, name, interface, mark in zip((1, 2), TUNNEL_NAMES, tunnels.interfaces, tunnels.marks, strict=True)
        ]

    def _route_tables(self, args: AwsVpnSideArgs, vpc: aws.ec2.Vpc | None) -> list[tuple[str, pulumi.Input[str]]]:
        """(name key, route table id) of the tables that get VGW route propagation. Every key is known at preview."""
        if args.route_table_ids is not None:
            return [(rtb_id, rtb_id) for rtb_id in args.route_table_ids]
        if vpc is not None:
            # A VPC created here has exactly one route table at creation: its main one (its id is unknown at preview,
            # so the name says which table it is instead).
            return [("main", vpc.main_route_table_id)]
        # "all" of an existing VPC: a plain invoke (its id is a plain string), so the ids are known at preview.
        found = aws.ec2.get_route_tables(vpc_id=args.vpc_id, opts=pulumi.InvokeOptions(parent=self))
        log.info("VGW route propagation to %s route table(s) of %s", len(found.ids), args.vpc_id)
        return [(rtb_id, rtb_id) for rtb_id in sorted(found.ids)]


def resource_slug(text: str) -> str:
    """A CIDR or an id as part of a resource name: ``172.16.0.0/12`` -> ``172.16.0.0-12`` (URN-safe, readable)."""
    return text.replace("/", "-")


def position_alias(prefix: str, index: int) -> pulumi.Alias:
    """The name this resource had when it was named by list position (``vpn-route-0``).

    Only right for the order the stack had when it was last deployed with index names: an alias maps state by name,
    it cannot know which CIDR the old ``-0`` held. Upgrade with the lists unchanged first (the preview then shows no
    change for these resources), edit the lists afterwards. See docs/changes.md.
    """
    return pulumi.Alias(name=f"{prefix}-{index}")
