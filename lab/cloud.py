"""The emulated cloud: Pulumi mocks that answer like AWS and Linode, and a runner that evaluates ``__main__.py``.

Used by the program's tests and by the local lab (``make lab``): the same program, the cloud APIs emulated, so the lab
gets the ``host_config`` the real program would export, with the lab's own addresses.

- ``CloudMocks``: realistic values per type token (ids like ``vpn-0123...``, numeric-string Linode ids, tunnel outside
  IPs and inside addresses from an injectable ``CloudAddressPlan``, AWS-style 32-character PSKs when none is given, a
  customer gateway configuration). Any invoke that is not emulated raises.
- ``SecretMarkingMonitor``: the SDK's ``MockMonitor`` ignores ``additionalSecretOutputs``; the real engine marks those
  outputs (e.g. ``tunnel1PresharedKey``, ``RandomPassword.result``, ``PrivateKey.privateKeyOpenssh``) secret, and
  also every output whose input was secret. Without this a test can "prove" a leak-free program that leaks.
- ``run_program``: evaluate the program (preview=False) and return a ``ProgramRun`` with plain output values, the paths
  that were secret, and every registered resource (type, name, inputs, dependencies).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import ipaddress
import json
import logging
import runpy
import string
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
from google.protobuf import json_format
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime import rpc
from pulumi.runtime import settings as pulumi_settings
from pulumi.runtime.config import set_all_config
from pulumi.runtime.stack import run_in_stack
from pulumi.runtime.sync_await import _sync_await

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
PROGRAM = REPO / "__main__.py"
SECRET_SIG = rpc._special_sig_key  # "4dabf18193072939515e22adb298388d"
SECRET_VALUE = rpc._special_secret_sig
UNKNOWN = rpc.UNKNOWN
# hostconfig.deliver.provider.GatewayConfig: a dynamic resource, emulated here like a cloud resource.
GATEWAY_CONFIG_TYPE = "pulumi-python:dynamic/hybrid-vpn:GatewayConfig"
# infra.linode.FirewallRules: a dynamic resource that replaces the gateway firewall's rules (Linode API).
FIREWALL_RULES_TYPE = "pulumi-python:dynamic/hybrid-vpn:FirewallRules"

# What the engine marks secret although the program did not (the providers' additionalSecretOutputs).
ENGINE_SECRET_OUTPUTS: dict[str, tuple[str, ...]] = {
    "aws:ec2/vpnConnection:VpnConnection": ("customerGatewayConfiguration", "tunnel1PresharedKey",
                                            "tunnel2PresharedKey"),
    "random:index/randomPassword:RandomPassword": ("bcryptHash", "result"),
    "tls:index/privateKey:PrivateKey": ("privateKeyOpenssh", "privateKeyPem", "privateKeyPemPkcs8"),
}


@dataclass(frozen=True)
class CloudAddressPlan:
    """What the emulated clouds allocate. Documentation ranges only."""

    gateway_public_ip: str = "203.0.113.10"  # the Linode 1:1 NAT address
    gateway_private_ip: str | None = None  # None: the subnet's network address + 2
    tunnel_outside_ips: tuple[str, str] = ("198.51.100.1", "198.51.100.2")
    inside_cidrs: tuple[str, str] = ("169.254.44.0/30", "169.254.45.0/30")  # when the config leaves it to AWS
    route_table_ids: tuple[str, ...] = ("rtb-0a1b2c3d4e5f60718", "rtb-0f1e2d3c4b5a69788")  # of an existing VPC

    @classmethod
    def from_lab_plan(cls, plan: Any) -> CloudAddressPlan:
        """The cloud-side part of lab/addresses.py's LabAddressPlan."""
        return cls(gateway_public_ip=plan.gateway_public_ip, gateway_private_ip=plan.gateway_private_ip,
                   tunnel_outside_ips=tuple(plan.aws_outside_ips), inside_cidrs=tuple(plan.inside_cidrs))


DEFAULT_PLAN = CloudAddressPlan()


def _hex_id(prefix: str, seed: str, digits: int = 17) -> str:
    return f"{prefix}-{hashlib.sha256(seed.encode()).hexdigest()[:digits]}"


