"""hybrid-vpn: a site-to-site IPsec VPN between an AWS VPC and an Akamai (Linode) private network.

Only loads the config, wires the components in the order the dependency cycle needs, and exports:
  1. the gateway's Cloud Firewall (inbound DROP, SSH from the admin networks), before anything it protects,
  2. the Linode gateway, its VPC interface behind that firewall from creation (public IP -> customer gateway),
  3. the AWS side (its tunnel outside IPs feed the firewall's rules and the host config),
  4. the firewall's full rule set (IKE/NAT-T from the two tunnel endpoints added),
  5. delivery of the rendered host config over SSH, once the VPN connection and those rules exist.
"""

import infra  # noqa: F401, I001  (first: refuses Python < 3.11 before anything else loads)
import pulumi
import pulumi_aws as aws
import pulumi_tls as tls

from hostconfig.cloudinit import render_user_data
from hostconfig.contract.connection import Connection
from hostconfig.contract.rules import gateway_label
from infra.aws import AwsVpnSide, AwsVpnSideArgs, aws_provider_args
from infra.config import load_namespace, load_stack_config
from infra.linode import (
    PUBLIC_INTERFACE,
    VLAN_INTERFACE,
    FirewallRules,
    GatewayFirewall,
    GatewayFirewallArgs,
    LinodeGatewaySide,
    LinodeGatewaySideArgs,
)
from infra.outputs import GatewayFacts, TunnelFacts, build_host_config, ssh_host_public_key_line
from infra.preview_check import check_before_any_resource
from infra.psk import tunnel_psks

config = load_stack_config()  # raises with every problem listed, before any resource exists
# An explicit provider reads no aws:* stack settings by itself: pass them (profile, assumeRoles, ...) through.
aws_provider_settings = aws_provider_args(load_namespace("aws"), config.aws.region)  # refuses bad keys, as above
stack = pulumi.get_stack()
label = gateway_label(stack)  # its rule: hostconfig.contract.rules.stack_name_problem, checked by load_stack_config
check_before_any_resource(config, stack=stack, label=label)  # what the renderer or the agent would refuse, refused now

# The gateway's SSH host key is made here so delivery can pin it (no trust on first use).
host_key = tls.PrivateKey("gateway-ssh-host-key", algorithm="ED25519")
user_data = pulumi.Output.all(host_key.private_key_openssh, host_key.public_key_openssh).apply(
    lambda keys: render_user_data(hostname=label, bgp=config.routing.bgp,
                                  ssh_host_ed25519_private=keys[0], ssh_host_ed25519_public=keys[1])
)

firewall = GatewayFirewall("gateway", GatewayFirewallArgs(
    label=f"{label}-fw",
    admin_cidrs=config.admin_cidrs,
    tags=config.tags,
))

gateway = LinodeGatewaySide("gateway", LinodeGatewaySideArgs(
    label=label,
    region=config.linode.region,
    instance_type=config.linode.type,
    image=config.linode.image,
    authorized_keys=config.linode.authorized_keys,
    subnet_cidr=config.linode.subnet_cidr,
    vlan_label=config.linode.vlan_label,
    gateway_vlan_address=config.linode.gateway_vlan_address,
    user_data=user_data,
    firewall_id=firewall.firewall_id,
    tags=config.tags,
))

aws_provider = aws.Provider("aws", **aws_provider_settings)
psks = tunnel_psks("vpn", config.tunnels)
vpn = AwsVpnSide("vpn", AwsVpnSideArgs(
    customer_gateway_ip=gateway.public_ip,
    linode_cidrs=config.linode.vlan_cidrs,
    crypto=config.crypto,
    psks=psks,
    amazon_side_asn=config.aws.amazon_side_asn,
    vpc_id=config.aws.vpc_id,
    vpc_cidr=config.aws.vpc_cidr,
    route_table_ids=config.aws.route_table_ids,
    inside_cidrs=config.tunnels.inside_cidrs,
    allow_linode_in_security_group_id=config.aws.allow_linode_in_security_group_id,
    tags={"Project": "hybrid-vpn", "Stack": stack, **config.tags},
    routing=config.routing,
), opts=pulumi.ResourceOptions(providers={"aws": aws_provider}))
connection = vpn.vpn_connection

firewall_rules = FirewallRules("gateway-firewall-rules", firewall.firewall_id,
                               [connection.tunnel1_address, connection.tunnel2_address], config.admin_cidrs)

# -- outputs ------------------------------------------------------------------------------------------------------
# The VPN connection names its two tunnels' outputs tunnel1_* and tunnel2_*.
TUNNEL_FIELDS = ("address", "inside_cidr", "vgw_inside_address", "cgw_inside_address", "preshared_key")
tunnel_facts = [
    pulumi.Output.all(*(getattr(connection, f"tunnel{n}_{field}") for field in TUNNEL_FIELDS)).apply(
        lambda t: TunnelFacts(*t))
    for n in (1, 2)
]
gateway_facts = pulumi.Output.all(gateway.public_ip, gateway.private_ip, host_key.public_key_openssh).apply(
    lambda g: GatewayFacts(label=label, public_ip=g[0], private_ip=g[1], public_interface=PUBLIC_INTERFACE,
                           vlan_interface=VLAN_INTERFACE, ssh_host_public_key=ssh_host_public_key_line(g[2], label))
)
host_config = pulumi.Output.secret(pulumi.Output.all(gateway_facts, connection.id, vpn.vgw_id, *tunnel_facts).apply(
    lambda v: build_host_config(stack=stack, config=config, gateway=v[0], vgw_id=v[2],
                                connections=(Connection(v[1], (v[3], v[4])),))
))
pulumi.export("gateway_public_ip", gateway.public_ip)
pulumi.export("gateway_vlan_address", config.linode.gateway_vlan_address)
pulumi.export("vpn_connection_id", connection.id)
pulumi.export("vgw_id", vpn.vgw_id)
pulumi.export("tunnels", vpn.tunnel_outputs(config.tunnels))  # plain, except each psk (a nested secret)
pulumi.export("host_config", host_config)  # docs/contracts.md §1; secret as a whole

if config.delivery.enabled:
    from hostconfig.deliver.program import gateway_config

    delivered = gateway_config("gateway-config", host_config, config.delivery,
                               depends_on=[connection, firewall, firewall_rules], instance_id=gateway.instance.id,
                               bgp=config.routing.bgp)
    # hostconfig.stack_outputs.DELIVERED_HOST_KEY_OUTPUT: the key `hostconfig status` pins after the first push
    pulumi.export("gateway_ssh_host_public_key", delivered.pinned_host_public_key)
