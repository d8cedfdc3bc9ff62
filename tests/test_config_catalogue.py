"""The stack config model: the example stacks validate, and a catalogue of bad configurations is refused with
messages that name the key, the rule and a right example. Pure, except the last tests: ``load_stack_config`` under
the SDK (mocks, no engine)."""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path
from typing import Any

import pulumi
import pytest
import yaml

from infra.config import DEFAULTS, ConfigError, Secret, StackConfig, load_stack_config, parse_stack_config

REPO = Path(__file__).resolve().parent.parent


def stack_file(name: str) -> dict[str, Any]:
    """The hybrid-vpn keys of stacks/Pulumi.<name>.yaml, without the namespace prefix."""
    config = yaml.safe_load((REPO / "stacks" / f"Pulumi.{name}.yaml").read_text())["config"]
    return {key.split(":", 1)[1]: value for key, value in config.items() if key.startswith("hybrid-vpn:")}


# Public key lines made by `ssh-keygen -t ed25519` (the private halves were thrown away): they parse.
OPERATOR_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAVxIhEPKLnSJDJbSWjsXaFcd3vWoJD9a38FGX/4KgnN ops@laptop"
SECOND_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKx2CXzp0xowL6/LgEeiGwIWHDIfLAG4aZBddpti4SFg ops2@laptop"
# A config string, never a packet: an address outside every special-purpose range stands for "the operator's".
OPERATOR_CIDR = "81.2.69.160/32"
SECRET_KEYS = ("tunnels", "delivery")  # as `pulumi config set --secret --path` marks them


def filled(cfg: dict[str, Any]) -> dict[str, Any]:
    """The dev example with the two FILL IN values filled, as a user does before the first preview."""
    cfg["linode"]["authorized_keys"] = [OPERATOR_KEY]
    cfg["admin_cidrs"] = [OPERATOR_CIDR]
    return cfg


def good() -> dict[str, Any]:
    return filled(copy.deepcopy(stack_file("dev")))