def _aws_psk(seed: str) -> str:
    """32 alphanumerics like AWS generates, never starting with 0; deterministic for stable fixtures."""
    alphabet = string.ascii_letters + string.digits
    digest = hashlib.sha256(f"psk:{seed}".encode()).digest() + hashlib.sha256(f"psk2:{seed}".encode()).digest()
    chars = [alphabet[b % len(alphabet)] for b in digest[:32]]
    if chars[0] == "0":
        chars[0] = "A"
    return "".join(chars)


def _password(seed: str, inputs: Mapping[str, Any]) -> str:
    """RandomPassword.result honouring the charset inputs (length, lower/upper/numeric/special, overrideSpecial)."""
    length = int(inputs.get("length", 16))
    alphabet = ""
    if inputs.get("lower", True):
        alphabet += string.ascii_lowercase
    if inputs.get("upper", True):
        alphabet += string.ascii_uppercase
    if inputs.get("numeric", inputs.get("number", True)):
        alphabet += string.digits
    if inputs.get("special", True):
        alphabet += inputs.get("overrideSpecial", "!@#$%&*()-_=+[]{}<>:?")
    out, counter = [], 0
    while len(out) < length:
        for b in hashlib.sha256(f"{seed}:{counter}".encode()).digest():
            out.append(alphabet[b % len(alphabet)])
        counter += 1
    # Start with a zero on purpose for one seed class, so the program's "not starting with 0" guard is exercised.
    if hashlib.sha256(seed.encode()).digest()[0] % 2 == 0 and "0" in alphabet:
        out[0] = "0"
    return "".join(out[:length])


@functools.cache
def _ed25519(seed: str) -> dict[str, str]:
    """A real (deterministic) ED25519 key in the formats pulumi_tls returns.

    Cached: the OpenSSH private-key format carries random check integers, so serialising the same key twice gives two
    texts; the engine keeps one in the state, and two runs of the program must see the same one, as they would."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(f"hostkey:{seed}".encode()).digest())
    pub = key.public_key()
    openssh_pub = pub.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    raw = base64.b64decode(openssh_pub.split()[1])
    fingerprint = base64.b64encode(hashlib.sha256(raw).digest()).decode().rstrip("=")
    return {
        "privateKeyOpenssh": key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                               serialization.NoEncryption()).decode(),
        "privateKeyPem": key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()).decode(),
        "privateKeyPemPkcs8": key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption()).decode(),
        "publicKeyOpenssh": openssh_pub + "\n",
        "publicKeyPem": pub.public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode(),
        "publicKeyFingerprintSha256": f"SHA256:{fingerprint}",
        "publicKeyFingerprintMd5": hashlib.md5(raw).hexdigest(),
    }


def _cgw_configuration(vpn_id: str, cgw_ip: str, tunnels: list[dict[str, str]]) -> str:
    """A trimmed version of AWS's customer gateway configuration XML (it carries the PSKs: secret)."""
    parts = [f'<?xml version="1.0" encoding="UTF-8"?>\n<vpn_connection id="{vpn_id}">',
             "  <vpn_connection_type>ipsec.1</vpn_connection_type>"]
    for t in tunnels:
        parts.append(
            "  <ipsec_tunnel>\n"
            f"    <customer_gateway><tunnel_outside_address><ip_address>{cgw_ip}</ip_address></tunnel_outside_address>"
            f"<tunnel_inside_address><ip_address>{t['cgw']}</ip_address><network_cidr>30</network_cidr>"
            "</tunnel_inside_address></customer_gateway>\n"
            f"    <vpn_gateway><tunnel_outside_address><ip_address>{t['outside']}</ip_address>"
            f"</tunnel_outside_address><tunnel_inside_address><ip_address>{t['vgw']}</ip_address>"
            "<network_cidr>30</network_cidr></tunnel_inside_address></vpn_gateway>\n"
            f"    <ike><pre_shared_key>{t['psk']}</pre_shared_key></ike>\n"
            "  </ipsec_tunnel>")
    parts.append("</vpn_connection>")
    return "\n".join(parts)


