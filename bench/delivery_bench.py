"""Delivery timings against a real sshd in a network namespace: first push, no-op push, one-file push, no-op diff.

    sudo .venv/bin/python bench/delivery_bench.py [--runs 5]

Files: the renderer's output for tests/fixtures/host_config.default.json plus the vpnctl zipapp (the real set of
docs/contracts.md §4), under a scratch remote_root. Validation is the real gateway validation (nft -c, json.tool,
vpnctl --help) inside the namespace; activation is `true` (no systemd in a namespace).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hostconfig.deliver import DesiredFile, push_files  # noqa: E402
from hostconfig.deliver.gateway import validation_commands, vpnctl_file  # noqa: E402
from hostconfig.deliver.provider import GatewayConfigProvider, encode_files, file_hashes  # noqa: E402
from hostconfig.deliver.sshd_lab import start_sshd  # noqa: E402
from hostconfig.gateway_paths import AGENT_CONFIG  # noqa: E402


def gateway_files() -> tuple[list[DesiredFile], tuple[str, ...]]:
    from hostconfig.plan import GatewayPlan
    from hostconfig.render import render_gateway_files

    hc = json.loads((REPO / "tests" / "fixtures" / "host_config.default.json").read_text())
    plan = GatewayPlan.from_host_config(hc)
    files = [DesiredFile.from_rendered(f) for f in render_gateway_files(plan)] + [vpnctl_file()]
    return files, plan.secrets()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    files, secrets = gateway_files()
    validate = validation_commands()
    activate = [["true"]]
    ns = f"hvbench-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
    results: dict[str, list[float]] = {"first": [], "noop": [], "one_file": [], "connect": []}
    try:
        with tempfile.TemporaryDirectory(prefix="hvbench-") as tmp:
            lab = start_sshd(ns, Path(tmp) / "sshd")
            target = lab.target()
            try:
                for i in range(args.runs):
                    root = Path(tmp) / f"root{i}"
                    root.mkdir()

                    def push(fs, root=root):
                        started = time.perf_counter()
                        report = push_files(target, fs, validate=validate, activate=activate, remote_root=str(root),
                                            secret_values=secrets)
                        return time.perf_counter() - started, report

                    seconds, report = push(files)
                    assert len(report.changed) == len(files)
                    results["first"].append(seconds)
                    results["connect"].append(report.connect_seconds)
                    seconds, report = push(files)
                    assert report.changed == []
                    results["noop"].append(seconds)
                    changed = [replace(f, content=f.content + b"\n") if f.path == AGENT_CONFIG.path else f
                               for f in files]
                    seconds, report = push(changed)
                    assert report.changed_paths == [AGENT_CONFIG.path]
                    results["one_file"].append(seconds)
            finally:
                lab.stop()
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)

    # A no-op `pulumi up`: the provider's diff over (state, new inputs) finds nothing, so no SSH at all.
    encoded = encode_files(files)
    props = {"host": "192.0.2.2", "port": 22, "host_public_key": "k", "hashes": file_hashes(encoded, secret=False),
             "secret_hashes": file_hashes(encoded, secret=True)}
    provider = GatewayConfigProvider()
    diff_runs = []
    for _ in range(200):
        started = time.perf_counter()
        assert provider.diff("id", props, dict(props)).changes is False
        diff_runs.append(time.perf_counter() - started)
    started = time.perf_counter()
    gateway_files()
    render_seconds = time.perf_counter() - started

    total_bytes = sum(len(f.content) for f in files)
    print(f"files: {len(files)} ({total_bytes} bytes, vpnctl {len(files[-1].content)} bytes), runs: {args.runs}")
    for name, label in (("first", "first push (all files, validate, activate)"),
                        ("noop", "no-op push (connect + hash check only)"),
                        ("one_file", "one changed file (agent.json)"),
                        ("connect", "  of which SSH connect+auth (first push)")):
        values = results[name]
        print(f"{label:45s} median {statistics.median(values):.3f} s  min {min(values):.3f}  max {max(values):.3f}")
    print(f"{'no-op `up`: provider diff (no SSH)':45s} median {statistics.median(diff_runs) * 1e6:.0f} us")
    print(f"{'program side: render + vpnctl zipapp build':45s} {render_seconds:.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
