"""Run INSIDE the lab machine (`lab exec root python3 tests/e2e/lab_secrets_audit.py`): looks for the lab's PSKs and the
operator's SSH private key where they must not be, and prints one JSON report. The secrets are read here from the
lab's state files, never passed in argv or the environment (that would itself be the leak this looks for).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script inside the lab machine

from lab.paths import CACHE_DIR, RUNTIME_DIR, STATE_DIR  # noqa: E402  (the run dir: HYBRID_VPN_LAB_RUN or default)

STATE = STATE_DIR
GW_ROOTS = ("etc", "run", "var")
MAX_BYTES = 2 * 1024 * 1024
# the rendered swanctl.conf, and the delivery's rollback copy of the previous one (not matched by conf.d/*.conf)
PSK_FILE_OK = {"/etc/swanctl/conf.d/hybrid-vpn.conf", "/etc/swanctl/conf.d/hybrid-vpn.conf.hybrid-vpn-prev"}


def needles() -> dict[str, bytes]:
    hc = json.loads((STATE / "host_config.json").read_text())
    out = {f"psk of {t['name']}": t["psk"].encode() for t in hc["tunnels"]}
    body = [line for line in (STATE / "ops" / "id_ed25519").read_text().splitlines() if "PRIVATE KEY" not in line]
    out["operator private key"] = max(body, key=len).encode()  # its longest base64 line: unique to this key
    return out


def find(data: bytes, secrets: dict[str, bytes]) -> list[str]:
    return [name for name, value in secrets.items() if value in data]


def pid_of(name: str) -> int:
    return int((STATE / "pids" / name).read_text())


def main() -> int:
    secrets = needles()
    findings: list[str] = []
    checked: dict[str, int] = {}

    def check(label: str, data: bytes) -> list[str]:
        hits = find(data, secrets)
        findings.extend(f"{', '.join(hits)} in {label}" for _ in [0] if hits)
        return hits

    logs = sorted((STATE / "logs").glob("*"))
    for f in logs:
        check(f"lab log {f}", f.read_bytes())
    checked["lab logs"] = len(logs)
    aws_log = STATE / "aws" / "charon.log"
    check("AWS side charon.log", aws_log.read_bytes())
    gw_root = Path(f"/proc/{pid_of('gw-charon')}/root")
    charon_log = (gw_root / "var/log/charon.log").read_bytes()
    check("gateway /var/log/charon.log", charon_log)
    checked["charon log bytes"] = len(charon_log)
    # vpnctl outputs, as the operator would read them on the gateway
    gw_exec = ["nsenter", "--net=/run/netns/hvlab-gw", f"--mount={STATE / 'ns' / 'gw.mnt'}", "--"]
    for argv in (["status"], ["status", "--json"], ["metrics"]):
        proc = subprocess.run(gw_exec + ["/usr/local/sbin/vpnctl", *argv], capture_output=True, timeout=600)
        check(f"vpnctl {' '.join(argv)} output", proc.stdout + proc.stderr)
        checked[f"vpnctl {' '.join(argv)} bytes"] = len(proc.stdout)
    # every process of the machine: argv and environment
    procs = 0
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        for what in ("cmdline", "environ"):
            try:
                check(f"/proc/{p.name}/{what}", (p / what).read_bytes())
            except OSError:
                continue
        procs += 1
    checked["processes"] = procs
    # the gateway's own files: state, metrics, config; a file holding a PSK must be 0600 root
    files = 0
    for top in GW_ROOTS:
        for dirpath, dirnames, filenames in os.walk(gw_root / top):
            rel_dir = "/" + os.path.relpath(dirpath, gw_root)
            if rel_dir.startswith((str(RUNTIME_DIR), str(CACHE_DIR), "/var/cache")):
                dirnames[:] = []
                continue
            for name in filenames:
                path = Path(dirpath) / name
                try:
                    st = path.lstat()
                    if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_BYTES:
                        continue
                    data = path.read_bytes()
                except OSError:
                    continue
                files += 1
                hits = find(data, secrets)
                rel = f"{rel_dir}/{name}"
                if not hits:
                    continue
                mode = stat.S_IMODE(st.st_mode)
                if mode != 0o600 or st.st_uid != 0:
                    findings.append(f"{', '.join(hits)} in {rel} with mode {mode:04o} uid {st.st_uid}")
                elif rel not in PSK_FILE_OK:
                    findings.append(f"{', '.join(hits)} in {rel} (0600, but not a file that should hold it)")
    checked["gateway files"] = files
    print(json.dumps({"findings": findings, "checked": checked, "needles": sorted(secrets)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