def unwrap_secrets(value: Any, path: str = "") -> tuple[Any, set[str]]:
    """Strip Pulumi secret wrappers from a deserialized value; return it with the paths that were secret."""
    if isinstance(value, dict):
        if value.get(SECRET_SIG) == SECRET_VALUE:
            inner, paths = unwrap_secrets(value.get("value"), path)
            return inner, paths | {path}
        out, paths = {}, set()
        for k, v in value.items():
            out[k], p = unwrap_secrets(v, f"{path}.{k}" if path else str(k))
            paths |= p
        return out, paths
    if isinstance(value, list):
        out_list, paths = [], set()
        for i, v in enumerate(value):
            item, p = unwrap_secrets(v, f"{path}[{i}]")
            out_list.append(item)
            paths |= p
        return out_list, paths
    return value, set()


class CloudMocks(pulumi.runtime.Mocks):
    """AWS and Linode as seen through Pulumi: realistic state per type token, invokes answered or refused."""

    def __init__(self, plan: CloudAddressPlan = DEFAULT_PLAN):
        self.plan = plan
        self._used_linode_ids: set[int] = set()
        self._subnets: dict[int, str] = {}  # Linode subnet id -> CIDR
        self._instances: dict[int, dict[str, Any]] = {}  # Linode id -> networking facts
        self._cgw_ips: dict[str, str] = {}
        self._interface_ids: dict[int, tuple[int, int]] = {}
        self._firewalls: dict[int, list[dict[str, Any]]] = {}  # Linode firewall id -> its current inbound rules

    def _linode_id(self, kind: str, name: str) -> int:
        """A numeric Linode id derived from the resource, not from registration order (which varies from run to
        run): two runs of the program then agree on the ids of the resources they share, as a state would."""
        candidate = 41000 + int(hashlib.sha256(f"{kind}:{name}".encode()).hexdigest()[:8], 16) % 50000
        while candidate in self._used_linode_ids:
            candidate += 1
        self._used_linode_ids.add(candidate)
        return candidate

    # -- resources ------------------------------------------------------------------------------------------------
    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str | None, dict]:
        inputs, _ = unwrap_secrets(dict(args.inputs))
        typ, name = args.typ, args.name
        handler = getattr(self, "_" + typ.split(":")[-1].lower() + "_" + typ.split(":")[0], None)
        if typ.startswith("pulumi:providers:"):
            return f"{name}-provider-id", inputs
        if not args.custom:  # a component: no cloud object behind it
            return "", {}
        if typ == GATEWAY_CONFIG_TYPE:
            return self._gateway_config(name, inputs)
        if typ == FIREWALL_RULES_TYPE:
            return self._firewall_rules(name, inputs)
        if handler is None:
            raise NotImplementedError(f"lab.cloud: no emulation for resource type {typ} ({name})")
        return handler(name, inputs)

    def _gateway_config(self, name: str, inputs: dict) -> tuple[str, dict]:
        # The delivery resource is a dynamic provider: emulate its recorded state, not an SSH push (the lab pushes
        # for real through hostconfig.deliver.push, the function this provider's create/update call).
        state = {k: v for k, v in inputs.items() if k not in ("__provider", "files", "private_key", "scrub")}
        state["changed_paths"] = sorted({**inputs.get("hashes", {}), **inputs.get("secret_hashes", {})})
        return f"{inputs['host']}:{int(inputs.get('port', 22))}", state

    def _firewall_rules(self, name: str, inputs: dict) -> tuple[str, dict]:
        # What FirewallRulesProvider records after its PUT: the rules it was given; the firewall must exist.
        firewall_id = int(inputs["firewall_id"])
        if firewall_id not in self._firewalls:
            raise KeyError(f"lab.cloud: FirewallRules {name} for unknown firewall {firewall_id}")
        self._firewalls[firewall_id] = list(inputs.get("inbounds") or [])
        state = {k: v for k, v in inputs.items() if k != "__provider"}
        state["rules_applied"] = len(state.get("inbounds") or [])
        return str(firewall_id), state

    def _vpc_aws(self, name: str, inputs: dict) -> tuple[str, dict]:
        vpc_id = _hex_id("vpc", name)
        return vpc_id, {**inputs, "arn": f"arn:aws:ec2:us-east-1:123456789012:vpc/{vpc_id}",
                        "mainRouteTableId": _hex_id("rtb", f"main:{name}"),
                        "defaultRouteTableId": _hex_id("rtb", f"main:{name}"),
                        "defaultSecurityGroupId": _hex_id("sg", name), "ownerId": "123456789012"}

    def _vpngateway_aws(self, name: str, inputs: dict) -> tuple[str, dict]:
        vgw_id = _hex_id("vgw", name)
        return vgw_id, {**inputs, "arn": f"arn:aws:ec2:us-east-1:123456789012:vpn-gateway/{vgw_id}"}

    def _vpngatewayattachment_aws(self, name: str, inputs: dict) -> tuple[str, dict]:
        return _hex_id("vpn-attach", name), inputs

    def _customergateway_aws(self, name: str, inputs: dict) -> tuple[str, dict]:
        cgw_id = _hex_id("cgw", name)
        self._cgw_ips[cgw_id] = inputs.get("ipAddress", "")
        return cgw_id, {**inputs, "arn": f"arn:aws:ec2:us-east-1:123456789012:customer-gateway/{cgw_id}"}

    def _vpnconnection_aws(self, name: str, inputs: dict) -> tuple[str, dict]:
        vpn_id = _hex_id("vpn", name)
        state = dict(inputs)
        tunnels = []
        for n in (1, 2):
            cidr = inputs.get(f"tunnel{n}InsideCidr") or self.plan.inside_cidrs[n - 1]
            net = ipaddress.IPv4Network(cidr)
            vgw, cgw = str(net.network_address + 1), str(net.network_address + 2)
            psk = inputs.get(f"tunnel{n}PresharedKey") or _aws_psk(f"{name}:{n}")
            outside = self.plan.tunnel_outside_ips[n - 1]
            state.update({
                f"tunnel{n}Address": outside,
                f"tunnel{n}InsideCidr": cidr,
                f"tunnel{n}VgwInsideAddress": vgw,
                f"tunnel{n}CgwInsideAddress": cgw,
                f"tunnel{n}PresharedKey": psk,
                f"tunnel{n}BgpAsn": "65000",
                f"tunnel{n}BgpHoldtime": 30,
            })
            tunnels.append({"outside": outside, "vgw": vgw, "cgw": cgw, "psk": psk})
        cgw_ip = self._cgw_ips.get(inputs.get("customerGatewayId", ""), "")
        state["customerGatewayConfiguration"] = _cgw_configuration(vpn_id, cgw_ip, tunnels)
        state["arn"] = f"arn:aws:ec2:us-east-1:123456789012:vpn-connection/{vpn_id}"
        state["routes"] = []
        state["vgwTelemetries"] = [{"outsideIpAddress": t["outside"], "status": "DOWN", "acceptedRouteCount": 0}
                                   for t in tunnels]
        return vpn_id, state

    def _vpnconnectionroute_aws(self, name: str, inputs: dict) -> tuple[str, dict]:
        return f"{inputs.get('destinationCidrBlock')}:{inputs.get('vpnConnectionId')}", inputs

    def _vpngatewayroutepropagation_aws(self, name: str, inputs: dict) -> tuple[str, dict]:
        return f"{inputs.get('vpnGatewayId')}_{inputs.get('routeTableId')}", inputs

    def _securitygrouprule_aws(self, name: str, inputs: dict) -> tuple[str, dict]:
        return _hex_id("sgrule", name, 10), inputs

    def _vpc_linode(self, name: str, inputs: dict) -> tuple[str, dict]:
        return str(self._linode_id("vpc", name)), {**inputs, "created": "2026-01-01T00:00:00",
                                                   "updated": "2026-01-01T00:00:00"}

    def _vpcsubnet_linode(self, name: str, inputs: dict) -> tuple[str, dict]:
        subnet_id = self._linode_id("subnet", name)
        self._subnets[subnet_id] = inputs.get("ipv4", "10.8.0.0/24")
        return str(subnet_id), {**inputs, "linodes": []}

    def _instance_linode(self, name: str, inputs: dict) -> tuple[str, dict]:
        linode_id = self._linode_id("instance", name)
        subnet_id = None
        for iface in inputs.get("linodeInterfaces") or []:
            if iface.get("vlan") and iface.get("firewallId"):
                raise ValueError(f"lab.cloud: {name}: a VLAN interface cannot carry a firewall (Linode API)")
            if iface.get("firewallId") and int(iface["firewallId"]) not in self._firewalls:
                raise KeyError(f"lab.cloud: {name}: firewall {iface['firewallId']} does not exist (yet)")
            if iface.get("vpc"):
                subnet_id = int(iface["vpc"]["subnetId"])
        subnet = self._subnets.get(subnet_id or -1, "10.8.0.0/24")
        private = self.plan.gateway_private_ip or str(ipaddress.IPv4Network(subnet).network_address + 2)
        self._instances[linode_id] = {"subnet_id": subnet_id or 0, "subnet": subnet, "private": private,
                                      "interface_id": linode_id * 10 + 1}
        return str(linode_id), {**inputs, "status": "running", "ipv4s": [self.plan.gateway_public_ip],
                                "ipAddress": self.plan.gateway_public_ip, "privateIpAddress": "",
                                "ipv6": "", "specs": [{"disk": 25600, "memory": 2048, "vcpus": 1, "transfer": 2000}]}

    def _firewall_linode(self, name: str, inputs: dict) -> tuple[str, dict]:
        firewall_id = self._linode_id("firewall", name)
        self._firewalls[firewall_id] = list(inputs.get("inbounds") or [])
        return str(firewall_id), {**inputs, "status": "enabled", "devices": []}

    def _randompassword_random(self, name: str, inputs: dict) -> tuple[str, dict]:
        result = _password(name, inputs)
        bcrypt_hash = "$2a$10$" + hashlib.sha256(result.encode()).hexdigest()
        return "none", {**inputs, "result": result, "bcryptHash": bcrypt_hash}

    def _privatekey_tls(self, name: str, inputs: dict) -> tuple[str, dict]:
        if inputs.get("algorithm") != "ED25519":
            raise NotImplementedError(f"lab.cloud: PrivateKey {name}: only ED25519 is emulated")
        return hashlib.sha1(name.encode()).hexdigest(), {**inputs, **_ed25519(name)}

    # -- invokes --------------------------------------------------------------------------------------------------
    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict, list | None]:
        if args.token == "aws:ec2/getRouteTables:getRouteTables":
            return {"id": args.args.get("vpcId", "") or "rtbs", "ids": list(self.plan.route_table_ids),
                    "vpcId": args.args.get("vpcId")}, []
        if args.token == "linode:index/getInstanceNetworking:getInstanceNetworking":
            return self._networking(int(args.args["linodeId"])), []
        raise NotImplementedError(f"lab.cloud: invoke {args.token} is not emulated; add it to CloudMocks.call")

    def _networking(self, linode_id: int) -> dict:
        facts = self._instances.get(linode_id)
        if facts is None:
            raise KeyError(f"lab.cloud: getInstanceNetworking for unknown Linode {linode_id}")
        net = ipaddress.IPv4Network(facts["subnet"])
        vpc_entry = {
            "active": True, "address": facts["private"], "addressRange": "", "configId": 0,
            "gateway": str(net.network_address + 1), "interfaceId": facts["interface_id"], "ipv6Addresses": [],
            "ipv6IsPublic": False, "ipv6Range": "", "linodeId": linode_id, "nat11": self.plan.gateway_public_ip,
            "prefix": net.prefixlen, "region": "us-ord", "subnetId": facts["subnet_id"],
            "subnetMask": str(net.netmask), "vpcId": 0,
        }
        return {"id": str(linode_id), "linodeId": linode_id, "ipv6s": [],
                "ipv4s": [{"privates": [], "publics": [], "reserveds": [], "shareds": [], "vpcs": [vpc_entry]}]}


