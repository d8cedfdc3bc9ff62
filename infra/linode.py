"""The Linode side: the gateway's Cloud Firewall, VPC + subnet, the dual-NIC gateway instance, and the firewall's
tunnel rules once AWS has named its tunnel endpoints.

The dependency cycle of design.md (the firewall needs the AWS tunnel outside IPs, AWS needs the gateway's public IP)
is broken without leaving the gateway open: ``GatewayFirewall`` is created first (inbound DROP, SSH from the admin
networks only) and the instance's VPC interface carries its id from creation (``linode_interfaces[0].firewall_id``),
so sshd and charon never face the internet unfiltered and the account's default firewall is never applied.
``FirewallRules`` (a dynamic resource, after the VPN connection) then replaces the same firewall's rule set with SSH
plus IKE/NAT-T from the two tunnel endpoints (Linode API ``PUT /networking/firewalls/{id}/rules``): one enabled
firewall per interface, so the rules move, not the attachment.

ESP is not in the firewall: a Linode Cloud Firewall rule accepts only TCP, UDP, ICMP and IPENCAP (linode-facts.md).
The gateway sits behind 1:1 NAT, so IKE's NAT detection moves ESP into UDP 4500, and the rendered strongSwan config
sets ``encap = yes`` so it never depends on detection. UDP 500 + UDP 4500 from the two tunnel endpoints is all IPsec
needs.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi.dynamic
import pulumi.runtime.rpc
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
    firewall_id: pulumi.Input[int]  # GatewayFirewall's id: attached to the VPC interface at creation
    tags: Mapping[str, str] = field(default_factory=dict)


# Instance inputs that the provider can only set at creation (ForceNew in terraform-provider-linode
# linode/instance/schema_resource.go and linode_interfaces.go), and what the program does about each:
#   image, interface_generation, linode_interfaces (subnet, VLAN label/address, firewall_id), region-bound NICs:
#       a replacement is the only way -> delete_before_replace, because the label is unique per account and the VLAN
#       address (ipam_address) can be held by one interface only: create-before-delete would fail on both.
#   authorized_keys: only copied into /root/.ssh/authorized_keys when the disk is built from the image; an edit does
#       not need a new gateway (new public IP, new customer gateway, both tunnels down) -> ignored after creation.
#   metadatas (user data): cloud-init runs it at first boot only; the host config is pushed over SSH by delivery, so
#       a template edit must not rebuild the gateway -> ignored after creation.
#   linodeInterfaces[0].firewallId: set at creation so the gateway is filtered from its first packet. A stack made
#       before it existed has the same firewall attached through the firewall's own `interfaces`; without the ignore
#       its first `up` with this program would rebuild the gateway just to repeat an attachment it already has.
# Ignored inputs keep their state value even through a replacement (the engine substitutes it before deciding), so a
# replaced gateway would boot with the old user data. REBUILD_ENV=1 drops the list for one run: the preview then
# shows the edit as a replacement and a confirmed `up` builds the gateway from the current inputs (docs/changes.md).
INSTANCE_IGNORE_CHANGES = ["authorized_keys", "metadatas", "linodeInterfaces[0].firewallId"]
REBUILD_ENV = "HYBRID_VPN_REBUILD_GATEWAY"


def instance_ignore_changes(environ: Mapping[str, str]) -> list[str]:
    """The instance's ignore_changes: none when the operator asks for a rebuild from the current inputs."""
    if environ.get(REBUILD_ENV) == "1":
        log.warning("%s=1: user data and authorized keys are compared again; an edit replaces the gateway",
                    REBUILD_ENV)
        return []
    return list(INSTANCE_IGNORE_CHANGES)


class LinodeGatewaySide(pulumi.ComponentResource):
    """VPC + subnet and the gateway instance (VPC interface primary with 1:1 NAT, VLAN interface)."""

    instance: linode.Instance
    public_ip: pulumi.Output[str]  # the 1:1 NAT address: customer gateway IP and IKE identity
    private_ip: pulumi.Output[str]  # the address on the VPC NIC: IKE local address
    public_interface_id: pulumi.Output[int]  # the VPC interface (its firewall is set at creation: firewall_id)

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
                    # Explicit, so the account's default VPC-interface firewall is never the one applied.
                    firewall_id=args.firewall_id,
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
            opts=pulumi.ResourceOptions(parent=self, delete_before_replace=True,
                                        ignore_changes=instance_ignore_changes(os.environ)),
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
    admin_cidrs: Sequence[str]
    tags: Mapping[str, str] = field(default_factory=dict)


