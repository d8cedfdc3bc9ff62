"""Property: what preview accepts, the gateway accepts (issue 17, part 3).

Random stack configs (seeded: every run draws the same cases) within the documented rules all pass infra/config.py and
the preview check, render, and the agent accepts their agent.json. Random mutations of them (numbers out of range, bad
names, duplicate or overlapping CIDRs, bad crypto combinations, odd stack names, ...) are either refused at preview
(infra/config.py or infra/preview_check.py, before any resource) or accepted end to end: rendered from a host_config
with values the clouds could return (not the preview's placeholders) and accepted by the agent's reader. Never
accepted at preview and refused later. A few cases of each kind also run the whole program against the emulated cloud.

Plain ``random.Random(seed)`` rather than hypothesis: no new dependency, the same cases on every machine, and a
failing case is named by its index and printed in full.
"""

from __future__ import annotations

import base64
import copy
import ipaddress
import json
import random
import string
import struct
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from hostconfig.contract.connection import Connection
from infra.aws_rules import AWS_ENCRYPTION, AWS_INTEGRITY, AWS_PHASE1_DH, AWS_PHASE2_DH, AWS_RESERVED_INSIDE
from infra.config import ConfigError, StackConfig, parse_stack_config
from infra.outputs import GatewayFacts, TunnelFacts, build_host_config
from infra.preview_check import FROM_CLOUD, FROM_PROGRAM, STACK_NAME, preview_problems
from lab.cloud import CloudAddressPlan, run_program

SEED = 17_03
VALID_CASES = 200
MUTATED_CASES = 1000
PROGRAM_RUNS = 6  # of each kind: the whole program under the emulated cloud (~0.5-1 s each)
SECRET_KEYS = ("tunnels", "delivery")


def label_of(stack: str) -> str:
    return f"hybrid-vpn-{stack}-gw"  # as __main__.py names the gateway


# ----------------------------------------------------------------------------------------- random valid configs

# Every /30 AWS may use as a tunnel's inside CIDR.
INSIDE_CHOICES = [n for n in ipaddress.IPv4Network("169.254.0.0/16").subnets(new_prefix=30)
                  if n not in AWS_RESERVED_INSIDE]


def _net(rng: random.Random, within: str, prefixes: tuple[int, int]) -> ipaddress.IPv4Network:
    outer = ipaddress.IPv4Network(within)
    prefix = rng.randint(max(prefixes[0], outer.prefixlen + 3), prefixes[1])  # at most 1/8 of the range each
    count = 2 ** (prefix - outer.prefixlen)
    return ipaddress.IPv4Network((int(outer.network_address) + rng.randrange(count) * 2 ** (32 - prefix), prefix))


def _disjoint(rng: random.Random, count: int, within: str, prefixes: tuple[int, int],
              avoid: list[ipaddress.IPv4Network]) -> list[ipaddress.IPv4Network]:
    out: list[ipaddress.IPv4Network] = []
    for _ in range(1000):
        net = _net(rng, within, prefixes)
        if not any(net.overlaps(o) for o in out + avoid):
            out.append(net)
        if len(out) == count:
            return out
    raise AssertionError(f"no {count} disjoint networks in {within} (the generator's bug)")


def _ifname(rng: random.Random) -> str:
    first = rng.choice(string.ascii_letters)
    rest = "".join(rng.choice(string.ascii_letters + string.digits + "_.-") for _ in range(rng.randint(0, 14)))
    return first + rest


def _psk(rng: random.Random) -> str:
    alphabet = string.ascii_letters + string.digits + "._"
    return rng.choice(string.ascii_letters) + "".join(rng.choice(alphabet) for _ in range(rng.randint(7, 63)))


def _phase(rng: random.Random, dh: tuple[int, ...], lifetime: int) -> dict[str, Any]:
    gcm = [a for a in AWS_ENCRYPTION if a.endswith("-GCM-16")]
    cbc = [a for a in AWS_ENCRYPTION if not a.endswith("-GCM-16")]
    family = rng.choice((gcm, cbc))
    return {"encryption": rng.sample(family, rng.randint(1, len(family))),
            "integrity": rng.sample(AWS_INTEGRITY, rng.randint(1, len(AWS_INTEGRITY))),
            "dh_groups": rng.sample(dh, rng.randint(1, 4)), "lifetime_seconds": lifetime}