@dataclass
class RegisteredResource:
    type: str
    name: str
    urn: str
    parent: str
    inputs: dict[str, Any]  # plain values, camelCase wire names
    secret_inputs: set[str]  # paths of inputs that arrived secret
    dependencies: set[str]  # URNs
    id: str | None = None
    state: dict[str, Any] = field(default_factory=dict)
    # Resource options as the engine receives them (camelCase property names).
    delete_before_replace: bool = False
    ignore_changes: tuple[str, ...] = ()
    replace_on_changes: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()  # alias URNs or names, as sent


class SecretMarkingMonitor(pulumi_mocks.MockMonitor):
    """A MockMonitor that behaves like the engine for secrets, and records what the program registered."""

    def __init__(self, mocks: CloudMocks, mark_engine_secrets: bool = True):
        super().__init__(mocks)
        self.mark_engine_secrets = mark_engine_secrets
        self.registrations: list[RegisteredResource] = []
        self.stack_outputs: Any = None

    def RegisterResource(self, request):  # noqa: N802 (gRPC method name)
        response = super().RegisterResource(request)
        if request.type == "pulumi:pulumi:Stack":
            return response
        raw_inputs = json_format.MessageToDict(request.object, preserving_proto_field_name=True)
        inputs, secret_inputs = unwrap_secrets(_from_struct(raw_inputs))
        dependencies = set(request.dependencies)
        for deps in request.propertyDependencies.values():
            dependencies |= set(deps.urns)
        registration = self.resources.get(response.urn)
        state_plain = dict(registration.state) if registration else {}
        self.registrations.append(RegisteredResource(
            type=request.type, name=request.name, urn=response.urn, parent=request.parent, inputs=inputs,
            secret_inputs=secret_inputs, dependencies=dependencies, id=response.id or None, state=state_plain,
            delete_before_replace=bool(request.deleteBeforeReplace), ignore_changes=tuple(request.ignoreChanges),
            replace_on_changes=tuple(request.replaceOnChanges), aliases=_alias_names(request)))
        # What the engine does: additionalSecretOutputs, plus every output whose input was secret.
        to_mark = set(request.additionalSecretOutputs) | {p.split(".")[0].split("[")[0] for p in secret_inputs}
        if not to_mark or not request.custom or not self.mark_engine_secrets:
            return response
        state = rpc.deserialize_properties(response.object)
        for key in to_mark:
            if key in state and not (isinstance(state[key], dict) and state[key].get(SECRET_SIG) == SECRET_VALUE):
                state[key] = {SECRET_SIG: SECRET_VALUE, "value": state[key]}
        obj = _sync_await(rpc.serialize_properties(state, {}))
        return type(response)(urn=response.urn, id=response.id, object=obj)

    def RegisterResourceOutputs(self, request):  # noqa: N802
        if "::pulumi:pulumi:Stack::" in request.urn:
            self.stack_outputs = json_format.MessageToDict(request.outputs, preserving_proto_field_name=True)
        return super().RegisterResourceOutputs(request)