def with_(path: str, value: Any, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """A copy of the good config with one dotted key set (``None`` deletes it)."""
    cfg = base if base is not None else good()
    *parents, last = path.split(".")
    node = cfg
    for p in parents:
        node = node.setdefault(p, {})
    if value is None:
        node.pop(last, None)
    else:
        node[last] = value
    return cfg


def problems_of(cfg: dict[str, Any], **options: Any) -> list[str]:
    options.setdefault("secret_keys", SECRET_KEYS)
    with pytest.raises(ConfigError) as info:
        parse_stack_config(cfg, **options)
    return info.value.problems


def named(problems: list[str], key: str) -> str:
    matching = [p for p in problems if p.startswith(f"{key}: ")]
    assert matching, f"no problem names {key}; got:\n" + "\n".join(problems)
    return matching[0]


# (id, config, the key the message must name, fragments of the rule/example the message must contain)
CATALOGUE: list[tuple[str, dict[str, Any], str, tuple[str, ...]]] = [
    ("inside-cidr-not-30", with_("tunnels.inside_cidrs", ["169.254.10.0/29", "169.254.11.0/30"]),
     "hybrid-vpn:tunnels.inside_cidrs[0]", ("not a /30 inside 169.254.0.0/16", "example: 169.254.10.0/30")),
    ("inside-cidr-outside-link-local", with_("tunnels.inside_cidrs", ["169.254.10.0/30", "10.0.0.0/30"]),
     "hybrid-vpn:tunnels.inside_cidrs[1]", ("not a /30 inside 169.254.0.0/16",)),
    ("inside-cidr-reserved", with_("tunnels.inside_cidrs", ["169.254.10.0/30", "169.254.5.0/30"]),
     "hybrid-vpn:tunnels.inside_cidrs[1]", ("169.254.5.0/30 is reserved by AWS", "169.254.169.252/30",
                                            "example: 169.254.10.0/30")),
    ("inside-cidr-reserved-169-252", with_("tunnels.inside_cidrs", ["169.254.169.252/30", "169.254.11.0/30"]),
     "hybrid-vpn:tunnels.inside_cidrs[0]", ("reserved by AWS",)),
    ("inside-cidrs-same", with_("tunnels.inside_cidrs", ["169.254.10.0/30", "169.254.10.0/30"]),
     "hybrid-vpn:tunnels.inside_cidrs[1]", ("each tunnel needs its own",)),
    ("inside-cidrs-not-a-pair", with_("tunnels.inside_cidrs", ["169.254.10.0/30"]),
     "hybrid-vpn:tunnels.inside_cidrs", ("exactly 2",)),
    ("inside-cidr-host-bits", with_("tunnels.inside_cidrs", ["169.254.10.1/30", "169.254.11.0/30"]),
     "hybrid-vpn:tunnels.inside_cidrs[0]", ("no host bits set",)),
    ("psk-too-short", with_("tunnels.psks", ["Short7", "Valid_psk_number_2"]),
     "hybrid-vpn:tunnels.psks[0]", ("shorter than 8 characters", "pulumi config set --secret")),
    ("psk-bad-character", with_("tunnels.psks", ["Valid_psk_number_1", "has-a-dash-inside"]),
     "hybrid-vpn:tunnels.psks[1]", ("other than letters, digits, '.' and '_'",)),
    ("psk-starts-with-zero", with_("tunnels.psks", ["0starts_with_zero", "Valid_psk_number_2"]),
     "hybrid-vpn:tunnels.psks[0]", ("starts with '0'",)),
    ("psk-too-long", with_("tunnels.psks", ["A" * 65, "Valid_psk_number_2"]),
     "hybrid-vpn:tunnels.psks[0]", ("longer than 64 characters",)),
    # `$` also matches before a final newline: the rules must hold for the whole string.
    ("psk-trailing-newline", with_("tunnels.psks", ["Valid_psk_number_1\n", "Valid_psk_number_2"]),
     "hybrid-vpn:tunnels.psks[0]", ("other than letters, digits, '.' and '_'",)),
    ("interface-trailing-newline", with_("tunnels.interfaces", ["vti-aws1\n", "vti-aws2"]),
     "hybrid-vpn:tunnels.interfaces[0]", ("a Linux interface name", "vti-aws1")),
    ("phase1-lifetime-too-long", with_("crypto.phase1", {**DEFAULTS["crypto"]["phase1"], "lifetime_seconds": 30000}),
     "hybrid-vpn:crypto.phase1.lifetime_seconds", ("900..28800", "example: 28800")),
    ("phase2-lifetime-too-short", with_("crypto.phase2", {**DEFAULTS["crypto"]["phase2"], "lifetime_seconds": 600}),
     "hybrid-vpn:crypto.phase2.lifetime_seconds", ("900..3600",)),
    ("phase2-not-below-phase1", with_("crypto.phase1", {**DEFAULTS["crypto"]["phase1"], "lifetime_seconds": 1800},
                                      with_("crypto.phase2", {**DEFAULTS["crypto"]["phase2"],
                                                              "lifetime_seconds": 1800})),
     "hybrid-vpn:crypto.phase2.lifetime_seconds", ("must be below phase1.lifetime_seconds (1800)",)),
    ("rekey-margin-above-half-phase2", with_("crypto.rekey_margin_seconds", 1801),
     "hybrid-vpn:crypto.rekey_margin_seconds", ("above half of phase2.lifetime_seconds", "3600 / 2 = 1800")),
    ("rekey-margin-below-60", with_("crypto.rekey_margin_seconds", 30),
     "hybrid-vpn:crypto.rekey_margin_seconds", (">= 60",)),
    ("encryption-not-offered", with_("crypto.phase1", {**DEFAULTS["crypto"]["phase1"], "encryption": ["3DES"]}),
     "hybrid-vpn:crypto.phase1.encryption[0]", ("'3DES' is not offered by AWS", "AES256-GCM-16")),
    ("integrity-not-offered", with_("crypto.phase2", {**DEFAULTS["crypto"]["phase2"], "integrity": ["MD5"]}),
     "hybrid-vpn:crypto.phase2.integrity[0]", ("'MD5' is not offered by AWS", "SHA2-512")),
    ("phase1-dh-group-5", with_("crypto.phase1", {**DEFAULTS["crypto"]["phase1"], "dh_groups": [14, 5]}),
     "hybrid-vpn:crypto.phase1.dh_groups[1]", ("group 5 is not offered by AWS for phase1",)),
    ("phase2-dh-group-1", with_("crypto.phase2", {**DEFAULTS["crypto"]["phase2"], "dh_groups": [1]}),
     "hybrid-vpn:crypto.phase2.dh_groups[0]", ("group 1 is not offered by AWS for phase2",)),
    ("ike-v1", with_("crypto.ike_version", 1), "hybrid-vpn:crypto.ike_version", ("only IKEv2", "example: 2")),
    ("dpd-timeout-too-short", with_("crypto.dpd_timeout_seconds", 10),
     "hybrid-vpn:crypto.dpd_timeout_seconds", ("30..3600 seconds",)),
    ("dpd-action-unknown", with_("crypto.dpd_timeout_action", "hold"),
     "hybrid-vpn:crypto.dpd_timeout_action", ("clear, restart, none",)),
    ("startup-action-unknown", with_("crypto.startup_action", "initiate"),
     "hybrid-vpn:crypto.startup_action", ("add (the gateway initiates) or start",)),
    ("replay-window-too-small", with_("crypto.replay_window", 32),
     "hybrid-vpn:crypto.replay_window", ("64..2048",)),
    ("aws-linode-vlan-overlap", with_("linode.vlan_cidrs", ["10.0.128.0/17"],
                                      with_("linode.gateway_vlan_address", "10.0.128.1/24")),
     "hybrid-vpn:linode.vlan_cidrs[0]", ("overlaps the AWS network 10.0.0.0/16",)),
    ("aws-linode-subnet-overlap", with_("linode.subnet_cidr", "10.0.8.0/24"),
     "hybrid-vpn:linode.subnet_cidr", ("overlaps the AWS network 10.0.0.0/16",)),
    ("gateway-vlan-address-outside", with_("linode.gateway_vlan_address", "192.168.1.1/24"),
     "hybrid-vpn:linode.gateway_vlan_address", ("outside every VLAN CIDR", "example: 172.16.1.1/24")),
    ("gateway-vlan-address-no-prefix", with_("linode.gateway_vlan_address", "172.16.1.1"),
     "hybrid-vpn:linode.gateway_vlan_address", ("needs its prefix length",)),
    ("gateway-vlan-address-network", with_("linode.gateway_vlan_address", "172.16.1.0/24"),
     "hybrid-vpn:linode.gateway_vlan_address", ("network or broadcast address",)),
    ("more-than-100-routes", with_("linode.vlan_cidrs", [f"172.16.{i}.0/24" for i in range(101)]),
     "hybrid-vpn:linode.vlan_cidrs", ("got 101", "AWS's limit of 100 routes")),
    ("malformed-aws-cidr", with_("aws.cidrs", ["10.0.0.0/33"]), "hybrid-vpn:aws.cidrs[0]",
     ("not an IPv4 network in CIDR form", "example: [10.0.0.0/16]")),
    ("aws-cidr-not-a-list", with_("aws.cidrs", "10.0.0.0/16"), "hybrid-vpn:aws.cidrs", ("must be a list",)),
    ("aws-cidr-outside-new-vpc", with_("aws.cidrs", ["10.1.0.0/16"]), "hybrid-vpn:aws.cidrs[0]",
     ("outside the new VPC 10.0.0.0/16",)),
    ("malformed-vlan-cidr", with_("linode.vlan_cidrs", ["172.16.0.0/12", "garbage"]),
     "hybrid-vpn:linode.vlan_cidrs[1]", ("not an IPv4 network",)),
    ("public-subnet-cidr", with_("linode.subnet_cidr", "203.0.113.0/24"), "hybrid-vpn:linode.subnet_cidr",
     ("not inside a private (RFC 1918) range", "example: 10.8.0.0/24")),
    ("asn-public", with_("aws.amazon_side_asn", 16509), "hybrid-vpn:aws.amazon_side_asn",
     ("64512-65534 or 4200000000-4294967294", "example: 64512")),
    ("asn-not-a-number", with_("aws.amazon_side_asn", "64512"), "hybrid-vpn:aws.amazon_side_asn",
     ("must be an integer ASN",)),
    ("asn-equals-customer-gateway", with_("aws.amazon_side_asn", 65000), "hybrid-vpn:routing.customer_asn",
     ("65000 is both routing.customer_asn", "and aws.amazon_side_asn", "must differ")),
    ("aws-region-malformed", with_("aws.region", "us-east"), "hybrid-vpn:aws.region",
     ("an AWS region name", "example: us-east-1")),
    ("linode-region-malformed", with_("linode.region", "Chicago"), "hybrid-vpn:linode.region",
     ("a Linode region id", "example: us-ord")),
    ("aws-region-missing", with_("aws.region", None), "hybrid-vpn:aws.region", ("is required",)),
    ("vpc-id-and-cidr", with_("aws.vpc_id", "vpc-0a1b2c3d4e5f60718"), "hybrid-vpn:aws.vpc_id",
     ("set exactly one of vpc_id", "not both")),
    ("vpc-id-malformed", with_("aws.vpc_id", "vpc-xyz", with_("aws.vpc_cidr", None)), "hybrid-vpn:aws.vpc_id",
     ("'vpc-' + 8 or 17 hex digits",)),
    ("route-table-id-malformed", with_("aws.route_table_ids", ["rtb-nothex"]), "hybrid-vpn:aws.route_table_ids[0]",
     ("a route table id",)),
    ("route-tables-word", with_("aws.route_table_ids", "every"), "hybrid-vpn:aws.route_table_ids",
     ("the word all or a list",)),
    ("unknown-key-typo", with_("aws.regoin", "us-east-1"), "hybrid-vpn:aws.regoin",
     ("unknown key", "did you mean 'region'")),
    ("unknown-top-level-key", with_("tunnel", {}), "hybrid-vpn:tunnel", ("unknown key", "hybrid-vpn:tunnels")),
    ("vlan-label-underscore", with_("linode.vlan_label", "hybrid_vpn"), "hybrid-vpn:linode.vlan_label",
     ("letters, digits and dashes",)),
    ("authorized-key-garbage", with_("linode.authorized_keys", ["not a key"]), "hybrid-vpn:linode.authorized_keys[0]",
     ("not an OpenSSH public key line",)),
    ("marks-equal", with_("tunnels.marks", [100, 100]), "hybrid-vpn:tunnels.marks[1]", ("each tunnel needs its own",)),
    ("mtu-above-aws-max", with_("tunnels.mtu", 1500), "hybrid-vpn:tunnels.mtu", ("576..1446",)),
    ("mss-above-mtu", with_("tunnels.tcp_mss", 1400), "hybrid-vpn:tunnels.tcp_mss", ("MSS <= MTU - 40",)),
    ("failover-primary-unknown", with_("failover.primary", "tunnel3"), "hybrid-vpn:failover.primary",
     ("one of tunnel1, tunnel2",)),
    ("admin-cidrs-empty-with-delivery", with_("admin_cidrs", []), "hybrid-vpn:admin_cidrs",
     ("would block the SSH push",)),
    ("admin-cidr-without-prefix", with_("admin_cidrs", ["198.51.100.7"]), "hybrid-vpn:admin_cidrs[0]",
     ("it needs a prefix length", "example: [198.51.100.7/32]")),
    ("bool-is-not-an-int", with_("crypto.replay_window", True), "hybrid-vpn:crypto.replay_window",
     ("must be an integer",)),
    ("delivery-enabled-not-bool", with_("delivery.enabled", "yes"), "hybrid-vpn:delivery.enabled",
     ("true or false",)),
    ("ssh-private-key-not-pem", with_("delivery.ssh_private_key", "hunter2"), "hybrid-vpn:delivery.ssh_private_key",
     ("(value hidden)", "not an unencrypted OpenSSH or PEM private key", "pulumi config set --secret")),
    ("ssh-private-key-pem-header-only",
     with_("delivery.ssh_private_key", "-----BEGIN OPENSSH PRIVATE KEY-----\nx\n-----END OPENSSH PRIVATE KEY-----"),
     "hybrid-vpn:delivery.ssh_private_key", ("not an unencrypted OpenSSH or PEM private key",)),
    # The placeholder the example stack used to ship: it looks like a key and is not even base64.
    ("authorized-key-placeholder", with_("linode.authorized_keys", [
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHybridVpnExampleKeyReplaceMe0000000000000 you@laptop"]),
     "hybrid-vpn:linode.authorized_keys[0]", ("not valid base64", "~/.ssh/id_ed25519.pub")),
    ("authorized-key-type-mismatch", with_("linode.authorized_keys", ["ssh-rsa " + OPERATOR_KEY.split()[1]]),
     "hybrid-vpn:linode.authorized_keys[0]", ("the line says 'ssh-rsa' but its key data is of type 'ssh-ed25519'",)),
    ("authorized-key-truncated", with_("linode.authorized_keys", [OPERATOR_KEY.split()[0] + " "
                                                                  + OPERATOR_KEY.split()[1][:48]]),
     "hybrid-vpn:linode.authorized_keys[0]", ("shorter than its own length fields",)),
    ("authorized-key-unknown-type", with_("linode.authorized_keys", ["ssh-dss AAAAB3NzaC1kc3MAAACBAP1 old@box"]),
     "hybrid-vpn:linode.authorized_keys[0]", ("unknown key type 'ssh-dss'",)),
    ("authorized-key-no-data", with_("linode.authorized_keys", ["ssh-ed25519"]),
     "hybrid-vpn:linode.authorized_keys[0]", ("expected '<type> <base64 key data> [comment]'",)),
    ("tunnel-interface-is-the-public-nic", with_("tunnels.interfaces", ["eth0", "vti-aws2"]),
     "hybrid-vpn:tunnels.interfaces[0]", ("'eth0' is the gateway's public", "example: vti-aws1")),
    ("tunnel-interface-is-the-vlan-nic", with_("tunnels.interfaces", ["vti-aws1", "eth1"]),
     "hybrid-vpn:tunnels.interfaces[1]", ("'eth1' is the gateway's VLAN NIC",)),
    ("tunnel-interface-is-loopback", with_("tunnels.interfaces", ["lo", "vti-aws2"]),
     "hybrid-vpn:tunnels.interfaces[0]", ("loopback",)),
    # GCM mixed with CBC is fine (the renderer gives each kind its own proposal); CBC without integrity is not.
    ("cbc-without-integrity", with_("crypto.phase2", {**DEFAULTS["crypto"]["phase2"],
                                                      "encryption": ["AES256-GCM-16", "AES256"], "integrity": []}),
     "hybrid-vpn:crypto.phase2.integrity", ("non-GCM encryption needs an integrity algorithm",)),
]


def test_the_catalogue_is_big_and_distinct():
    assert len(CATALOGUE) >= 25
    assert len({case[0] for case in CATALOGUE}) == len(CATALOGUE)


@pytest.mark.parametrize(("config", "key", "fragments"), [c[1:] for c in CATALOGUE], ids=[c[0] for c in CATALOGUE])
def test_bad_config_is_refused_with_key_rule_and_example(config, key, fragments):
    message = named(problems_of(config), key)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} missing from {message!r}"
    assert "example" in message or "e.g." in message or "did you mean" in message, message


def test_example_stacks_are_valid():
    assert isinstance(parse_stack_config(good(), real_cloud=True), StackConfig)
    for name in ("dev", "lab"):  # on the emulated cloud, as shipped
        assert isinstance(parse_stack_config(stack_file(name)), StackConfig)
    lab = parse_stack_config(stack_file("lab"))
    assert lab.aws.cidrs == ("10.0.0.0/16",)
    assert lab.linode.gateway_vlan_address == "172.16.1.1/24"
    assert lab.tunnels.inside_cidrs == ("169.254.10.0/30", "169.254.11.0/30")


def test_defaults_fill_everything_optional():
    minimal = {
        "aws": {"region": "eu-west-1", "vpc_cidr": "10.20.0.0/16"},
        "linode": {"region": "nl-ams", "vlan_label": "v", "vlan_cidrs": ["172.16.0.0/12"],
                   "gateway_vlan_address": "172.16.1.1/24"},
        "admin_cidrs": ["198.51.100.7/32"],
    }
    config = parse_stack_config(minimal)
    assert config.aws.cidrs == ("10.20.0.0/16",)  # defaults to the new VPC
    assert config.aws.route_table_ids is None  # "all"
    assert config.tunnels.inside_cidrs is None and config.tunnels.psks is None
    assert config.crypto.phase1.lifetime_seconds == DEFAULTS["crypto"]["phase1"]["lifetime_seconds"]
    assert config.crypto.dpd_timeout_action == DEFAULTS["crypto"]["dpd_timeout_action"]
    assert config.delivery.enabled is True and config.delivery.ssh_user == "root"
    assert config.failover.primary == "tunnel1"


def test_every_problem_is_reported_at_once():
    cfg = with_("aws.region", "nowhere", with_("crypto.replay_window", 1, with_("tunnels.marks", [1, 1])))
    problems = problems_of(cfg)
    keys = {p.split(": ")[0] for p in problems}
    assert {"hybrid-vpn:aws.region", "hybrid-vpn:crypto.replay_window", "hybrid-vpn:tunnels.marks[1]"} <= keys
    assert str(len(problems)) in str(ConfigError(problems))


def test_psk_values_never_appear_in_messages():
    secret_ish = "has-a-dash-secret"
    with pytest.raises(ConfigError) as info:
        parse_stack_config(with_("tunnels.psks", ["Valid_psk_number_1", secret_ish]))
    assert secret_ish not in str(info.value)
    assert "Valid_psk_number_1" not in str(info.value)


def test_configured_psks_are_wrapped_and_hidden_from_repr():
    config = parse_stack_config(with_("tunnels.psks", ["Valid_psk_number_1", "Valid.psk.number_2"]),
                                secret_keys=SECRET_KEYS)
    assert config.tunnels.psks == (Secret("Valid_psk_number_1"), Secret("Valid.psk.number_2"))
    assert config.tunnels.psks[0].reveal() == "Valid_psk_number_1"
    assert "Valid_psk_number_1" not in repr(config)


def test_existing_vpc_needs_cidrs():
    cfg = with_("aws.vpc_id", "vpc-0a1b2c3d4e5f60718", with_("aws.vpc_cidr", None, with_("aws.cidrs", None)))
    assert any(p.startswith("hybrid-vpn:aws.cidrs: is required with vpc_id") for p in problems_of(cfg))
    ok = with_("aws.cidrs", ["10.0.0.0/16", "10.1.0.0/16"], cfg)
    assert parse_stack_config(ok).aws.vpc_id == "vpc-0a1b2c3d4e5f60718"


# ---------------------------------------------------------------------------------------------------------------------
# Secrets must arrive as secrets (issue 13, point 10)
# ---------------------------------------------------------------------------------------------------------------------
def _ssh_keypair(tmp_path: Path, name: str = "operator") -> tuple[str, str]:
    path = tmp_path / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(path)], check=True,
                   capture_output=True)
    return path.read_text(), (tmp_path / f"{name}.pub").read_text().strip()


