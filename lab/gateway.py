"""The lab gateway driven by the project's real chain: host_config -> GatewayPlan -> rendered files -> SSH push from
the operator namespace -> charon loads them -> `vpnctl reconcile` and `vpnctl daemon` run in the gateway.

The lab has no systemd: the controller plays its part (what the pushed unit and `systemctl restart` would do): it
restarts charon when its strongswan.d snippet changed, and (re)starts `vpnctl daemon` in the gateway's namespaces.

While a link of the chain is not in the tree yet, the lab says so and uses lab/standin_gateway.py for that part.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from lab import host_config_source, paths, standin_gateway, topology
from lab.addresses import LabAddressPlan
from lab.sh import ns_prefix, pid_of, run, run_in, spawn_in

log = logging.getLogger(__name__)

OPS_DIR = paths.STATE_DIR / "ops"
VPNCTL = "/usr/local/sbin/vpnctl"
PUSH_REPORT = OPS_DIR / "push-report.json"
CHARON_SNIPPET = "/etc/strongswan.d/charon-hybrid-vpn.conf"


@dataclass(frozen=True)
class OperatorKey:
    private_path: Path
    public: str


def make_operator_key() -> OperatorKey:
    """The operator's SSH key (in production: the user's key or agent) that the gateway authorises."""
    OPS_DIR.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = OPS_DIR / "id_ed25519"
    if not key.exists():
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "hybrid-vpn-lab-operator", "-f", str(key)])
    return OperatorKey(key, key.with_suffix(".pub").read_text().strip())


def _have(module: str, attr: str | None = None) -> bool:
    try:
        if importlib.util.find_spec(module) is None:
            return False
    except ModuleNotFoundError:
        return False
    if attr is None:
        return True
    mod = __import__(module, fromlist=[attr])
    return hasattr(mod, attr)


def chain_parts() -> dict[str, bool]:
    return {
        "program (lab/cloud.py)": host_config_source.real_chain_available(),
        "plan (hostconfig.plan)": _have("hostconfig.plan", "GatewayPlan"),
        "renderer (hostconfig.render)": _have("hostconfig.render", "render_gateway_files"),
        "delivery (hostconfig.deliver)": _have("hostconfig.deliver.push", "push_files"),
        "agent (vpnctl zipapp)": _have("hostconfig.agent.bundle", "build_zipapp"),
    }


def start_host_config(say: Callable[[str], None]):
    if host_config_source.real_chain_available():
        say("evaluating the Pulumi program (stacks/Pulumi.lab.yaml) against the emulated cloud, in the background")
        return host_config_source.start_program_evaluation()
    return None


def host_config(plan: LabAddressPlan, evaluation, say: Callable[[str], None]) -> tuple[dict, str | None]:
    """(host_config, the gateway's SSH host private key or None when the lab generates one)."""
    if evaluation is not None:
        result = host_config_source.wait_program_result(evaluation)
        say(f"program: VPN connection {result.host_config['aws']['vpn_connection_id']}, tunnels "
            + ", ".join(f"{t['name']} {t['outside_ip']}" for t in result.host_config["tunnels"]))
        return result.host_config, result.ssh_host_private_key
    say("lab/cloud.py not in the tree yet: using a lab-local host_config (same schema, lab addresses)")
    return host_config_source.lab_local_host_config(plan, ""), None


def configure(hc: dict, key: OperatorKey, say: Callable[[str], None]) -> None:
    parts = chain_parts()
    missing = [name for name, ok in parts.items() if not ok and not name.startswith("program")]
    if missing:
        say(f"not in the tree yet: {', '.join(missing)}; the gateway uses the lab's stand-in config "
            "(swanctl + VTIs + static routes, no failover agent)")
        standin_gateway.apply(hc)
        return
    say("rendering the gateway files (hostconfig) and pushing them over SSH from the operator namespace")
    proc = run(ns_prefix("ops") + [sys.executable, "-m", "lab.gateway", "push"], check=False, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"delivery failed: {proc.stderr.strip()[-2000:]}")
    report = json.loads(PUSH_REPORT.read_text())
    say(f"delivery: {len(report['changed'])} file(s) changed in {report['total_seconds']:.1f} s: "
        f"{', '.join(c['path'] for c in report['changed'])}")
    activate_like_systemd([c["path"] for c in report["changed"]], say)


def activate_like_systemd(changed: list[str], say: Callable[[str], None]) -> None:
    if CHARON_SNIPPET in changed:
        topology.restart_gw_charon()
        say("gateway: charon restarted (strongswan.d changed) and swanctl --load-all")
    run_in("gw", [VPNCTL, "reconcile"], timeout=300)
    say("gateway: vpnctl reconcile done")
    restart_agent()
    say("gateway: vpnctl daemon running")


def restart_agent() -> None:
    topology.stop_process("gw-vpnctl-daemon")
    spawn_in("gw", "gw-vpnctl-daemon", [VPNCTL, "daemon"])


def status(out: BinaryIO, err: BinaryIO) -> None:
    if pid_of("gw-vpnctl-daemon") is not None or run_in("gw", ["test", "-x", VPNCTL], check=False).returncode == 0:
        out.write(b"vpnctl status\n")
        out.flush()
        subprocess.run(ns_prefix("gw") + [VPNCTL, "status"], stdout=out, stderr=err, check=False)
        return
    out.write(b"swanctl --list-sas (stand-in config: no vpnctl yet)\n")
    out.flush()
    subprocess.run(ns_prefix("gw") + ["swanctl", "--list-sas"], stdout=out, stderr=err, check=False)
    subprocess.run(ns_prefix("gw") + ["ip", "route", "show", "10.0.0.0/16"], stdout=out, stderr=err, check=False)


# --- runs in the operator namespace: `python -m lab.gateway push` -------------------------------------------------

def push() -> int:
    from hostconfig.agent.bundle import build_zipapp
    from hostconfig.deliver.changes import DesiredFile
    from hostconfig.deliver.gateway import validation_commands
    from hostconfig.deliver.push import SshTarget, push_files
    from hostconfig.plan import GatewayPlan
    from hostconfig.render import render_gateway_files

    hc = json.loads((paths.STATE_DIR / "host_config.json").read_text())
    plan = GatewayPlan.from_host_config(hc)
    files = list(render_gateway_files(plan))
    zipapp = build_zipapp(OPS_DIR / "vpnctl.pyz")
    files.append(DesiredFile(path=VPNCTL, content=zipapp.read_bytes(), mode=0o755))
    target = SshTarget(host=hc["gateway"]["public_ip"], host_public_key=hc["gateway"]["ssh_host_public_key"],
                       private_key=(OPS_DIR / "id_ed25519").read_text(), connect_deadline_seconds=120)
    # Activation that needs systemd is done by the lab controller afterwards (activate_like_systemd).
    report = push_files(target, files, validate=validation_commands(),
                        activate=[("swanctl", "--load-all", "--noprompt")], secret_values=plan.secrets())
    PUSH_REPORT.write_text(json.dumps(report.as_dict()))
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.gateway")
    parser.add_argument("cmd", choices=["push"])
    parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return push()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
