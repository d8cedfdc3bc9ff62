"""The ONE crypto profile: it sets the AWS tunnel options (program) and the strongSwan proposals (renderer), read by
the same code from the stack config and from host_config, so the two ends cannot drift."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from hostconfig.contract import rules
from hostconfig.contract.reader import REQUIRED, Reader, RuleBroken, Unknown

CRYPTO_KEYS = ("ike_version", "phase1", "phase2", "rekey_margin_seconds", "rekey_fuzz_percent", "replay_window",
               "dpd_timeout_seconds", "dpd_timeout_action", "startup_action")
PHASE_KEYS = ("encryption", "integrity", "dh_groups", "lifetime_seconds")


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
    replay_window: int
    dpd_timeout_seconds: int
    dpd_timeout_action: str
    startup_action: str


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
                unknown: Unknown = Unknown.REFUSE) -> CryptoProfile | None:
    """The crypto object ``parent[name]``; ``defaults``: the stack config's (host_config has every key)."""
    c = parent.sub(name, _fields(CRYPTO_KEYS, defaults), unknown=unknown,
                   example="{ike_version: 2, phase1: {...}, ...}")
    ike = c.check("ike_version", _ike_version, "IKE version 2", "2")
    phase1 = read_phase(c, "phase1", (defaults or {}).get("phase1"), unknown)
    phase2 = read_phase(c, "phase2", (defaults or {}).get("phase2"), unknown)
    if phase1 and phase2 and (problem := rules.phase2_lifetime_problem(phase1.lifetime_seconds,
                                                                       phase2.lifetime_seconds)):
        c.fail("phase2.lifetime_seconds", problem, str(min(3600, phase1.lifetime_seconds - 1)))
        phase2 = None
    margin = c.integer("rekey_margin_seconds", rules.REKEY_MARGIN)
    if margin is not None and phase2 is not None and (problem := rules.rekey_margin_problem(
            margin, phase2.lifetime_seconds)):
        c.fail("rekey_margin_seconds", problem, str(rules.REKEY_MARGIN.example))
        margin = None
    fuzz = c.integer("rekey_fuzz_percent", rules.REKEY_FUZZ)
    replay = c.integer("replay_window", rules.REPLAY)
    dpd = c.integer("dpd_timeout_seconds", rules.DPD_TIMEOUT)
    action = c.choice("dpd_timeout_action", rules.AWS_DPD_ACTIONS, "what AWS does at the DPD timeout (AWS names)",
                      "clear")
    startup = c.choice("startup_action", rules.AWS_STARTUP_ACTIONS,
                       "add (the gateway initiates) or start (AWS initiates)", "add")
    values = (ike, phase1, phase2, margin, fuzz, replay, dpd, action, startup)
    if any(v is None for v in values):
        return None
    return CryptoProfile(*values)  # type: ignore[arg-type]