def random_stack_config(rng: random.Random) -> dict[str, Any]:
    """A stack config (bare keys, as parse_stack_config takes them) inside every documented rule."""
    aws_nets = _disjoint(rng, rng.randint(1, 4), "10.0.0.0/9", (16, 24), [])
    subnet = _disjoint(rng, 1, "10.128.0.0/9", (24, 29), aws_nets)[0]
    vlan_nets = _disjoint(rng, rng.randint(1, 4), rng.choice(("172.16.0.0/12", "192.168.0.0/16")), (16, 26), [])
    vlan_host = vlan_nets[0][rng.randint(1, min(50, vlan_nets[0].num_addresses - 2))]
    if rng.random() < 0.5:
        vpc = aws_nets[0].supernet(new_prefix=max(16, aws_nets[0].prefixlen - rng.randint(0, 2)))
        aws: dict[str, Any] = {"vpc_cidr": str(vpc), "cidrs": [str(vpc)]} if rng.random() < 0.5 else {
            "vpc_cidr": str(aws_nets[0])}
        aws_nets = [ipaddress.IPv4Network(c) for c in aws.get("cidrs", [aws["vpc_cidr"]])]
    else:
        aws = {"vpc_id": "vpc-0a1b2c3d4e5f60718", "cidrs": [str(n) for n in aws_nets],
               "route_table_ids": rng.choice(("all", ["rtb-0a1b2c3d4e5f60718"]))}
    aws.update(region=rng.choice(("us-east-1", "eu-west-2", "ap-southeast-2")),
               amazon_side_asn=rng.choice((64512, rng.randint(64513, 65534), rng.randint(4200000000, 4294967294))))
    # routing: absent (static), static, or bgp with a customer ASN of either private range or a public one
    routing: dict[str, Any] | None = rng.choice((None, {"mode": "static"}, {"mode": "bgp"}, {"mode": "bgp"}))
    if routing is not None and routing["mode"] == "bgp" and rng.random() < 0.8:
        routing["customer_asn"] = rng.choice((65010, rng.randint(64512, 65534), rng.randint(4200000000, 4294967294),
                                              rng.randint(100, 2_147_483_647)))
    customer_asn = (routing or {}).get("customer_asn", 65000)
    if customer_asn in (7224, 9059, 23456):
        routing["customer_asn"] = customer_asn = 65010  # type: ignore[index]
    if aws["amazon_side_asn"] == customer_asn:  # the two ASNs differ (eBGP)
        aws["amazon_side_asn"] = 64512 if customer_asn != 64512 else 64513
    tunnels: dict[str, Any] = {}
    if rng.random() < 0.6:
        tunnels["inside_cidrs"] = [str(n) for n in rng.sample(INSIDE_CHOICES, 2)]
    if rng.random() < 0.4:
        tunnels["psks"] = [_psk(rng), _psk(rng)]
    marks = rng.sample(range(1, 2**32), 2)
    interfaces = [_ifname(rng), _ifname(rng)]
    while interfaces[0] == interfaces[1] or {"eth0", "eth1", "lo", "ip_vti0"} & set(interfaces):
        interfaces = [_ifname(rng), _ifname(rng)]
    mtu = rng.randint(576, 1446)
    tunnels.update(marks=marks, interfaces=interfaces, mtu=mtu, tcp_mss=rng.randint(536, mtu - 40))
    p1_life = rng.randint(901, 28800)
    p2_life = rng.randint(900, min(3600, p1_life - 1))
    crypto = {
        "ike_version": 2, "phase1": _phase(rng, AWS_PHASE1_DH, p1_life), "phase2": _phase(rng, AWS_PHASE2_DH, p2_life),
        "rekey_margin_seconds": rng.randint(60, p2_life // 2), "rekey_fuzz_percent": rng.randint(0, 100),
        "replay_window": rng.randint(64, 2048), "dpd_timeout_seconds": rng.randint(30, 3600),
        "dpd_timeout_action": rng.choice(("clear", "restart", "none")), "startup_action": rng.choice(("add", "start")),
    }
    targets = {str(aws_nets[0][rng.randint(1, min(200, aws_nets[0].num_addresses - 2))])
               for _ in range(rng.randint(0, 16))}
    failover = {"primary": rng.choice(("tunnel1", "tunnel2")), "probe_interval_ms": rng.randint(50, 60000),
                "probe_timeout_ms": rng.randint(50, 60000), "down_after": rng.randint(1, 100),
                "up_after": rng.randint(1, 100), "failback_hold_seconds": rng.randint(0, 3600),
                "extra_probe_targets": sorted(targets)}
    admin = sorted({f"{rng.choice(('198.51.100', '203.0.113'))}.{rng.randint(1, 254)}/32"
                    for _ in range(rng.randint(1, 3))})
    return {
        "aws": aws,
        "linode": {"region": rng.choice(("us-ord", "eu-central", "ap-south")), "subnet_cidr": str(subnet),
                   "vlan_label": f"hybrid-vpn-{rng.randint(0, 999)}", "vlan_cidrs": [str(n) for n in vlan_nets],
                   "gateway_vlan_address": f"{vlan_host}/{vlan_nets[0].prefixlen}"},
        "tunnels": tunnels, "crypto": crypto, "failover": failover, "admin_cidrs": admin,
        "tags": {"env": "prop"}, "delivery": {"enabled": rng.random() < 0.7},
        **({"routing": routing} if routing is not None else {}),
    }


def random_stack_name(rng: random.Random) -> str:
    return rng.choice(string.ascii_lowercase) + "".join(
        rng.choice(string.ascii_lowercase + string.digits + "-") for _ in range(rng.randint(0, 20))).rstrip("-")


# ------------------------------------------------------------------------------------------------------ mutations

Mutation = Callable[[dict[str, Any], random.Random], str]


def _set(section: str, key: str, values: tuple[Any, ...]) -> Mutation:
    def mutate(raw: dict[str, Any], rng: random.Random) -> str:
        value = rng.choice(values)
        raw.setdefault(section, {})[key] = copy.deepcopy(value)
        return f"{section}.{key} = {value!r}"[:120]

    return mutate


def _phase_key(phase: str, key: str, values: tuple[Any, ...]) -> Mutation:
    def mutate(raw: dict[str, Any], rng: random.Random) -> str:
        value = rng.choice(values)
        raw["crypto"][phase][key] = copy.deepcopy(value)
        return f"crypto.{phase}.{key} = {value!r}"

    return mutate


def _duplicate(section: str, key: str) -> Mutation:
    def mutate(raw: dict[str, Any], rng: random.Random) -> str:
        items = raw[section].get(key) or [raw[section].get("vpc_cidr")]
        raw[section][key] = [*items, rng.choice(items)]
        return f"{section}.{key} += a duplicate"

    return mutate


def _aws_overlaps(kind: str) -> Mutation:
    def mutate(raw: dict[str, Any], rng: random.Random) -> str:
        target = {"vlan": raw["linode"]["vlan_cidrs"][0], "subnet": raw["linode"]["subnet_cidr"],
                  "link-local": rng.choice(("169.254.0.0/16", "169.254.44.0/24", "169.254.10.0/30")),
                  "documentation": rng.choice(("198.51.100.0/24", "203.0.113.0/24", "192.0.2.0/24"))}[kind]
        raw["aws"].pop("vpc_cidr", None)
        raw["aws"].update(vpc_id="vpc-0a1b2c3d4e5f60718", cidrs=[*(raw["aws"].get("cidrs") or ["10.0.0.0/16"]),
                                                                  target])
        return f"aws.cidrs += {target} ({kind})"

    return mutate


def _vlan_address(raw: dict[str, Any], rng: random.Random) -> str:
    net = ipaddress.IPv4Network(raw["linode"]["vlan_cidrs"][0])
    value = rng.choice((f"{net[1]}/31", f"{net[1]}/32", f"{net[0]}/{net.prefixlen}", f"{net[-1]}/{net.prefixlen}",
                        "10.250.0.1/24", str(net[1]), f"{net[1]}/30", f"{net[2]}/{min(net.prefixlen + 4, 30)}"))
    raw["linode"]["gateway_vlan_address"] = value
    return f"linode.gateway_vlan_address = {value}"


def _probe_targets(raw: dict[str, Any], rng: random.Random) -> str:
    base = ipaddress.IPv4Address("10.0.4.1")
    count = rng.choice((16, 17, 40))
    targets = [str(base + i) for i in range(count)]
    if rng.random() < 0.5:
        targets = targets[:3] + targets[:1]
    raw["failover"]["extra_probe_targets"] = targets
    return f"failover.extra_probe_targets = {len(targets)} addresses ({len(set(targets))} distinct)"


def _same_inside(raw: dict[str, Any], rng: random.Random) -> str:
    value = rng.choice((["169.254.10.0/30", "169.254.10.0/30"], ["169.254.5.0/30", "169.254.11.0/30"],
                        ["169.254.10.0/29", "169.254.11.0/30"], ["169.254.10.0/30", "169.254.10.4/30"],
                        ["10.0.0.0/30", "169.254.11.0/30"]))
    raw["tunnels"]["inside_cidrs"] = value
    return f"tunnels.inside_cidrs = {value}"


def _subnet(raw: dict[str, Any], rng: random.Random) -> str:
    net = ipaddress.IPv4Network(raw["linode"]["subnet_cidr"])
    value = str(ipaddress.IPv4Network((net.network_address, rng.choice((29, 30, 31, 32)))))
    raw["linode"]["subnet_cidr"] = value
    return f"linode.subnet_cidr = {value}"


def _stack_name(raw: dict[str, Any], rng: random.Random) -> str:
    raw["__stack__"] = rng.choice(("my_stack", "dev.eu", "x" * 50, "Prod", "a" * 49, "dev-", "-dev", "9"))
    return f"stack name = {raw['__stack__']!r}"


def _same_asns(raw: dict[str, Any], rng: random.Random) -> str:
    asn = raw["aws"]["amazon_side_asn"]
    raw["routing"] = {"mode": rng.choice(("bgp", "static")), "customer_asn": asn}
    return f"routing.customer_asn = aws.amazon_side_asn = {asn}"


def _bgp_vlan_cidrs(raw: dict[str, Any], rng: random.Random) -> str:
    """VLAN CIDRs bgp mode refuses (a /32 has no halves; 34 CIDRs make 102 routes) but static accepts."""
    raw["routing"] = {**raw.get("routing", {}), "mode": rng.choice(("bgp", "bgp", "static"))}
    first = raw["linode"]["vlan_cidrs"][0]
    value = rng.choice(([first, "192.168.77.7/32"], [first, *(f"192.168.{i}.0/24" for i in range(33))],
                        [first, *(f"192.168.{i}.0/24" for i in range(32))]))
    raw["linode"]["vlan_cidrs"] = value
    return f"routing.mode {raw['routing']['mode']} with {len(value)} VLAN CIDRs (last {value[-1]})"


def _mixed_gcm(raw: dict[str, Any], rng: random.Random) -> str:
    phase = rng.choice(("phase1", "phase2"))
    raw["crypto"][phase]["encryption"] = ["AES256-GCM-16", "AES128"]
    return f"crypto.{phase}.encryption mixes GCM and CBC"


def _lifetimes(raw: dict[str, Any], rng: random.Random) -> str:
    p1 = raw["crypto"]["phase1"]["lifetime_seconds"]
    raw["crypto"]["phase2"]["lifetime_seconds"] = min(3600, p1)
    if rng.random() < 0.5:
        raw["crypto"]["rekey_margin_seconds"] = raw["crypto"]["phase2"]["lifetime_seconds"] // 2 + 1
    return "crypto: phase2 lifetime >= phase1's or margin above half of it"


MUTATIONS: list[Mutation] = [
    _set("crypto", "dpd_timeout_seconds", (29, 3600, 3601, 86400, 10**6, "30", True)),
    _set("crypto", "replay_window", (63, 64, 2048, 2049, 0)),
    _set("crypto", "rekey_fuzz_percent", (-1, 101, 0, 100)),
    _set("crypto", "ike_version", (1, 3, "2")),
    _set("failover", "probe_interval_ms", (0, 10, 19, 20, 49, 50, 60000, 60001)),
    _set("failover", "probe_timeout_ms", (0, 9, 10, 49, 60001)),
    _set("failover", "down_after", (0, 1, 100, 101, 1000, 1001)),
    _set("failover", "up_after", (0, 101, 1000, -3)),
    _set("failover", "failback_hold_seconds", (-1, 3600, 3601, 86400, 86401)),
    _set("failover", "primary", ("tunnel3", "Tunnel1", "")),
    _probe_targets,
    _set("tunnels", "mtu", (575, 576, 1446, 1447, 9000)),
    _set("tunnels", "tcp_mss", (535, 1406, 1407, 1500)),
    _set("tunnels", "marks", ([0, 1], [7, 7], [1, 2**32], [2**32 - 1, 1], [100])),
    _set("tunnels", "interfaces", (["eth0", "vti2"], ["vti1", "eth1"], ["lo", "vti2"], ["ip_vti0", "vti2"],
                                   ["-vti1", "vti2"], [".", "vti2"], ["..", "vti2"], ["_x", "vti2"],
                                   ["a" * 15, "vti2"], ["a" * 16, "vti2"], ["vti aws", "vti2"], ["vti1", "vti1"],
                                   ["vti1\n", "vti2"], ["VTI.1", "v-2"])),
    _set("tunnels", "psks", (["0startswithzero", "GoodPsk_12345"], ["short", "GoodPsk_12345"], ["x" * 65, "y" * 8],
                             ["has-dash-psk", "GoodPsk_12345"], ["SamePsk_123", "SamePsk_123"])),
    _same_inside,
    _duplicate("aws", "cidrs"),
    _duplicate("linode", "vlan_cidrs"),
    _duplicate("failover", "extra_probe_targets"),
    _aws_overlaps("vlan"),
    _aws_overlaps("subnet"),
    _aws_overlaps("link-local"),
    _aws_overlaps("documentation"),
    _set("linode", "vlan_cidrs", (["172.16.0.0/12", "172.16.1.0/24"], [f"172.16.{i}.0/24" for i in range(101)],
                                  ["172.16.0.0/12", "192.168.0.0/16"])),
    _vlan_address,
    _subnet,
    _set("linode", "vlan_label", ("bad_label", "", "x" * 65, "ok-label")),
    _mixed_gcm,
    _phase_key("phase1", "dh_groups", ([5], [14, 14], [2], [], [25])),
    _phase_key("phase2", "dh_groups", ([5], [19, 19], [1])),
    _phase_key("phase1", "encryption", (["AES256", "AES256"], ["3DES"], ["AES256-GCM-16"])),
    _phase_key("phase2", "integrity", (["SHA2-256", "SHA2-256"], [], ["MD5"])),
    _phase_key("phase1", "lifetime_seconds", (899, 28801, 900)),
    _lifetimes,
    _set("crypto", "dpd_timeout_action", ("restart", "hold", "none")),
    _set("crypto", "startup_action", ("start", "route")),
    _stack_name,
    _set("routing", "mode", ("ospf", "BGP", "", "static", "bgp", 1)),
    _set("routing", "customer_asn", (0, 1, 7224, 9059, 23456, 64512, 65000, 2_147_483_647, 2_147_483_648,
                                     4_294_967_294, 4_294_967_295, 2**32, "65010", True, None)),
    _same_asns,
    _bgp_vlan_cidrs,
    _set("admin_cidrs_holder", "_", (None,)),  # replaced below: admin_cidrs is a list, not a section
]


def _admin_duplicate(raw: dict[str, Any], rng: random.Random) -> str:
    raw["admin_cidrs"] = [*raw["admin_cidrs"], raw["admin_cidrs"][0]]
    return "admin_cidrs += a duplicate"


MUTATIONS[-1] = _admin_duplicate


# ----------------------------------------------------------------------------------------------- the outcomes

def _ed25519_line(rng: random.Random) -> str:
    blob = b"".join(struct.pack(">I", len(p)) + p for p in (b"ssh-ed25519", rng.randbytes(32)))
    return f"ssh-ed25519 {base64.b64encode(blob).decode()}"


def aws_outside_ips(aws_cidrs: tuple[str, ...] | list[str], rng: random.Random) -> list[str]:
    """AWS's endpoints are its public addresses, outside the customer's AWS CIDRs (documentation ranges stand in)."""
    aws_nets = [ipaddress.IPv4Network(c) for c in aws_cidrs]
    public = [ipaddress.IPv4Address(int(ipaddress.IPv4Address(base)) + rng.randint(1, 254))
              for base in ("198.51.100.0", "203.0.113.0", "192.0.2.0") for _ in range(3)]
    outside = sorted({str(a) for a in public if not any(a in n for n in aws_nets)})
    return rng.sample(outside, 2) if len(outside) >= 2 else ["198.51.100.1", "198.51.100.2"]


def cloud_host_config(config: StackConfig, stack: str, rng: random.Random) -> dict[str, Any]:
    """The host_config apply() builds, with values the clouds could return (drawn at random, not the placeholders)."""
    from infra.linode import PUBLIC_INTERFACE, VLAN_INTERFACE

    subnet_hosts = list(ipaddress.IPv4Network(config.linode.subnet_cidr).hosts())
    outside = aws_outside_ips(config.aws.cidrs, rng)
    if config.tunnels.inside_cidrs is not None:
        inside = list(config.tunnels.inside_cidrs)
    else:  # AWS picks any /30 of 169.254.0.0/16 it does not reserve
        inside = [str(n) for n in rng.sample(INSIDE_CHOICES, 2)]
    psks = [p.reveal() for p in config.tunnels.psks] if config.tunnels.psks else [_psk(rng), _psk(rng)]
    tunnels = []
    for out_ip, cidr, psk in zip(outside, inside, psks, strict=True):
        hosts = list(ipaddress.IPv4Network(cidr).hosts())
        tunnels.append(TunnelFacts(out_ip, cidr, str(hosts[0]), str(hosts[1]), psk))
    label = label_of(stack)
    gateway = GatewayFacts(label=label, public_ip=f"203.0.113.{rng.randint(1, 254)}",
                           private_ip=str(rng.choice(subnet_hosts[1:] or subnet_hosts)),
                           public_interface=PUBLIC_INTERFACE, vlan_interface=VLAN_INTERFACE,
                           ssh_host_public_key=f"{_ed25519_line(rng)} {label}")
    vpn_connection_id = f"vpn-{rng.randbytes(9).hex()[:17]}"  # drawn before the vgw id, as always
    return build_host_config(stack=stack, config=config, gateway=gateway, vgw_id=f"vgw-{rng.randbytes(9).hex()[:17]}",
                             connections=(Connection(vpn_connection_id, (tunnels[0], tunnels[1])),))


def end_to_end(host_config: dict[str, Any], label: str) -> None:
    """What happens after preview: user data, the delivery's render, the legacy files, the agent reading agent.json."""
    from hostconfig.agent.config import parse_config
    from hostconfig.cloudinit import render_user_data
    from hostconfig.deliver.program import render_for_delivery
    from hostconfig.gateway_paths import AGENT_CONFIG
    from hostconfig.plan import GatewayPlan
    from hostconfig.render import render_legacy_files

    render_user_data(hostname=label, ssh_host_ed25519_private="-----BEGIN OPENSSH PRIVATE KEY-----\nx\n"
                     "-----END OPENSSH PRIVATE KEY-----", ssh_host_ed25519_public=host_config["gateway"][
                         "ssh_host_public_key"])
    files = render_for_delivery(copy.deepcopy(host_config), None)
    render_legacy_files(GatewayPlan.from_host_config(copy.deepcopy(host_config)))
    agent = next(f for f in files if f["path"] == AGENT_CONFIG.path)
    parse_config(json.loads(base64.b64decode(agent["content_b64"])))


def outcome(raw: dict[str, Any], rng: random.Random) -> tuple[str, str]:
    """('refused by config' | 'refused by preview check' | 'accepted end to end', detail); raises on a violation."""
    raw = copy.deepcopy(raw)
    stack = raw.pop("__stack__", "prop")
    try:
        config = parse_stack_config(raw, secret_keys=SECRET_KEYS)
    except ConfigError as exc:
        return "refused by config", exc.problems[0]
    problems = preview_problems(config, stack=stack, label=label_of(stack))
    if problems:
        blamed = [p for p in problems if not p.startswith(("hybrid-vpn:", STACK_NAME))
                  or p.startswith((FROM_CLOUD, FROM_PROGRAM))]
        assert not blamed, f"preview refused with no stack key named: {blamed}"
        return "refused by preview check", problems[0]
    try:
        end_to_end(cloud_host_config(config, stack, rng), label_of(stack))
    except Exception as exc:  # noqa: BLE001 (any refusal after preview is the violation this test looks for)
        raise AssertionError(f"accepted at preview, refused later: {type(exc).__name__}: {exc}") from exc
    return "accepted end to end", ""


def _program_run(raw: dict[str, Any], rng: random.Random) -> None:
    """The whole program against the emulated cloud; the agent then reads the agent.json rendered from its output."""
    raw = copy.deepcopy(raw)
    stack = raw.pop("__stack__", "prop")
    aws_cidrs = raw["aws"].get("cidrs") or [raw["aws"].get("vpc_cidr") or "10.0.0.0/16"]
    try:
        outside = aws_outside_ips([str(ipaddress.IPv4Network(c)) for c in aws_cidrs], rng)
    except (TypeError, ValueError):  # a mutated, unparsable CIDR: infra/config.py refuses it anyway
        outside = ["198.51.100.1", "198.51.100.2"]
    registered: list = []
    try:
        run = run_program({f"hybrid-vpn:{k}": v for k, v in raw.items()}, stack=stack, record=registered,
                          secret_keys=("hybrid-vpn:tunnels",),
                          address_plan=CloudAddressPlan(tunnel_outside_ips=(outside[0], outside[1])))
    except ConfigError:
        assert registered == [], "refused after resources were registered"
        return
    end_to_end(run.outputs["host_config"], run.outputs["host_config"]["gateway"]["label"])


def test_random_valid_stack_configs_render_and_the_agent_accepts_them():
    rng = random.Random(SEED)
    started = time.monotonic()
    seen: Counter[str] = Counter()
    for case in range(VALID_CASES):
        raw = random_stack_config(rng)
        raw["__stack__"] = random_stack_name(rng)
        try:
            kind, detail = outcome(raw, rng)
        except AssertionError as exc:
            raise AssertionError(f"valid case {case}: {exc}\n{json.dumps(raw, indent=1)}") from None
        assert kind == "accepted end to end", f"valid case {case} {kind}: {detail}\n{json.dumps(raw, indent=1)}"
        seen[kind] += 1
        if case < PROGRAM_RUNS:
            _program_run(raw, rng)
    print(f"\n{VALID_CASES} valid configs: {dict(seen)}; {PROGRAM_RUNS} through the program; "
          f"{time.monotonic() - started:.1f} s")


def test_random_mutations_are_refused_at_preview_or_accepted_end_to_end():
    rng = random.Random(SEED + 1)
    started = time.monotonic()
    seen: Counter[str] = Counter()
    programs = Counter()
    for case in range(MUTATED_CASES):
        raw = random_stack_config(rng)
        what = [rng.choice(MUTATIONS)(raw, rng) for _ in range(1 if rng.random() < 0.8 else 2)]
        try:
            kind, _ = outcome(raw, rng)
        except AssertionError as exc:
            raise AssertionError(f"mutated case {case} ({'; '.join(what)}): {exc}\n{json.dumps(raw, indent=1)}") \
                from None
        seen[kind] += 1
        if programs[kind] < PROGRAM_RUNS // 2:
            programs[kind] += 1
            _program_run(raw, rng)
    assert seen["refused by preview check"] > 0 and seen["accepted end to end"] > 0, seen
    print(f"\n{MUTATED_CASES} mutated configs: {dict(seen)}; through the program: {dict(programs)}; "
          f"{time.monotonic() - started:.1f} s")