def ssh_rules(admin_cidrs: Sequence[str]) -> list[linode.FirewallInboundArgs]:
    """SSH from the admin networks only (delivery runs from there); none without admin networks."""
    if not admin_cidrs:
        return []
    return [linode.FirewallInboundArgs(label="ssh-from-admins", action="ACCEPT", protocol="TCP", ports="22",
                                       ipv4s=list(admin_cidrs), description="SSH for delivery and operators")]


def firewall_inbound_rules(tunnel_outside_ips: Sequence[pulumi.Input[str]],
                           admin_cidrs: Sequence[str]) -> list[linode.FirewallInboundArgs]:
    """IKE and NAT-T from the two tunnel endpoints only; SSH from the admin networks only; the rest is dropped."""
    peers = [pulumi.Output.concat(ip, "/32") for ip in tunnel_outside_ips]
    return [
        linode.FirewallInboundArgs(label="ike-from-aws", action="ACCEPT", protocol="UDP", ports="500", ipv4s=peers,
                                   description="IKE from the two AWS tunnel endpoints"),
        linode.FirewallInboundArgs(label="natt-from-aws", action="ACCEPT", protocol="UDP", ports="4500",
                                   ipv4s=peers, description="IKE + ESP-in-UDP (encap=yes) from the AWS endpoints"),
        *ssh_rules(admin_cidrs),
    ]


