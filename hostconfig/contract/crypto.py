"""The ONE crypto profile: it sets the AWS tunnel options (program) and the strongSwan proposals (renderer), read by
the same code from the stack config and from host_config, so the two ends cannot drift."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from hostconfig.contract import rules
from hostconfig.contract.charon import (
    GATEWAY_CLOSE_ACTION,
    GATEWAY_DPD_ACTION,
    GATEWAY_START_ACTION,
    LEGACY_AUTO,
    LEGACY_CLOSE_ACTION,
    GatewaySetting,
    Section,
    child,
    ike,
    legacy,
    rendered,
)
from hostconfig.contract.reader import REQUIRED, Reader, RuleBroken, Unknown

PHASE_KEYS = ("encryption", "integrity", "dh_groups", "lifetime_seconds")


@dataclass(frozen=True)
class TunnelOption:
    """One scalar AWS tunnel option of the crypto profile, written once: its key (``crypto.<key>`` in the stack config
    and in host_config, and the CryptoProfile field), its default, how every reader checks it, and the pulumi_aws
    VpnConnection argument it sets (``tunnel<n>_<aws>``), and how the gateway applies it (``applies``: the strongSwan
    settings, hostconfig/contract/charon.py). The stack defaults, the readers, host_config's crypto object, the AWS
    mapping and the gateway's swanctl.conf and ipsec.conf lines are all made from this table.

    ``gateway``: host_config carries it (the gateway applies it, or its value shapes the gateway's files). An AWS-only
    option (``False``) stays out of host_config: the renderer's reader takes its default, so host_config and the
    goldens do not change when one is added.

    ``optional_in_host_config``: for a gateway option added after host_config version 1 first shipped (set it on every
    new row). A host_config written by an older program lacks the key; that program never set the option on AWS, so
    AWS has its default, which is the row's: the renderer's reader takes the default instead of refusing (and the
    committed host_config examples need no new key). The rows before it are required: every host_config has them."""

    key: str
    default: Any
    aws: str
    read: Callable[[Reader, str], Any]
    gateway: bool = True
    applies: tuple[GatewaySetting, ...] = ()
    optional_in_host_config: bool = False

    def __post_init__(self) -> None:
        if (self.applies or self.optional_in_host_config) and not self.gateway:
            raise ValueError(f"tunnel option {self.key}: the gateway applies it, so host_config must carry it")


def _integer(limit: rules.IntLimit) -> Callable[[Reader, str], Any]:
    return lambda r, key: r.integer(key, limit)


def _choice(choices: tuple[str, ...], rule: str, example: str) -> Callable[[Reader, str], Any]:
    return lambda r, key: r.choice(key, choices, rule, example)


def _boolean(example: str) -> Callable[[Reader, str], Any]:
    return lambda r, key: r.boolean(key, example)


# AWS's tunnel options (rules.py, "AWS facts" "Tunnel options"), in the CryptoProfile's field order.
# The gateway's lines come out in table order within each section (Section), in both tunnels. (Lambdas: lifetimes()
# and dpd_delay_seconds() are defined below the table.)
TUNNEL_OPTIONS: tuple[TunnelOption, ...] = (
    TunnelOption("rekey_margin_seconds", 270, "rekey_margin_time_seconds", _integer(rules.REKEY_MARGIN), applies=(
        ike("rekey_time", lambda c: lifetimes(c).ike_rekey_time, "s",
            "AWS rekey semantics: rekey between lifetime - margin - margin*fuzz and lifetime - margin; the SA ends at "
            "the", "lifetime AWS was given."),
        ike("over_time", lambda c: lifetimes(c).ike_over_time, "s"),
        child("rekey_time", lambda c: lifetimes(c).child_rekey_time, "s"),
        legacy("margintime", None, "s", "AWS rekey semantics: rekey at lifetime - margintime - up to rekeyfuzz% of "
               "margintime."),
    )),
    TunnelOption("rekey_fuzz_percent", 100, "rekey_fuzz_percentage", _integer(rules.REKEY_FUZZ), applies=(
        ike("rand_time", lambda c: lifetimes(c).ike_rand_time, "s"),
        child("rand_time", lambda c: lifetimes(c).child_rand_time, "s"),
        legacy("rekeyfuzz", None, "%"),
    )),
    TunnelOption("dpd_timeout_seconds", 30, "dpd_timeout_seconds", _integer(rules.DPD_TIMEOUT), applies=(
        ike("dpd_delay", lambda c: dpd_delay_seconds(c), "s",
            "Liveness every {value}; a dead peer is declared when the retransmissions time out."),
        legacy("dpddelay", lambda c: dpd_delay_seconds(c), "s"),
    )),
    # clear, not restart: with AWS restarting too, both ends re-initiate after a cut and the initiations cross
    # (duplicate IKE_SAs, an orphan CHILD_SA the kernel may send on); see hostconfig/agent/README.md.
    TunnelOption("dpd_timeout_action", "clear", "dpd_timeout_action",
                 _choice(rules.AWS_DPD_ACTIONS, "what AWS does at the DPD timeout (AWS names)", "clear"), applies=(
        child("dpd_action", lambda c: GATEWAY_DPD_ACTION[c.dpd_timeout_action], "",
              'AWS DPD action "{aws}"; the gateway always brings the tunnel back.'),
        legacy("dpdaction", lambda c: GATEWAY_DPD_ACTION[c.dpd_timeout_action]),
    )),
    TunnelOption("startup_action", "add", "startup_action",
                 _choice(rules.AWS_STARTUP_ACTIONS, "add (the gateway initiates) or start (AWS initiates)", "add"),
                 applies=(
        child("start_action", lambda c: GATEWAY_START_ACTION[c.startup_action], "", 'AWS startup action "{aws}".'),
        child("close_action", lambda c: GATEWAY_CLOSE_ACTION[c.startup_action]),
        legacy("closeaction", lambda c: LEGACY_CLOSE_ACTION[c.startup_action]),
        legacy("auto", lambda c: LEGACY_AUTO[c.startup_action]),
    )),
    # AWS's ReplayWindowSize (64..2048 packets, default 1024) is charon's replay_window of the CHILD_SA (charon's own
    # default is 32, so the line is always written). Both ends refuse the same late packets.
    TunnelOption("replay_window", 1024, "replay_window_size", _integer(rules.REPLAY),
                 applies=(child("replay_window"), legacy("replay_window"))),
    # "Tunnel endpoint lifecycle control" (AWS facts, "Tunnel options"; EC2 TunnelOption.EnableTunnelLifecycleControl,
    # pulumi_aws tunnel<n>_enable_tunnel_lifecycle_control): AWS then waits for the operator (ReplaceVpnTunnel
    # --apply-pending-maintenance) before replacing a tunnel endpoint, so maintenance takes a tunnel down when the
    # operator chooses. AWS's default is off; turning it on or off replaces the tunnel endpoints once. AWS only: the
    # gateway's files do not change.
    TunnelOption("enable_tunnel_lifecycle_control", False, "enable_tunnel_lifecycle_control", _boolean("false"),
                 gateway=False),
)
CRYPTO_KEYS = ("ike_version", "phase1", "phase2", *(o.key for o in TUNNEL_OPTIONS))
# host_config's crypto object: the options the gateway needs.
HOST_CONFIG_CRYPTO_KEYS = ("ike_version", "phase1", "phase2", *(o.key for o in TUNNEL_OPTIONS if o.gateway))


def option_defaults() -> dict[str, Any]:
    """The stack config's defaults of the table's options (infra/config.py DEFAULTS["crypto"])."""
    return {o.key: o.default for o in TUNNEL_OPTIONS}


def gateway_option_values(crypto: CryptoProfile) -> dict[str, Any]:
    """The options host_config carries, by key (its crypto object)."""
    return {o.key: getattr(crypto, o.key) for o in TUNNEL_OPTIONS if o.gateway}


@dataclass(frozen=True)
class PhaseProposal:
    encryption: tuple[str, ...]  # AWS names, in preference order
    integrity: tuple[str, ...]
    dh_groups: tuple[int, ...]
    lifetime_seconds: int


@dataclass(frozen=True)
class CryptoProfile:
    ike_version: int
    phase1: PhaseProposal
    phase2: PhaseProposal
    rekey_margin_seconds: int
    rekey_fuzz_percent: int
    dpd_timeout_seconds: int
    dpd_timeout_action: str
    startup_action: str
    replay_window: int
    enable_tunnel_lifecycle_control: bool


def gateway_settings(crypto: CryptoProfile, section: Section) -> list[dict[str, Any]]:
    """The lines the table's options set in one section of the gateway's files, in table order (the templates print
    them with a loop)."""
    return [rendered(setting, getattr(crypto, o.key), crypto)
            for o in TUNNEL_OPTIONS for setting in o.applies if setting.section is section
            and not (setting.only_when_set and getattr(crypto, o.key) == o.default)]


@dataclass(frozen=True)
class Lifetimes:
    """charon timers (seconds) with AWS's rekey semantics: rekey between lifetime - margin - margin*fuzz and
    lifetime - margin; hard expiry at the lifetime AWS was given."""

    ike_rekey_time: int
    ike_over_time: int
    ike_rand_time: int
    child_rekey_time: int
    child_life_time: int
    child_rand_time: int


def lifetimes(crypto: CryptoProfile) -> Lifetimes:
    margin = crypto.rekey_margin_seconds
    rand = margin * crypto.rekey_fuzz_percent // 100
    return Lifetimes(
        ike_rekey_time=crypto.phase1.lifetime_seconds - margin,
        ike_over_time=margin,
        ike_rand_time=rand,
        child_rekey_time=crypto.phase2.lifetime_seconds - margin,
        child_life_time=crypto.phase2.lifetime_seconds,
        child_rand_time=rand,
    )


def dpd_delay_seconds(crypto: CryptoProfile) -> int:
    """Liveness check interval: a third of AWS's DPD timeout (AWS itself checks every 10 s against 30 s)."""
    return max(10, crypto.dpd_timeout_seconds // 3)


def _offered(allowed: tuple[str, ...]) -> Callable[[Any], str]:
    def convert(item: Any) -> str:
        if item not in allowed:
            raise RuleBroken(f"{item!r} is not offered by AWS (allowed: {', '.join(allowed)})")
        return item

    return convert


def _group(phase: str) -> Callable[[Any], int]:
    allowed = rules.DH_GROUPS_ALLOWED[phase]

    def convert(item: Any) -> int:
        text = ", ".join(str(g) for g in allowed)
        if isinstance(item, bool) or not isinstance(item, int):
            raise RuleBroken(f"must be an integer DH group number (one of {text}), got {item!r}")
        if item not in allowed:
            raise RuleBroken(f"group {item} is not offered by AWS for {phase} (allowed: {text})")
        return item

    return convert


def _ike_version(value: Any) -> int:
    if isinstance(value, bool) or value != rules.IKE_VERSION:
        raise RuleBroken(f"{value!r}: only IKEv2 is supported (route-based tunnels, PFS on the CHILD_SA, rekey "
                         "in place)")
    return value


def _fields(keys: tuple[str, ...], defaults: Mapping[str, Any] | None) -> dict[str, Any]:
    return {key: (defaults or {}).get(key, REQUIRED) for key in keys}




def read_phase(crypto: Reader, phase: str, defaults: Mapping[str, Any] | None,
               unknown: Unknown = Unknown.REFUSE) -> PhaseProposal | None:
    p = crypto.sub(phase, _fields(PHASE_KEYS, defaults), unknown=unknown,
                   example='{encryption: [AES256], integrity: [SHA2-256], dh_groups: [14], lifetime_seconds: ...}')
    enc = p.list_of("encryption", _offered(rules.AWS_ENCRYPTION), "an AWS encryption algorithm", "[AES256]", 1,
                    len(rules.AWS_ENCRYPTION))
    integ = p.list_of("integrity", _offered(rules.AWS_INTEGRITY), "an AWS integrity algorithm", "[SHA2-256]", 0,
                      len(rules.AWS_INTEGRITY))
    groups = p.list_of("dh_groups", _group(phase), "a DH group number", "[14]", 1,
                       len(rules.DH_GROUPS_ALLOWED[phase]))
    life = p.integer("lifetime_seconds", rules.LIFETIME[phase])
    if enc is None or integ is None or groups is None or life is None:
        return None
    if problem := rules.phase_integrity_problem(phase, enc, integ):
        p.fail("integrity", problem, "[SHA2-256]")
        return None
    return PhaseProposal(enc, integ, groups, life)


def read_crypto(parent: Reader, name: str = "crypto", defaults: Mapping[str, Any] | None = None,
                unknown: Unknown = Unknown.REFUSE, *, host_config: bool = False) -> CryptoProfile | None:
    """The crypto object ``parent[name]``; ``defaults``: the stack config's (host_config has every key it carries:
    ``host_config``, where the AWS-only options take their defaults)."""
    keys = HOST_CONFIG_CRYPTO_KEYS if host_config else CRYPTO_KEYS
    fields = _fields(keys, defaults)
    if host_config:
        fields.update({o.key: o.default for o in TUNNEL_OPTIONS if o.optional_in_host_config})
    c = parent.sub(name, fields, unknown=unknown,
                   example="{ike_version: 2, phase1: {...}, ...}")
    ike = c.check("ike_version", _ike_version, "IKE version 2", "2")
    phase1 = read_phase(c, "phase1", (defaults or {}).get("phase1"), unknown)
    phase2 = read_phase(c, "phase2", (defaults or {}).get("phase2"), unknown)
    if phase1 and phase2 and (problem := rules.phase2_lifetime_problem(phase1.lifetime_seconds,
                                                                       phase2.lifetime_seconds)):
        c.fail("phase2.lifetime_seconds", problem, str(min(3600, phase1.lifetime_seconds - 1)))
        phase2 = None
    options = {o.key: o.read(c, o.key) if o.key in keys else o.default for o in TUNNEL_OPTIONS}
    margin = options["rekey_margin_seconds"]
    if margin is not None and phase2 is not None and (problem := rules.rekey_margin_problem(
            margin, phase2.lifetime_seconds)):
        c.fail("rekey_margin_seconds", problem, str(rules.REKEY_MARGIN.example))
        options["rekey_margin_seconds"] = None
    if ike is None or phase1 is None or phase2 is None or any(v is None for v in options.values()):
        return None
    return CryptoProfile(ike, phase1, phase2, **options)
