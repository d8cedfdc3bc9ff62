"""GatewayPlan -> the files on the gateway: one Jinja2 environment, templates that only format view models.

Autoescaping is off on purpose: these are configuration files (strongSwan, nftables, systemd, YAML, JSON), not HTML,
and HTML escaping would corrupt them. Values that need quoting go through explicit filters below, which refuse what
they cannot quote safely instead of guessing.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2

from hostconfig import gateway_paths
from hostconfig import plan as planmod
from hostconfig.contract import rules
from hostconfig.plan import GatewayPlan

log = logging.getLogger(__name__)

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"


class RenderError(RuntimeError):
    """A template could not be rendered; the message names the template, the line and the variable or value."""


@dataclass(frozen=True)
class RenderedFile:
    path: str  # absolute on the gateway
    content: bytes = field(repr=False)
    mode: int
    secret: bool

    def __repr__(self) -> str:
        return (
            f"RenderedFile(path={self.path!r}, mode=0o{self.mode:o}, secret={self.secret}, {len(self.content)} bytes)"
        )


class UnsafeValue(ValueError):
    """A quoting filter met a value it cannot represent safely. The message never contains the value."""


# ------------------------------------------------------------------------------------------------- quoting filters

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def swan_quote(value: Any) -> str:
    """A double-quoted strongSwan settings string (swanctl.conf, strongswan.conf): backslash and quote escaped."""
    text = str(value)
    if _CONTROL.search(text):
        raise UnsafeValue("swan_quote: value contains a control character (newline, NUL, ...), which cannot be quoted")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def ipsec_quote(value: Any) -> str:
    """A double-quoted ipsec.conf / ipsec.secrets value. Those parsers know no escapes: refuse what would break."""
    text = str(value)
    if _CONTROL.search(text) or '"' in text or "\\" in text:
        raise UnsafeValue(
            "ipsec_quote: value contains a quote, backslash or control character, which ipsec.conf "
            "and ipsec.secrets cannot quote"
        )
    return f'"{text}"'


def nft_quote(value: Any) -> str:
    """An interface name as an nftables string."""
    text = str(value)
    if rules.INTERFACE_NAME.problem(text):
        raise UnsafeValue(f"nft_quote: not {rules.INTERFACE_NAME.rule}")
    return f'"{text}"'


def yaml_str(value: Any) -> str:
    """A YAML scalar as a JSON string (valid YAML double-quoted flow scalar), whatever the characters."""
    return json.dumps(str(value))


def to_json(value: Any) -> str:
    return json.dumps(value, indent=2) if isinstance(value, dict) else json.dumps(value)


def _make_environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,  # config files, not HTML (see the module docstring); quoting is explicit
    )
    env.filters.update(
        swan_quote=swan_quote, ipsec_quote=ipsec_quote, nft_quote=nft_quote, yaml_str=yaml_str, to_json=to_json
    )
    env.globals["paths"] = gateway_paths  # templates name gateway files from the table, e.g. {{ paths.NFT }}
    return env


ENVIRONMENT = _make_environment()


def _template_line(exc: BaseException, template_name: str) -> int | None:
    """The template line where rendering failed (Jinja2 rewrites tracebacks to point into the template)."""
    line = None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename.endswith(template_name):
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def render(template_name: str, view: dict) -> str:
    """Render one template with its view model; any failure is a RenderError naming template, line and cause."""
    try:
        template = ENVIRONMENT.get_template(template_name)
    except jinja2.TemplateNotFound:
        raise RenderError(f"{template_name}: no such template in {TEMPLATES_DIR}") from None
    except jinja2.TemplateSyntaxError as exc:
        raise RenderError(f"{template_name} line {exc.lineno}: template syntax error: {exc.message}") from None
    try:
        text = template.render(view)
    except jinja2.UndefinedError as exc:
        where = _template_line(exc, template_name)
        at = f" line {where}" if where else ""
        raise RenderError(
            f"{template_name}{at}: undefined variable: {exc.message} (view keys: {', '.join(sorted(view))})"
        ) from None
    except UnsafeValue as exc:
        where = _template_line(exc, template_name)
        at = f" line {where}" if where else ""
        raise RenderError(f"{template_name}{at}: {exc}") from None
    except Exception as exc:
        # The message of an unexpected error may quote a value (a PSK?): name only its type; the cause stays chained.
        where = _template_line(exc, template_name)
        at = f" line {where}" if where else ""
        raise RenderError(f"{template_name}{at}: {type(exc).__name__} while rendering") from exc
    log.debug("rendered %s (%d bytes)", template_name, len(text))
    return text


# ----------------------------------------------------------------------------------------------- the file sets


def _file(where: gateway_paths.GatewayFile, text: str) -> RenderedFile:
    """A rendered file at its path, with its mode and secrecy, from the table (docs/contracts.md §4)."""
    return RenderedFile(where.path, text.encode(), where.mode, where.secret)


def render_gateway_files(plan: GatewayPlan) -> list[RenderedFile]:
    """The files the delivery pushes to the gateway (docs/contracts.md §4), vpnctl itself excepted."""
    files = [
        _file(gateway_paths.SWANCTL_CONF, render("swanctl.conf.j2", planmod.swanctl_view(plan))),
        _file(gateway_paths.CHARON_CONF, render("charon-hybrid-vpn.conf.j2", planmod.charon_view(plan))),
        _file(gateway_paths.AGENT_CONFIG, render("agent.json.j2", planmod.agent_view(plan))),
        _file(gateway_paths.NFT_RULESET, render("nftables.nft.j2", planmod.nftables_view(plan))),
        _file(gateway_paths.FAILOVER_UNIT_FILE, render_failover_unit()),
        _file(gateway_paths.GUARD_UNIT_FILE, render_guard_unit()),
    ]
    if plan.routing is not None:  # routing.mode bgp only: a static stack's file set is unchanged
        files.append(_file(gateway_paths.FRR_CONF, render_frr_conf(plan)))
        files.append(_file(gateway_paths.FRR_DAEMONS, render_frr_daemons()))
    log.info("rendered %d gateway files for stack %s", len(files), plan.stack)
    return files


def render_frr_conf(plan: GatewayPlan) -> str:
    return render("frr.conf.j2", planmod.frr_view(plan))


# FRR 8.4's daemons besides bgpd that /etc/frr/daemons switches (Debian 12's file lists them all with =no).
FRR_OTHER_DAEMONS = ("ospfd", "ospf6d", "ripd", "ripngd", "isisd", "pimd", "pim6d", "ldpd", "nhrpd", "eigrpd",
                     "babeld", "sharpd", "pbrd", "bfdd", "fabricd", "vrrpd", "pathd")


def render_frr_daemons() -> str:
    """/etc/frr/daemons for routing.mode bgp: no plan value in it (cloud-init writes it before the AWS side exists)."""
    return render("frr-daemons.j2", {"disabled": FRR_OTHER_DAEMONS})


def render_legacy_files(plan: GatewayPlan) -> list[RenderedFile]:
    """ipsec.conf + ipsec.secrets for users of the legacy `ipsec` starter (not pushed by default)."""
    view = planmod.legacy_view(plan)
    return [
        _file(gateway_paths.LEGACY_IPSEC_CONF, render("ipsec.conf.j2", view)),
        _file(gateway_paths.LEGACY_IPSEC_SECRETS, render("ipsec.secrets.j2", view)),
    ]


def render_failover_unit() -> str:
    return render("hybrid-vpn-failover.service.j2", planmod.unit_view())


def render_guard_unit() -> str:
    return render("hybrid-vpn-guard.service.j2", planmod.unit_view())


def render_sysctl() -> str:
    return render("sysctl.conf.j2", planmod.sysctl_view())
