"""Secrets audit, the part that needs no lab VM (root): the program on the emulated cloud, the full render, a real
SSH push to an sshd in a namespace, the delivered vpnctl reconciling a gateway namespace. Each tunnel PSK and the
operator's SSH private key are searched for everywhere they must not be: plain stack outputs and resource inputs,
every rendered file but swanctl.conf, the cloud-init user data, the logs (DEBUG), the process list during the push,
files on the gateway that are not 0600, sshd's log, the agent's output, state and metrics files.

Left for the lab (issue 7): the journal and charon's log after a full lab run, and the VM's own process list."""

from __future__ import annotations

import base64
import binascii
import copy
import json
import logging
import os
import secrets
import shutil
import stat
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
from agent_testlib import wire_gateway
from hardening_lib import REPO, without_ipv6

pytestmark = pytest.mark.root

cloud = pytest.importorskip("lab.cloud", reason="lab/cloud.py (the emulated cloud) not in the tree")


def _requirements() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, sshd)")
    for tool in ("/usr/sbin/sshd", "ssh-keygen", "nft", "python3"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (Debian packages openssh-server, nftables, python3)")


class Needles:
    """The secret strings to look for: both PSKs whole, and every base64 line of the operator's private key."""

    def __init__(self, psks: list[str], private_key: str):
        self.psks = psks
        self.key_lines = [ln for ln in private_key.splitlines() if ln and not ln.startswith("-----") and len(ln) > 16]
        assert self.key_lines, "the private key has no body lines to look for"

    def found_in(self, text: str | bytes) -> list[str]:
        data = text.decode(errors="replace") if isinstance(text, bytes) else text
        hits = [f"PSK #{i + 1}" for i, psk in enumerate(self.psks) if psk in data]
        if any(line in data for line in self.key_lines):
            hits.append("operator private key")
        return hits


def _walk(value: Any, path: str = ""):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _walk(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _walk(v, f"{path}[{i}]")
    else:
        yield path, value


def _under(path: str, roots: set[str]) -> bool:
    return any(path == p or path.startswith(p + ".") or path.startswith(p + "[") for p in roots)


def _decoded(value: Any) -> str:
    """The text and, when it is base64 (cloud-init user data), its decoding too."""
    text = str(value)
    try:
        return text + "\n" + base64.b64decode(text, validate=True).decode(errors="replace")
    except (binascii.Error, ValueError):
        return text


class ProcessWatcher(threading.Thread):
    """Reads every /proc/<pid>/cmdline as fast as it can until stopped; records what contained a secret."""

    def __init__(self, needles: Needles):
        super().__init__(daemon=True)
        self.needles = needles
        self.stop = threading.Event()
        self.scans = 0
        self.seen: set[str] = set()
        self.hits: list[str] = []

    def run(self) -> None:
        while not self.stop.is_set():
            for entry in os.scandir("/proc"):
                if not entry.name.isdigit():
                    continue
                try:
                    cmdline = Path(entry.path, "cmdline").read_bytes()
                except OSError:
                    continue
                argv = cmdline.replace(b"\0", b" ").decode(errors="replace")
                self.seen.add(argv[:80])
                for hit in self.needles.found_in(cmdline):
                    self.hits.append(f"{hit} in argv of pid {entry.name}: {argv[:60]}...")
            self.scans += 1


@pytest.fixture
def sshd(netns, tmp_path):
    _requirements()
    from hostconfig.deliver.sshd_lab import prepare_sshd

    lab = prepare_sshd(netns("hvsad"), tmp_path / "sshd")
    try:
        lab.start()
        yield lab
    finally:
        lab.stop()


def test_no_psk_or_operator_key_anywhere_it_must_not_be(sshd, netns, tmp_path, caplog):
    from hostconfig.deliver import push_files
    from hostconfig.deliver.gateway import validation_commands, vpnctl_file
    from hostconfig.gateway_paths import AGENT_CONFIG, NFT_RULESET, SWANCTL_CONF, VPNCTL
    from hostconfig.plan import GatewayPlan
    from hostconfig.render import render_gateway_files

    caplog.set_level(logging.DEBUG)
    psks = [f"Audit_psk.{secrets.token_hex(12)}", f"Audit_psk.{secrets.token_hex(12)}"]
    operator_key = sshd.client_private_key
    needles = Needles(psks, operator_key)
    findings: list[str] = []

    # 1. The program on the emulated cloud, PSKs and the operator key set as secret config.
    config = copy.deepcopy(cloud.stack_config_from_file(REPO / "stacks" / "Pulumi.dev.yaml"))
    config["hybrid-vpn:tunnels"]["psks"] = list(psks)
    config["hybrid-vpn:delivery"] = {**config.get("hybrid-vpn:delivery", {}), "ssh_private_key": operator_key}
    run = cloud.run_program(config, stack="dev", secret_keys=("hybrid-vpn:tunnels", "hybrid-vpn:delivery"))
    for path, value in _walk(run.outputs):
        if needles.found_in(str(value)) and not run.is_secret(path):
            findings.append(f"stack output {path} carries {needles.found_in(str(value))} and is not secret")
    assert run.is_secret("host_config")
    psk_outputs = [p for p, v in _walk(run.outputs) if any(psk in str(v) for psk in psks)]
    assert psk_outputs, "the audit must see the PSKs in the (secret) outputs, or it searches the wrong thing"
    user_data_seen = 0
    for resource in run.resources:
        for path, value in _walk(resource.inputs):
            text = _decoded(value) if path.endswith("userData") or "user_data" in path.lower() else str(value)
            if "userData" in path:
                user_data_seen += 1
                for hit in needles.found_in(text):
                    findings.append(f"{hit} in the cloud-init user data ({resource.name}.{path})")
            elif needles.found_in(text) and not _under(path, resource.secret_inputs):
                findings.append(f"{needles.found_in(text)} in plain input {resource.type} {resource.name}.{path}")
    assert user_data_seen, "no user data found in the instance inputs"

    # 2. The full render (as the delivery does it) plus the vpnctl zipapp.
    host_config = run.outputs["host_config"]
    rendered = list(render_gateway_files(GatewayPlan.from_host_config(host_config)))
    files = [*rendered, vpnctl_file()]
    for f in rendered:
        hits = needles.found_in(f.content)
        if f.path == SWANCTL_CONF.path:
            assert set(hits) == {"PSK #1", "PSK #2"} and f.mode == 0o600 and f.secret, (hits, oct(f.mode))
        elif hits:
            findings.append(f"{hits} in rendered {f.path}")

    # 3. A real push over SSH, watching every process's argv while it runs.
    root = tmp_path / "gateway-root"
    root.mkdir()
    watcher = ProcessWatcher(needles)
    watcher.start()
    try:
        report = push_files(sshd.target(), files, validate=validation_commands(), remote_root=str(root))
    finally:
        watcher.stop.set()
        watcher.join(timeout=30)
    assert SWANCTL_CONF.path in report.changed_paths and report.validated, report.as_dict()
    assert watcher.scans >= 3 and any("sshd" in argv for argv in watcher.seen), watcher.scans
    findings.extend(watcher.hits)
    # A second push with a rotated PSK leaves a previous copy behind for the rollback: it must be 0600 too.
    rotated = json.loads(json.dumps(host_config))
    rotated["tunnels"][0]["psk"] = f"Audit_psk.{secrets.token_hex(12)}"
    needles.psks.append(rotated["tunnels"][0]["psk"])
    push_files(sshd.target(), [*render_gateway_files(GatewayPlan.from_host_config(rotated)), files[-1]],
               validate=validation_commands(), remote_root=str(root))
    secret_files = []
    for path in root.rglob("*"):
        if not path.is_file():
            continue
        hits = needles.found_in(path.read_bytes())
        if hits:
            secret_files.append(path)
            mode = stat.S_IMODE(path.stat().st_mode)
            if mode != 0o600:
                findings.append(f"{hits} in {path.relative_to(root)} with mode {mode:o} (must be 0600)")
    assert root / SWANCTL_CONF.path.lstrip("/") in secret_files
    for hit in needles.found_in(sshd.log()):
        findings.append(f"{hit} in sshd's log (LogLevel DEBUG3)")

    # 4. The delivered vpnctl (zipapp, system python3) on a gateway namespace, with the delivered files.
    agent = json.loads((root / AGENT_CONFIG.path.lstrip("/")).read_text())
    state = tmp_path / "agent-state"
    agent["paths"] = {"nft_ruleset": str(root / NFT_RULESET.path.lstrip("/")), "state_dir": str(state),
                      "metrics_file": str(tmp_path / "metrics" / "hybrid_vpn.prom"),
                      "vici_socket": str(tmp_path / "no-charon.vici")}
    agent_config = tmp_path / "agent.json"
    agent_config.write_text(json.dumps(agent))
    gw, aws = netns("hvsagw"), netns("hvsaaws")
    without_ipv6(gw)
    wire_gateway(gw, aws, agent)
    subprocess.run(["ip", "-n", gw, "link", "add", "eth0", "type", "veth", "peer", "name", "wan0"], check=True)
    vpnctl = str(root / VPNCTL.path.lstrip("/"))
    env = {"PATH": os.environ["PATH"], "PLUTO_VERB": "up-client", "PLUTO_CONNECTION": "tunnel1",
           "PLUTO_MARK_IN": "100/0xffffffff", "PLUTO_PEER": agent["tunnels"][0]["remote_outside_ip"]}
    outputs = []
    for args in (["reconcile", "--tunnel-links", "given", "-v"], ["updown", "--tunnel-links", "given", "-v"],
                 ["daemon", "--tunnel-links", "given", "--duration", "3", "-v"], ["metrics", "--write"],
                 ["status", "--json"]):
        proc = subprocess.run(["ip", "netns", "exec", gw, "python3", vpnctl, *args, "--config", str(agent_config)],
                              capture_output=True, text=True, env=env, timeout=120)
        assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
        outputs.append(proc.stdout + proc.stderr)
    assert "hybrid_vpn_" in (tmp_path / "metrics" / "hybrid_vpn.prom").read_text()
    for hit in needles.found_in("\n".join(outputs)):
        findings.append(f"{hit} in vpnctl's output or log")
    for path in [*state.rglob("*"), tmp_path / "metrics" / "hybrid_vpn.prom"]:
        if path.is_file() and needles.found_in(path.read_bytes()):
            findings.append(f"{needles.found_in(path.read_bytes())} in agent file {path.name}")
    assert any(state.iterdir()), "the agent wrote no state: the audit of its files would prove nothing"

    # 5. Every log record of this test (program, render, delivery, paramiko), at DEBUG.
    for hit in needles.found_in(caplog.text):
        findings.append(f"{hit} in the Python logs (DEBUG)")
    assert caplog.records, "no log records captured: the log audit would prove nothing"

    assert findings == []