def test_psks_set_in_clear_are_refused_without_echoing_them():
    cfg = with_("tunnels.psks", ["Valid_psk_number_1", "Valid_psk_number_2"])
    problems = problems_of(cfg, secret_keys=("delivery",))
    message = named(problems, "hybrid-vpn:tunnels.psks")
    assert "in clear in the stack file" in message and "pulumi config set --secret --path" in message
    assert "Valid_psk_number" not in str(problems)
    assert parse_stack_config(cfg, secret_keys=("tunnels",)).tunnels.psks is not None


def test_private_key_set_in_clear_is_refused(tmp_path):
    private, _ = _ssh_keypair(tmp_path)
    cfg = with_("delivery.ssh_private_key", private)
    message = named(problems_of(cfg, secret_keys=("tunnels",)), "hybrid-vpn:delivery.ssh_private_key")
    assert "in clear in the stack file" in message and "--secret" in message
    assert private.splitlines()[1] not in message
    assert parse_stack_config(cfg, secret_keys=("delivery",)).delivery.ssh_private_key is not None


# ---------------------------------------------------------------------------------------------------------------------
# A real cloud: what the SSH push needs, checked before anything is created (issue 14, point 3)
# ---------------------------------------------------------------------------------------------------------------------
def test_the_example_stack_as_shipped_fails_at_preview_with_what_to_fill_in():
    problems = problems_of(stack_file("dev"), real_cloud=True)
    keys = named(problems, "hybrid-vpn:linode.authorized_keys")
    assert "is empty but delivery.enabled is true" in keys and "~/.ssh/id_ed25519.pub" in keys
    admin = named(problems, "hybrid-vpn:admin_cidrs[0]")
    assert "198.51.100.7/32 is inside 198.51.100.0/24, a documentation range (RFC 5737)" in admin
    assert "your public IPv4>/32" in admin
    assert len(problems) == 2, problems  # nothing else to fill in
    assert isinstance(parse_stack_config(good(), real_cloud=True), StackConfig)