@dataclass
class ProgramRun:
    """The result of evaluating the program against the emulated cloud."""

    outputs: dict[str, Any]  # plain values
    secret_paths: set[str]  # e.g. {"host_config", "tunnels[0].psk"}
    resources: list[RegisteredResource]

    def is_secret(self, path: str) -> bool:
        """True when ``path`` or one of its ancestors was a secret in the stack outputs."""
        return any(path == p or path.startswith(p + ".") or path.startswith(p + "[") for p in self.secret_paths)

    def of_type(self, type_token: str) -> list[RegisteredResource]:
        return [r for r in self.resources if r.type == type_token]

    def one(self, type_token: str) -> RegisteredResource:
        found = self.of_type(type_token)
        if len(found) != 1:
            raise AssertionError(f"expected one {type_token}, found {len(found)}: {[r.name for r in found]}")
        return found[0]

    def plain_output_leaves(self) -> list[tuple[str, Any]]:
        """Every non-secret leaf of the outputs (path, value): where a leaked secret would show."""
        leaves: list[tuple[str, Any]] = []

        def walk(value: Any, path: str) -> None:
            if self.is_secret(path):
                return
            if isinstance(value, dict):
                for k, v in value.items():
                    walk(v, f"{path}.{k}")
            elif isinstance(value, list):
                for i, v in enumerate(value):
                    walk(v, f"{path}[{i}]")
            else:
                leaves.append((path, value))

        for name, value in self.outputs.items():
            walk(value, name)
        return leaves