class GatewayFirewall(pulumi.ComponentResource):
    """The Cloud Firewall of the gateway's VPC (public-facing) interface, created BEFORE the instance.

    At creation it drops everything inbound but SSH from the admin networks; the instance's VPC interface references
    it (``firewall_id``), so the gateway is filtered from its first packet. Its rules after creation belong to
    ``FirewallRules``, hence ``ignore_changes`` on ``inbounds``: otherwise the next ``pulumi up`` would put the
    SSH-only bootstrap set back over the tunnel rules. The attachment is the instance's, never this resource's
    (``interfaces`` is not set: it would need the instance, a cycle, and would manage the attachment twice).
    """

    firewall: linode.Firewall
    firewall_id: pulumi.Output[int]

    def __init__(self, name: str, args: GatewayFirewallArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("hybrid-vpn:linode:GatewayFirewall", name, None, opts)
        self.firewall = linode.Firewall(
            f"{name}-firewall",
            label=linode_label(args.label),
            inbound_policy="DROP",
            outbound_policy="ACCEPT",
            inbounds=ssh_rules(args.admin_cidrs),
            tags=linode_tags(args.tags),
            opts=pulumi.ResourceOptions(parent=self, ignore_changes=["inbounds", "interfaces", "linodes"]),
        )
        self.firewall_id = self.firewall.id.apply(int)
        self.register_outputs({"firewall_id": self.firewall.id})


# -- FirewallRules: the firewall's complete rule set, once the tunnel endpoints are known ------------------------------

LINODE_API = "https://api.linode.com/v4"
_SECRET_SIG = pulumi.runtime.rpc._special_sig_key  # wire signature of a secret value (if the engine sends one)


def api_rule(rule: Mapping[str, Any]) -> dict[str, Any]:
    """A rule as the program states it (FirewallInboundArgs fields) -> the Linode API's rule object."""
    return {"label": rule["label"], "action": rule["action"], "protocol": rule["protocol"], "ports": rule["ports"],
            "addresses": {"ipv4": list(rule["ipv4s"])}, "description": rule.get("description", "")}


def rules_body(props: Mapping[str, Any]) -> dict[str, Any]:
    """The body of ``PUT /networking/firewalls/{id}/rules``: both policies and every rule (it replaces them all)."""
    return {"inbound_policy": props["inbound_policy"], "outbound_policy": props["outbound_policy"],
            "inbound": [api_rule(r) for r in props["inbounds"]], "outbound": []}


def state_from_rules(body: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of ``rules_body``: the Linode API's rule set as this resource's properties."""
    return {
        "inbound_policy": body.get("inbound_policy"),
        "outbound_policy": body.get("outbound_policy"),
        "inbounds": [{"label": r.get("label"), "action": r.get("action"), "protocol": r.get("protocol"),
                      "ports": r.get("ports"), "ipv4s": list((r.get("addresses") or {}).get("ipv4") or []),
                      "description": r.get("description") or ""} for r in body.get("inbound") or []],
    }


def _rule_dict(rule: linode.FirewallInboundArgs) -> dict[str, Any]:
    return {"label": rule.label, "action": rule.action, "protocol": rule.protocol, "ports": rule.ports,
            "ipv4s": rule.ipv4s, "description": rule.description or ""}


def _token(config_token: str | None) -> str:
    """The Linode API token: the stack's ``linode:token`` (what the Linode provider uses), else LINODE_TOKEN."""
    token = config_token or os.environ.get("LINODE_TOKEN") or os.environ.get("LINODE_API_TOKEN")
    if not token:
        raise ValueError("FirewallRules needs the Linode API token: `pulumi config set --secret linode:token ...` "
                         "or LINODE_TOKEN in the environment (scope firewall:read_write)")
    if isinstance(token, dict) and token.get(_SECRET_SIG):
        token = token["value"]
    return str(token)


def linode_api_request(method: str, path: str, token: str, body: Mapping[str, Any] | None = None,
                       timeout: float = 60.0) -> dict[str, Any]:
    """One Linode API v4 call (urllib: the provider process has no other HTTP client guaranteed)."""
    import json
    import urllib.error
    import urllib.request

    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{LINODE_API}{path}", data=data, method=method, headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/json", "User-Agent": "hybrid-vpn"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (fixed https base URL)
            return json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        # Linode explains a refusal in {"errors": [{"field": ..., "reason": ...}]}; the token is in no part of it.
        raise RuntimeError(f"Linode API {method} {path}: HTTP {exc.code}: {linode_error_reasons(exc.read())}") from None


def linode_error_reasons(body: bytes) -> str:
    import json

    try:
        errors = json.loads(body or b"{}").get("errors") or []
    except ValueError:
        return body[:200].decode(errors="replace")
    return "; ".join(f"{e.get('field') + ': ' if e.get('field') else ''}{e.get('reason', '')}" for e in errors) or "-"


class FirewallRulesProvider(pulumi.dynamic.ResourceProvider):
    """Replaces a firewall's rule set. ``request`` is injectable so tests never reach the network."""

    def __init__(self, request=linode_api_request):
        self._request = request
        self._config_token: str | None = None

    def configure(self, req: pulumi.dynamic.ConfigureRequest) -> None:
        self._config_token = req.config.get("linode:token")

    def _put(self, props: Mapping[str, Any]) -> dict[str, Any]:
        firewall_id = int(props["firewall_id"])
        self._request("PUT", f"/networking/firewalls/{firewall_id}/rules", _token(self._config_token),
                      rules_body(props))
        log.info("firewall %s: %d inbound rule(s) applied", firewall_id, len(props["inbounds"]))
        return {**props, "rules_applied": len(props["inbounds"])}

    def create(self, props: dict[str, Any]) -> pulumi.dynamic.CreateResult:
        return pulumi.dynamic.CreateResult(id_=str(int(props["firewall_id"])), outs=self._put(props))

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> pulumi.dynamic.DiffResult:
        keys = ("inbound_policy", "outbound_policy", "inbounds")
        changed = [k for k in ("firewall_id", *keys) if olds.get(k) != news.get(k)]
        return pulumi.dynamic.DiffResult(changes=bool(changed), replaces=[k for k in changed if k == "firewall_id"],
                                         delete_before_replace=False)

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> pulumi.dynamic.UpdateResult:
        return pulumi.dynamic.UpdateResult(outs=self._put(news))

    def read(self, id_: str, props: dict[str, Any]) -> pulumi.dynamic.ReadResult:
        """`pulumi refresh`: the firewall's live rules, so a rule added or removed in the Cloud Manager shows as a
        diff (and the next `up` puts the program's set back)."""
        live = self._request("GET", f"/networking/firewalls/{int(id_)}/rules", _token(self._config_token))
        outs = {**props, **state_from_rules(live)}
        return pulumi.dynamic.ReadResult(id_, outs)

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        # Nothing to undo: on destroy the firewall itself goes; on a new firewall id the new one gets its rules.
        return None


class FirewallRules(pulumi.dynamic.Resource, module="hybrid-vpn", name="FirewallRules"):
    """The gateway firewall's complete rule set. Type token: pulumi-python:dynamic/hybrid-vpn:FirewallRules."""

    rules_applied: pulumi.Output[int]

    def __init__(self, name: str, firewall_id: pulumi.Input[int], tunnel_outside_ips: Sequence[pulumi.Input[str]],
                 admin_cidrs: Sequence[str], opts: pulumi.ResourceOptions | None = None):
        props = {
            "firewall_id": firewall_id,
            "inbound_policy": "DROP",
            "outbound_policy": "ACCEPT",
            "inbounds": [_rule_dict(r) for r in firewall_inbound_rules(tunnel_outside_ips, admin_cidrs)],
            "rules_applied": None,
        }
        super().__init__(FirewallRulesProvider(), name, props, opts)