def test_the_lab_stack_is_accepted_only_on_the_emulated_cloud():
    """The lab's 192.0.2.0/24 operator network is what the emulated cloud uses; a real cloud refuses it."""
    assert parse_stack_config(stack_file("lab")).admin_cidrs == ("192.0.2.0/24",)
    message = named(problems_of(stack_file("lab"), real_cloud=True), "hybrid-vpn:admin_cidrs[0]")
    assert "192.0.2.0/24 is inside 192.0.2.0/24, a documentation range" in message


@pytest.mark.parametrize(("cidr", "fragment"), [
    ("10.1.2.3/32", "a private range (RFC 1918)"),
    ("192.168.1.0/24", "a private range (RFC 1918)"),
    ("100.64.7.1/32", "carrier-grade NAT"),
    ("203.0.113.0/25", "a documentation range"),
    ("127.0.0.1/32", "loopback"),
    ("169.254.169.254/32", "link-local"),
])
def test_admin_cidrs_no_firewall_on_the_internet_sees_are_refused(cidr, fragment):
    message = named(problems_of(with_("admin_cidrs", [OPERATOR_CIDR, cidr]), real_cloud=True),
                    "hybrid-vpn:admin_cidrs[1]")
    assert fragment in message and "example:" in message


def test_a_broad_admin_cidr_holding_real_addresses_is_not_refused():
    assert parse_stack_config(with_("admin_cidrs", ["0.0.0.0/0"]), real_cloud=True).admin_cidrs == ("0.0.0.0/0",)


