"""`python -m hostconfig status`: both ends' view of the tunnels, side by side, with their disagreements flagged.

    python -m hostconfig status -s dev                    # runs `pulumi stack output --json --show-secrets -s dev`
    python -m hostconfig status --outputs outputs.json    # a saved copy of that output
    python -m hostconfig status --outputs outputs.json --json

AWS's view: the EC2 API (boto3 ``describe_vpn_connections`` -> VgwTelemetry per tunnel, the static routes, and the
customer gateway's IP). The gateway's view: ``vpnctl status --json`` over SSH, with the same pinned host key and
connection code as delivery (hostconfig.deliver.push). ``compare`` is pure: it takes what was expected (the plan) and
what each side said, and returns the rows and the flags. PSKs are in the stack output and in the EC2 response's tunnel
options; neither is ever copied into a view, printed or logged.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hostconfig import gateway_paths
from hostconfig.agent.status_contract import ContractError, StatusReport, TunnelStatus
from hostconfig.plan import GatewayPlan, PlanError

log = logging.getLogger(__name__)

SSH_DEADLINE_SECONDS = 20.0
COMMAND_TIMEOUT_SECONDS = 60.0


class OpsInputError(ValueError):
    """The stack outputs cannot be read (no pulumi, no stack, masked secrets, invalid host_config)."""


@dataclass(frozen=True)
class Unreachable:
    """One side could not be asked, and why."""

    reason: str


@dataclass(frozen=True)
class AwsTunnel:
    outside_ip: str
    status: str  # UP | DOWN
    status_message: str
    accepted_route_count: int | None
    last_status_change: str | None  # ISO 8601, UTC


@dataclass(frozen=True)
class AwsView:
    state: str  # the VPN connection's state: available, pending, deleting, deleted
    tunnels: tuple[AwsTunnel, ...]
    static_routes: dict[str, str]  # CIDR -> state
    customer_gateway_ip: str | None


@dataclass(frozen=True)
class TunnelRow:
    name: str
    outside_ip: str
    aws: AwsTunnel | None
    gateway: TunnelStatus | None  # the tunnel's entry of `vpnctl status --json`
    flags: tuple[str, ...] = ()


@dataclass(frozen=True)
class OpsReport:
    stack: str
    vpn_connection_id: str
    region: str
    gateway_ip: str
    aws_state: str
    gateway_daemon: str
    rows: tuple[TunnelRow, ...]
    flags: tuple[str, ...] = field(default=())

    @property
    def all_flags(self) -> list[str]:
        return [*self.flags, *(f"{row.name}: {flag}" for row in self.rows for flag in row.flags)]


# ------------------------------------------------------------------------------------------------ pure comparison


def aws_view_from_response(vpn: dict[str, Any], customer_gateway_ip: str | None) -> AwsView:
    """Keep only what the report shows from one describe_vpn_connections item (never its tunnel options: PSKs)."""
    tunnels = []
    for t in vpn.get("VgwTelemetry", []):
        changed = t.get("LastStatusChange")
        if isinstance(changed, dt.datetime):
            changed = changed.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        tunnels.append(AwsTunnel(outside_ip=str(t.get("OutsideIpAddress", "")), status=str(t.get("Status", "?")),
                                 status_message=str(t.get("StatusMessage", "")),
                                 accepted_route_count=t.get("AcceptedRouteCount"),
                                 last_status_change=str(changed) if changed else None))
    routes = {str(r.get("DestinationCidrBlock")): str(r.get("State", "?")) for r in vpn.get("Routes", [])}
    return AwsView(state=str(vpn.get("State", "?")), tunnels=tuple(tunnels), static_routes=routes,
                   customer_gateway_ip=customer_gateway_ip)


def compare(plan: GatewayPlan, aws: AwsView | Unreachable, gateway: StatusReport | Unreachable) -> OpsReport:
    """Rows per tunnel (tunnel order is AWS's) and every disagreement between the plan, AWS and the gateway."""
    flags: list[str] = []
    aws_by_ip: dict[str, AwsTunnel] = {}
    if isinstance(aws, Unreachable):
        flags.append(f"AWS view unavailable: {aws.reason}")
    else:
        aws_by_ip = {t.outside_ip: t for t in aws.tunnels}
        if aws.state != "available":
            flags.append(f"VPN connection {plan.vpn_connection_id} is {aws.state}, not available")
        known = {str(t.outside_ip) for t in plan.tunnels}
        for ip in sorted(set(aws_by_ip) - known):
            flags.append(f"AWS has a tunnel with outside IP {ip} that host_config does not know: the stack outputs "
                         "are stale (`pulumi refresh`, then `pulumi up` re-renders the gateway)")
        wanted = {str(c) for c in plan.vlan_cidrs}
        have = {cidr for cidr, state in aws.static_routes.items() if state == "available"}
        for cidr in sorted(wanted - set(aws.static_routes)):
            flags.append(f"static route {cidr} (a VLAN CIDR) is missing on the VPN connection: AWS will not send "
                         "traffic for it into the tunnels; `pulumi up`")
        for cidr in sorted(wanted & set(aws.static_routes) - have):
            flags.append(f"static route {cidr} is {aws.static_routes[cidr]}, not available")
        for cidr in sorted(set(aws.static_routes) - wanted):
            flags.append(f"static route {cidr} on the VPN connection is not a VLAN CIDR of host_config")
        if aws.customer_gateway_ip is not None and aws.customer_gateway_ip != str(plan.gateway.public_ip):
            flags.append(f"outside IP mismatch: the customer gateway is {aws.customer_gateway_ip} but the gateway's "
                         f"public IP is {plan.gateway.public_ip}: AWS expects IKE from the wrong address")
    gw_by_name: dict[str, TunnelStatus] = {}
    daemon = "unknown"
    if isinstance(gateway, Unreachable):
        flags.append(f"gateway view unavailable: {gateway.reason}")
    else:
        gw_by_name = {t.name: t for t in gateway.tunnels}
        daemon = "running" if gateway.daemon.running else "NOT running"
        if not gateway.daemon.running:
            flags.append("the failover daemon is not running on the gateway (`vpnctl doctor` there says why)")
        for name in sorted(set(gw_by_name) - {t.name for t in plan.tunnels}):
            flags.append(f"the gateway reports a tunnel {name!r} that host_config does not know: its agent.json is "
                         "from another deployment; `pulumi up` re-pushes it")
    rows = []
    for t in plan.tunnels:
        ip = str(t.outside_ip)
        a = aws_by_ip.get(ip)
        g = gw_by_name.get(t.name)
        rows.append(TunnelRow(t.name, ip, a, g, tuple(_tunnel_flags(plan, ip, a, g, aws, gateway))))
    return OpsReport(stack=plan.stack, vpn_connection_id=plan.vpn_connection_id, region=plan.aws_region,
                     gateway_ip=str(plan.gateway.public_ip),
                     aws_state=aws.state if isinstance(aws, AwsView) else "unknown", gateway_daemon=daemon,
                     rows=tuple(rows), flags=tuple(flags))


def _tunnel_flags(plan: GatewayPlan, ip: str, a: AwsTunnel | None, g: TunnelStatus | None,
                  aws: AwsView | Unreachable, gateway: StatusReport | Unreachable) -> list[str]:
    flags = []
    if isinstance(aws, AwsView) and a is None:
        flags.append(f"outside IP mismatch: AWS reports no tunnel with outside IP {ip} (the VPN connection was "
                     "replaced or host_config is stale): `pulumi refresh`, then `pulumi up`")
    if not isinstance(gateway, Unreachable) and g is None:
        flags.append("the gateway's agent does not know this tunnel (its agent.json differs): `pulumi up`")
    if a is None or g is None:
        return flags
    child = g.child_sa
    installed = child == "INSTALLED"
    if a.status == "UP" and not installed:
        flags.append(f"AWS says UP but the gateway's CHILD_SA is {child} (IKE {g.ike_sa}): the SA AWS sees is "
                     "not this gateway's, or charon lost it; `vpnctl doctor` on the gateway")
    if a.status != "UP" and installed:
        message = a.status_message or "no message"
        flags.append(f"the gateway has an installed CHILD_SA but AWS says {a.status} ({message}): AWS's telemetry "
                     "lags by a few minutes; if it stays, ESP from the gateway does not reach AWS (Cloud Firewall, "
                     "NAT)")
    if installed and g.probe is not None and not g.probe.up:
        flags.append("CHILD_SA installed but the gateway's probes through it are unanswered: ESP is lost in one "
                     "direction, or the AWS inside address does not answer")
    routes = len(plan.vlan_cidrs)
    if a.status == "UP" and a.accepted_route_count not in (None, 0, routes):
        flags.append(f"route count mismatch: AWS accepted {a.accepted_route_count} route(s), host_config has "
                     f"{routes} VLAN CIDR(s)")
    return flags


# ------------------------------------------------------------------------------------------------ rendering


def render_text(report: OpsReport) -> str:
    lines = [f"stack {report.stack}: VPN connection {report.vpn_connection_id} ({report.region}) is "
             f"{report.aws_state}; gateway {report.gateway_ip}, failover daemon {report.gateway_daemon}"]
    header = (f"{'tunnel':<10} {'outside IP':<16} | {'AWS':<5} {'since':<20} {'routes':>6}  {'message':<24} | "
              f"{'IKE':<12} {'CHILD':<10} {'role':<8} probe")
    lines += [header, "-" * len(header)]
    for row in report.rows:
        a, g = row.aws, row.gateway
        aws_part = (f"{a.status:<5} {a.last_status_change or '-':<20} "
                    f"{'-' if a.accepted_route_count is None else a.accepted_route_count:>6}  "
                    f"{(a.status_message or '-')[:24]:<24}") if a else f"{'?':<5} {'-':<20} {'-':>6}  {'-':<24}"
        if g:
            probe_text = "-" if g.probe is None else ("up" if g.probe.up else "down")
            gw_part = f"{g.ike_sa:<12} {g.child_sa:<10} {g.role:<8} {probe_text}"
        else:
            gw_part = f"{'?':<12} {'?':<10} {'?':<8} ?"
        lines.append(f"{row.name:<10} {row.outside_ip:<16} | {aws_part} | {gw_part}")
    flags = report.all_flags
    if flags:
        lines.append(f"{len(flags)} disagreement(s):")
        lines += [f"  ! {flag}" for flag in flags]
    else:
        lines.append("AWS and the gateway agree.")
    return "\n".join(lines) + "\n"


def render_json(report: OpsReport) -> str:
    data = asdict(report)
    for row, out in zip(report.rows, data["rows"], strict=True):
        out["gateway"] = None if row.gateway is None else row.gateway.to_json()  # the contract's keys
    data["disagreements"] = report.all_flags
    return json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"


# ------------------------------------------------------------------------------------------------ I/O


def stack_outputs(stack: str, cwd: Path | None = None) -> dict[str, Any]:
    """`pulumi stack output --json --show-secrets -s STACK` (PSKs inside: kept in memory, never printed)."""
    pulumi = shutil.which("pulumi")
    if pulumi is None:
        raise OpsInputError("-s: the pulumi CLI is not installed; save the outputs with `pulumi stack output --json "
                            "--show-secrets -s dev > outputs.json` elsewhere and pass --outputs outputs.json")
    proc = subprocess.run([pulumi, "stack", "output", "--json", "--show-secrets", "-s", stack], cwd=cwd,
                          capture_output=True, text=True, timeout=300, check=False)
    if proc.returncode != 0:
        # stderr carries pulumi's reason (no stack, not logged in); stdout is never echoed (it holds the PSKs).
        raise OpsInputError(f"-s {stack}: `pulumi stack output` failed: {proc.stderr.strip()[:500]}")
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise OpsInputError(f"-s {stack}: `pulumi stack output --json` did not print JSON") from None


def load_plan(outputs: str | None, stack: str | None, cwd: Path | None = None) -> GatewayPlan:
    from hostconfig.stack_outputs import OUTPUT_KEY, InputError, host_config_of_outputs, load_host_config

    try:
        if outputs is not None:
            host_config = load_host_config(outputs)
        else:
            data = stack_outputs(stack or "", cwd)
            host_config = host_config_of_outputs(data) if isinstance(data, dict) and OUTPUT_KEY in data else None
            if not isinstance(host_config, dict):
                raise OpsInputError(f"-s {stack}: the stack has no '{OUTPUT_KEY}' output (found: "
                                    f"{', '.join(sorted(data)) if isinstance(data, dict) else type(data).__name__})")
        return GatewayPlan.from_host_config(host_config)
    except (InputError, PlanError) as exc:
        raise OpsInputError(str(exc)) from None


def read_aws_view(plan: GatewayPlan, ec2: Any) -> AwsView:
    """One describe_vpn_connections call, plus describe_customer_gateways for the customer gateway IP."""
    response = ec2.describe_vpn_connections(VpnConnectionIds=[plan.vpn_connection_id])
    connections = response.get("VpnConnections", [])
    if not connections:
        raise LookupError(f"VPN connection {plan.vpn_connection_id} not found in {plan.aws_region}")
    vpn = connections[0]
    cgw_ip = None
    cgw_id = vpn.get("CustomerGatewayId")
    if cgw_id:
        gateways = ec2.describe_customer_gateways(CustomerGatewayIds=[cgw_id]).get("CustomerGateways", [])
        cgw_ip = gateways[0].get("IpAddress") if gateways else None
    return aws_view_from_response(vpn, cgw_ip)


def ec2_client(region: str) -> Any:
    import boto3

    return boto3.client("ec2", region_name=region)


def read_gateway_view(target: Any, vpnctl: str = gateway_paths.VPNCTL.path) -> StatusReport:
    """`vpnctl status --json` on the gateway over SSH (pinned host key, as delivery connects)."""
    from hostconfig.deliver.push import connect, run_remote

    client = connect(target)
    try:
        result = run_remote(client, [vpnctl, "status", "--json"], COMMAND_TIMEOUT_SECONDS)
    finally:
        client.close()
    if result.status != 0:
        raise RuntimeError(f"`{vpnctl} status --json` exited {result.status}: {result.stderr.strip()[:300]}")
    return parse_gateway_status(result.stdout, vpnctl)


def parse_gateway_status(text: str, vpnctl: str = gateway_paths.VPNCTL.path) -> StatusReport:
    """The gateway's `vpnctl status --json` through its definition; a mismatch (another vpnctl version, not JSON) is a
    RuntimeError naming the field, so the gateway view is flagged unavailable instead of misread."""
    try:
        return StatusReport.loads(text)
    except ContractError as exc:
        raise RuntimeError(f"`{vpnctl} status --json` on the gateway: {exc}") from None


def ssh_target(plan: GatewayPlan, args: argparse.Namespace) -> Any:
    from hostconfig.deliver.push import SshTarget

    private_key = None
    if args.ssh_key is not None:
        try:
            private_key = Path(args.ssh_key).read_text()
        except OSError as exc:
            raise OpsInputError(f"--ssh-key {args.ssh_key}: cannot read: {exc.strerror}") from None
    return SshTarget(host=args.ssh_host or str(plan.gateway.public_ip), port=args.ssh_port, user=args.ssh_user,
                     host_public_key=plan.gateway.ssh_host_public_key, private_key=private_key,
                     connect_deadline_seconds=args.ssh_deadline, command_timeout_seconds=COMMAND_TIMEOUT_SECONDS)


def gather(plan: GatewayPlan, ec2: Any, target: Any, vpnctl: str,
           gateway_reader: Callable[[Any, str], StatusReport] = read_gateway_view) -> OpsReport:
    try:
        aws: AwsView | Unreachable = read_aws_view(plan, ec2)
    except Exception as exc:  # noqa: BLE001 - credentials, throttling, not found: shown as a flag, not a crash
        aws = Unreachable(f"{type(exc).__name__}: {exc}")
    try:
        gateway: StatusReport | Unreachable = gateway_reader(target, vpnctl)
    except Exception as exc:  # noqa: BLE001 - unreachable, host key mismatch, vpnctl missing: shown as a flag
        gateway = Unreachable(f"{type(exc).__name__}: {exc}")
    return compare(plan, aws, gateway)


def add_parser(sub: Any) -> None:
    p = sub.add_parser("status", help="AWS's and the gateway's view of each tunnel, side by side, with disagreements")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("-s", "--stack", help="read `pulumi stack output --json --show-secrets -s STACK`")
    source.add_argument("--outputs", metavar="FILE", help="saved `pulumi stack output --json --show-secrets`, or -")
    p.add_argument("--cwd", type=Path, default=None, help="Pulumi project directory for -s (default: here)")
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.add_argument("--ssh-user", default="root", help="SSH user on the gateway (default root)")
    p.add_argument("--ssh-key", default=None, metavar="FILE", help="private key file (default: the ssh-agent)")
    p.add_argument("--ssh-port", type=int, default=22)
    p.add_argument("--ssh-host", default=None, help="connect here instead of gateway.public_ip (a bastion tunnel)")
    p.add_argument("--ssh-deadline", type=float, default=SSH_DEADLINE_SECONDS, help="seconds to keep trying SSH")
    p.add_argument("--vpnctl", default=gateway_paths.VPNCTL.path,
                   help=f"vpnctl on the gateway (default {gateway_paths.VPNCTL.path})")
    p.set_defaults(func=cmd_status)


def cmd_status(args: argparse.Namespace, ec2: Any = None,
               gateway_reader: Callable[[Any, str], StatusReport] = read_gateway_view) -> int:
    """Exit 0 when both sides agree, 1 on any disagreement or unreachable side, 2 on bad input."""
    try:
        plan = load_plan(args.outputs, args.stack, args.cwd)
        target = ssh_target(plan, args)
    except OpsInputError as exc:
        print(f"hostconfig status: {exc}", file=sys.stderr)
        return 2
    report = gather(plan, ec2 if ec2 is not None else ec2_client(plan.aws_region), target, args.vpnctl,
                    gateway_reader)
    sys.stdout.write(render_json(report) if args.json else render_text(report))
    return 1 if report.all_flags else 0