def stack_config_from_file(path: Path) -> dict[str, Any]:
    """The ``config:`` mapping of a ``stacks/Pulumi.<stack>.yaml`` file (no encrypted values: the lab has none)."""
    import yaml

    data = yaml.safe_load(Path(path).read_text()) or {}
    config = data.get("config") or {}
    for key, value in config.items():
        if isinstance(value, dict) and "secure" in value:
            raise ValueError(f"{path}: {key} is encrypted (secure:); the emulated cloud cannot decrypt it, pass the "
                             "value in the stack_config dict instead")
    return config


def _config_map(stack_config: Mapping[str, Any], project: str) -> dict[str, str]:
    """Stack config as the engine hands it to the program: ``project:key`` -> JSON text (strings stay raw)."""
    out = {}
    for key, value in stack_config.items():
        full = key if ":" in key else f"{project}:{key}"
        out[full] = value if isinstance(value, str) else json.dumps(value)
    return out


def run_program(stack_config: Mapping[str, Any], project: str = "hybrid-vpn", stack: str = "lab",
                address_plan: Any = DEFAULT_PLAN, *, secret_keys: tuple[str, ...] = (),
                program: Path = PROGRAM, mark_engine_secrets: bool = True,
                record: list[RegisteredResource] | None = None) -> ProgramRun:
    """Evaluate ``__main__.py`` against the emulated cloud (preview=False) and return what it produced.

    ``stack_config``: the ``config:`` mapping of a stack file (``hybrid-vpn:aws: {...}``), or the same with bare
    keys. ``address_plan``: a ``CloudAddressPlan`` or lab/addresses.py's ``LabAddressPlan``. ``secret_keys``: config
    keys to mark secret, as ``pulumi config set --secret`` does. ``mark_engine_secrets=False`` behaves like the SDK's
    plain mock monitor (for tests that show the difference). ``record``: receives the registrations even when the
    program fails.
    """
    plan = address_plan if isinstance(address_plan, CloudAddressPlan) else CloudAddressPlan.from_lab_plan(address_plan)
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    mocks = CloudMocks(plan)
    monitor = SecretMarkingMonitor(mocks, mark_engine_secrets=mark_engine_secrets)
    if record is not None:
        monitor.registrations = record
    pulumi_settings.set_root_resource(None)
    pulumi.runtime.set_mocks(mocks, project=project, stack=stack, preview=False, monitor=monitor)
    # set_mocks registers a root stack of its own; the program gets a fresh one, as under `pulumi up`.
    pulumi_settings.set_root_resource(None)
    config = _config_map(stack_config, project)
    set_all_config(config, [k if ":" in k else f"{project}:{k}" for k in secret_keys])
    try:
        _sync_await(run_in_stack(lambda: runpy.run_path(str(program), run_name="__main__")))
    finally:
        pulumi_settings.set_root_resource(None)
        set_all_config({}, [])
    outputs, secret_paths = unwrap_secrets(_from_struct(monitor.stack_outputs or {}))
    return ProgramRun(outputs=outputs, secret_paths=secret_paths, resources=monitor.registrations)


def _alias_names(request: Any) -> tuple[str, ...]:
    """The aliases of a RegisterResource request: URNs (``aliasURNs``) or, for alias specs, their names."""
    names = list(request.aliasURNs)
    for alias in request.aliases:
        if alias.urn:
            names.append(alias.urn)
        elif alias.spec.name:
            names.append(alias.spec.name)
    return tuple(names)


def _from_struct(value: Any) -> Any:
    """JSON numbers from protobuf are floats: turn integral ones back into ints."""
    if isinstance(value, dict):
        return {k: _from_struct(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_struct(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value