def test_without_delivery_authorized_keys_may_be_empty():
    cfg = with_("delivery.enabled", False, with_("linode.authorized_keys", []))
    assert parse_stack_config(cfg, real_cloud=True).linode.authorized_keys == ()


def test_the_delivery_key_must_be_one_the_gateway_authorizes(tmp_path):
    private, public = _ssh_keypair(tmp_path)
    cfg = with_("delivery.ssh_private_key", private)
    message = named(problems_of(cfg, real_cloud=True), "hybrid-vpn:delivery.ssh_private_key")
    assert "is not in linode.authorized_keys" in message and "SHA256:" in message and "ssh-keygen -y" in message
    assert private.splitlines()[1] not in message
    ok = with_("linode.authorized_keys", [SECOND_KEY, public], cfg)
    assert parse_stack_config(ok, secret_keys=SECRET_KEYS, real_cloud=True).delivery.ssh_private_key is not None


def test_the_operators_address_must_be_in_admin_cidrs():
    message = named(problems_of(good(), real_cloud=True, operator_ip="81.2.69.199"), "hybrid-vpn:admin_cidrs")
    assert "does not hold 81.2.69.199" in message and "HYBRID_VPN_OPERATOR_IP" in message
    assert "example: [81.2.69.199/32]" in message
    assert parse_stack_config(good(), secret_keys=SECRET_KEYS, real_cloud=True, operator_ip="81.2.69.160\n")
    bad = problems_of(good(), real_cloud=True, operator_ip="my laptop")
    assert any(p.startswith("HYBRID_VPN_OPERATOR_IP (environment): 'my laptop' is not an IPv4 address") for p in bad)


