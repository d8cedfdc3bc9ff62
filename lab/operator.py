"""The operator's side of the chain, run where `pulumi up` would run (on the host, even when the lab is in a VM):
evaluate the program against the emulated cloud, render the gateway files and build the vpnctl zipapp.

Output: a directory (0700) with program-result.json (host_config + the gateway's SSH host key, as cloud-init would
receive it) and gateway-files.json (the files the delivery pushes). Both hold secrets: files are 0600 and the
directory is removed by `lab down`. The push itself happens inside the lab, from the operator namespace.

    python -m lab.operator <dir> [static|bgp]
"""

from __future__ import annotations

import base64
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from lab import host_config_source, paths
from lab.addresses import LAB_PLAN

log = logging.getLogger(__name__)

PROGRAM_RESULT = "program-result.json"
GATEWAY_FILES = "gateway-files.json"


def _write_secret_json(path: Path, obj: object) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f)
    os.rename(tmp, path)


def prepare(out_dir: Path, routing: str = "static") -> dict[str, float]:
    from hostconfig.deliver.gateway import vpnctl_file
    from hostconfig.plan import GatewayPlan
    from hostconfig.render import render_gateway_files

    timings: dict[str, float] = {}
    out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    t0 = time.monotonic()
    result = host_config_source.program_host_config(LAB_PLAN, routing)
    _write_secret_json(out_dir / PROGRAM_RESULT, {"host_config": result.host_config,
                                                  "ssh_host_private_key": result.ssh_host_private_key,
                                                  "ssh_host_public_key": result.ssh_host_public_key})
    timings["program"] = time.monotonic() - t0
    t0 = time.monotonic()
    plan = GatewayPlan.from_host_config(result.host_config)
    # The files delivery pushes in production (hostconfig.deliver.program): the rendered set and the vpnctl zipapp.
    delivered = [*render_gateway_files(plan), vpnctl_file()]
    files = [{"path": f.path, "mode": f.mode, "secret": bool(f.secret),
              "content_b64": base64.b64encode(f.content).decode()} for f in delivered]
    _write_secret_json(out_dir / GATEWAY_FILES, {"files": files, "secret_values": list(plan.secrets())})
    timings["render"] = time.monotonic() - t0
    return timings


def start(out_dir: Path, routing: str = "static") -> subprocess.Popen:
    """Run `prepare` in a child process (the Pulumi runtime wants its own main thread), logging to out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(out_dir / "operator.log", "wb") as logf:
        return subprocess.Popen([sys.executable, "-m", "lab.operator", str(out_dir), routing], stdin=subprocess.DEVNULL,
                                stdout=logf, stderr=subprocess.STDOUT, cwd=paths.REPO)


def wait(proc: subprocess.Popen, out_dir: Path, timeout: float = 900) -> None:
    rc = proc.wait(timeout=timeout)
    if rc != 0:
        tail = (out_dir / "operator.log").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"the operator side (program evaluation / rendering) failed (rc {rc}):\n{tail}")


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    timings = prepare(Path(argv[0]), argv[1] if len(argv) > 1 else "static")
    print(json.dumps(timings))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
