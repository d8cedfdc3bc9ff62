"""`lab lifetimes short|normal`: short IKE/CHILD_SA lifetimes on BOTH charons, so a test sees rekeys in seconds.

AWS (and so the program and the renderer) refuses lifetimes below 900 s; the emulation need not. The gateway's
swanctl.conf is the one the renderer produced, with only its timer lines rewritten, pushed through the real delivery
(SSH from the operator namespace); the AWS side is re-rendered from host_config with the same short timers. Existing SAs
keep the timers they were created with, so both charons start over: charon restarts on the gateway (what `systemctl
restart strongswan` does), which makes AWS's side drop its old SAs (INITIAL_CONTACT) and build new ones with the new
config. `normal` pushes the rendered file unchanged and restores the AWS side's config from host_config.
"""

from __future__ import annotations

import base64
import json
import re
import sys
from pathlib import Path

from hostconfig import gateway_paths as gp
from lab import awspeer, gateway, paths, topology
from lab.sh import ns_prefix, run

# gateway: CHILD_SA rekey every 20-25 s, IKE_SA every 55-60 s. AWS side a little later, so the gateway initiates and the
# timers on both ends are short (a lost gateway rekey would still be covered by AWS's).
GATEWAY_SHORT = {"ike": {"rekey_time": 60, "over_time": 20, "rand_time": 5},
                 "child": {"rekey_time": 25, "life_time": 45, "rand_time": 5}}
AWS_SHORT = {"ike": {"rekey_time": 75, "over_time": 20},
             "child": {"rekey_time": 32, "life_time": 50, "rand_time": 0}}
INDENT = {"ike": 8, "child": 16}  # both ends' swanctl.conf: IKE-level timers at 8 spaces, CHILD-level ones at 16


def operator_dir() -> Path:
    for d in (paths.RPC_DIR / "operator", paths.RUNTIME_DIR / "operator"):
        if (d / "gateway-files.json").exists():
            return d
    raise RuntimeError("no rendered gateway files (operator side) to push: is the lab up (`lab up`)?")


def shorten(text: str, timers: dict[str, dict[str, int]], which: str) -> str:
    """Rewrite the timer lines of a swanctl.conf (`which` names it in the error when a line is missing)."""
    for level, values in timers.items():
        for key, value in values.items():
            text, n = re.subn(rf"(?m)^( {{{INDENT[level]}}}{key} = )\d+s$", rf"\g<1>{value}s", text)
            if n == 0:
                raise RuntimeError(f"{which} has no {level}-level '{key} = ...s' line to shorten")
    return text


def apply(mode: str, say) -> None:
    if mode not in ("short", "normal"):
        raise ValueError(f"unknown lifetimes {mode!r}: expected short or normal")
    hc = json.loads((paths.STATE_DIR / "host_config.json").read_text())
    bundle = json.loads((operator_dir() / "gateway-files.json").read_text())
    for f in bundle["files"]:
        if f["path"] == gp.SWANCTL_CONF.path and mode == "short":
            conf = shorten(base64.b64decode(f["content_b64"]).decode(), GATEWAY_SHORT, "rendered swanctl.conf")
            f["content_b64"] = base64.b64encode(conf.encode()).decode()
    files = paths.STATE_DIR / "lifetimes-files.json"
    files.touch(mode=0o600)
    files.write_text(json.dumps(bundle))
    try:
        proc = run(ns_prefix("ops") + [sys.executable, "-m", "lab.gateway", "push", str(files)], check=False,
                   timeout=900)
    finally:
        files.unlink(missing_ok=True)
    if proc.returncode != 0:
        raise RuntimeError(f"delivery failed: {proc.stderr.strip()[-2000:]}")
    report = json.loads(gateway.PUSH_REPORT.read_text())
    say(f"delivery: {len(report['changed'])} file(s) changed: {', '.join(c['path'] for c in report['changed'])}")
    aws_conf = awspeer.render_swanctl_conf(hc)
    if mode == "short":
        aws_conf = shorten(aws_conf, AWS_SHORT, "AWS side swanctl.conf")
    conf = awspeer.AWS_DIR / "swanctl.conf"
    conf.write_text(aws_conf)
    conf.chmod(0o600)
    awspeer.swanctl(["--load-all", "--noprompt", "--file", str(conf)])
    say("AWS side: swanctl --load-all")
    topology.restart_gw_charon()
    say(f"gateway: charon restarted with {mode} lifetimes; both sides build new SAs")


def main(argv: list[str]) -> int:
    """`python -m lab.lifetimes short|normal` where the namespaces live (what the `lab lifetimes` verb runs)."""
    apply(argv[0] if argv else "", lambda msg: print(f"lab: {msg}", flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