# ---------------------------------------------------------------------------------------------------------------------
# load_stack_config under the SDK: where secret-ness and "emulated or real" come from
# ---------------------------------------------------------------------------------------------------------------------
class _NoCloud(pulumi.runtime.Mocks):
    def new_resource(self, args):
        raise AssertionError("load_stack_config must create nothing")

    def call(self, args):
        raise AssertionError("load_stack_config must invoke nothing")


@pytest.fixture
def sdk_config():
    """Set the stack config as the language host does (set_all_config with the engine's secret keys)."""
    from pulumi.runtime import settings
    from pulumi.runtime.config import set_all_config

    def configure(cfg: dict[str, Any], secret: tuple[str, ...], monitor: Any = None) -> None:
        pulumi.runtime.set_mocks(_NoCloud(), project="hybrid-vpn", stack="dev", preview=True)
        if monitor is not None:  # what `pulumi up` has: a gRPC client of the engine, no mock
            settings.SETTINGS.monitor = monitor
        set_all_config({f"hybrid-vpn:{k}": json.dumps(v) for k, v in cfg.items()},
                       [f"hybrid-vpn:{k}" for k in secret])

    yield configure
    set_all_config({}, [])
    settings.set_root_resource(None)


def test_load_reads_secret_keys_from_the_sdk(sdk_config):
    cfg = with_("tunnels.psks", ["Valid_psk_number_1", "Valid_psk_number_2"])
    sdk_config(cfg, secret=())
    with pytest.raises(ConfigError, match=r"hybrid-vpn:tunnels.psks: \(values hidden\) are in clear"):
        load_stack_config()
    sdk_config(cfg, secret=("tunnels",))
    assert load_stack_config().tunnels.psks is not None


def test_load_applies_the_real_cloud_rules_when_no_mock_monitor_runs(sdk_config, monkeypatch):
    monkeypatch.delenv("HYBRID_VPN_OPERATOR_IP", raising=False)
    sdk_config(stack_file("dev"), secret=())
    assert load_stack_config().admin_cidrs == ("198.51.100.7/32",)  # under mocks: the emulated cloud
    sdk_config(stack_file("dev"), secret=(), monitor=object())
    with pytest.raises(ConfigError) as info:
        load_stack_config()
    assert {p.split(": ")[0] for p in info.value.problems} == {"hybrid-vpn:linode.authorized_keys",
                                                               "hybrid-vpn:admin_cidrs[0]"}
    monkeypatch.setenv("HYBRID_VPN_OPERATOR_IP", "81.2.69.199")
    sdk_config(good(), secret=(), monitor=object())
    with pytest.raises(ConfigError, match=r"hybrid-vpn:admin_cidrs: does not hold 81.2.69.199"):
        load_stack_config()
