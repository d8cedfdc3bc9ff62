"""The rendered files checked by their real consumers: charon + swanctl, the ipsec starter + stroke, nft, systemd,
cloud-init, and the gateway agent's own config parser.

charon runs inside a throwaway network namespace that has only `lo`: it may try to initiate (startup action `add`
-> start_action = start), but the documentation-range peers are unreachable there, so no packet leaves, and nothing
depends on ESP in the kernel (IKE config load and trap policies only).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from hostconfig import gateway_paths as gp
from hostconfig import plan as planmod
from hostconfig.cloudinit import render_user_data
from hostconfig.contract import charon as charon_contract
from hostconfig.contract import crypto as crypto_contract
from hostconfig.plan import GatewayPlan
from hostconfig.render import render_gateway_files, render_legacy_files

GOLDEN = Path(__file__).resolve().parent / "golden"
SCENARIOS = ("default", "custom-crypto", "multi-cidr")
CHARON = "/usr/lib/ipsec/charon"
STARTER = "/usr/lib/ipsec/starter"
STROKE = "/usr/lib/ipsec/stroke"
DEADLINE = 60.0  # seconds; generous for a loaded CI machine
CRED_DIRS = ("x509", "x509ca", "x509ocsp", "x509aa", "x509ac", "x509crl", "pubkey", "private", "rsa", "ecdsa",
             "bliss", "pkcs8", "pkcs12")  # fmt: skip

root = pytest.mark.root


def load_plan(scenario: str) -> GatewayPlan:
    return GatewayPlan.from_host_config(json.loads((GOLDEN / "inputs" / f"{scenario}.json").read_text()))


def gateway_file(plan: GatewayPlan, path: str) -> bytes:
    return next(f.content for f in render_gateway_files(plan) + render_legacy_files(plan) if f.path == path)


def need(tool: str) -> str:
    found = tool if os.path.isabs(tool) and os.access(tool, os.X_OK) else shutil.which(tool)
    if not found:
        pytest.skip(f"{tool} not installed")
    return found


def wait_for(condition, what: str, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-2000:] if log and log.exists() else ""
            pytest.fail(f"process exited ({proc.returncode}) before {what}:\n{tail}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {DEADLINE}s waiting for {what}")
        time.sleep(0.05)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)


# ----------------------------------------------------------------------------------------------- charon + swanctl


class Charon:
    """A charon in a namespace with a private /run (its pid file and, via the rendered snippet, its VICI socket)."""

    def __init__(self, ns: str, workdir: Path, plan: GatewayPlan, stroke: bool = False, daemon: str = CHARON):
        self.ns, self.dir = ns, workdir
        self.run = workdir / "run"
        self.run.mkdir()
        self.log = workdir / "charon.log"
        snippet = workdir / "charon-hybrid-vpn.conf"
        snippet.write_bytes(gateway_file(plan, "/etc/strongswan.d/charon-hybrid-vpn.conf"))
        self.conf = workdir / "strongswan.conf"
        # The rendered snippet first (install_routes, retransmits, the VICI socket under /run), then what a test
        # needs on top: an explicit plugin list (with kdf), a log file.
        self.conf.write_text(
            f"include {snippet}\n"
            "charon {\n"
            "  load = random nonce openssl kdf pem pkcs1 x509 pubkey revocation kernel-netlink socket-default vici"
            f" {'stroke ' if stroke else ''}updown\n"
            f"  plugins {{\n    stroke {{\n      secrets_file = {workdir}/ipsec.secrets\n    }}\n  }}\n"
            f"  filelog {{\n    main {{\n      path = {self.log}\n      default = 1\n"
            "      flush_line = yes\n    }\n  }\n"
            "}\n"
            "swanctl {\n  load = random openssl pem pkcs1 x509 pubkey\n}\n"
            "starter {\n  load_warning = no\n}\n"
        )
        self.env = dict(os.environ, STRONGSWAN_CONF=str(self.conf))
        self.daemon = daemon
        self.vici = self.run / "charon.vici"  # /run/charon.vici inside the namespace: the snippet's socket
        self.proc: subprocess.Popen | None = None

    def ns_shell(self, command: str) -> list[str]:
        """`command` in the namespace with this instance's /run (ip netns exec gives a private mount namespace)."""
        return ["ip", "netns", "exec", self.ns, "sh", "-c", f"mount --bind {self.run} /run && exec {command}"]

    def start(self) -> None:
        out = open(self.dir / "daemon.out", "wb")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(self.ns_shell(self.daemon), env=self.env, stdout=out, stderr=subprocess.STDOUT)
        out.close()
        wait_for(self.vici.is_socket, f"the VICI socket {self.vici}", self.proc, self.log)

    def swanctl(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["swanctl", *args, "--uri", f"unix://{self.vici}"],
            env=self.env, capture_output=True, text=True, timeout=DEADLINE, check=False,
        )  # fmt: skip

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)


@pytest.fixture
def charon(netns, tmp_path):
    need(CHARON)
    need("swanctl")
    started: list[Charon] = []

    def make(plan: GatewayPlan, **kwargs) -> Charon:
        instance = Charon(netns("hvc"), tmp_path, plan, **kwargs)
        started.append(instance)
        instance.start()
        return instance

    yield make
    for instance in started:
        instance.stop()


def raw_conns(text: str) -> dict[str, str]:
    """`swanctl --list-conns --raw`: one `list-conn event {name {...}}` line per connection."""
    out = {}
    for line in text.splitlines():
        match = re.match(r"list-conn event \{(\S+) \{(.*)\}\}$", line)
        if match:
            out[match.group(1)] = match.group(2)
    return out


@root
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_charon_loads_the_rendered_swanctl_conf(charon, tmp_path, scenario):
    plan = load_plan(scenario)
    instance = charon(plan)
    conf_dir = tmp_path / "swanctl"
    for sub in CRED_DIRS:  # swanctl looks for credentials next to the file; empty dirs keep its output clean
        (conf_dir / sub).mkdir(parents=True)
    conf = conf_dir / "swanctl.conf"
    conf.write_bytes(gateway_file(plan, "/etc/swanctl/conf.d/hybrid-vpn.conf"))
    conf.chmod(0o600)

    loaded = instance.swanctl("--load-all", "--noprompt", "--file", str(conf))
    assert loaded.returncode == 0, loaded.stdout + loaded.stderr
    assert loaded.stderr == ""
    assert "loaded ike secret 'ike-tunnel1'" in loaded.stdout
    assert "loaded ike secret 'ike-tunnel2'" in loaded.stdout
    assert "successfully loaded 2 connections, 0 unloaded" in loaded.stdout

    # What charon made of it (its own parse, not our text).
    listed = instance.swanctl("--list-conns", "--raw")
    assert listed.returncode == 0, listed.stderr
    conns = raw_conns(listed.stdout)
    assert sorted(conns) == ["tunnel1", "tunnel2"]
    times = crypto_contract.lifetimes(plan.crypto)
    for tunnel in plan.tunnels:
        c = conns[tunnel.name]
        assert f"local_addrs=[{plan.gateway.private_ip}] remote_addrs=[{tunnel.outside_ip}] version=IKEv2" in c
        assert f"reauth_time=0 rekey_time={times.ike_rekey_time} unique=UNIQUE_REPLACE" in c
        assert f"dpd_delay={crypto_contract.dpd_delay_seconds(plan.crypto)}" in c
        assert f"local-1 {{id={plan.gateway.public_ip} class=pre-shared key" in c
        assert f"remote-1 {{id={tunnel.outside_ip} class=pre-shared key" in c
        assert f"children {{{tunnel.name} {{mode=TUNNEL rekey_time={times.child_rekey_time}" in c
        assert "local-ts=[0.0.0.0/0] remote-ts=[0.0.0.0/0]" in c
        assert f"close_action={charon_contract.GATEWAY_CLOSE_ACTION[plan.crypto.startup_action]}" in c

    log = instance.log.read_text()
    assert "invalid" not in log.lower() and "failed" not in log.lower(), log[-2000:]
    if plan.crypto.startup_action == "start":
        # start_action = trap: the kernel holds trap policies carrying each tunnel's mark (what the VTIs use).
        policies = subprocess.run(["ip", "-n", instance.ns, "xfrm", "policy"], capture_output=True, text=True,
                                  check=True).stdout  # fmt: skip
        for tunnel in plan.tunnels:
            assert f"mark {tunnel.mark:#x}/0xffffffff" in policies, policies
    else:
        # start_action = start: charon initiates at once; the peer is unreachable in this namespace.
        wait_for(lambda: "initiating IKE_SA tunnel2" in instance.log.read_text(), "charon to initiate tunnel2")
        assert f"sending packet: from {plan.gateway.private_ip}[500] to 198.51.100.1[500]" in instance.log.read_text()


@root
def test_charon_refuses_a_broken_proposal(charon, tmp_path):
    """Control: the load above would have failed on a proposal charon does not understand."""
    plan = load_plan("default")
    instance = charon(plan)
    text = gateway_file(plan, "/etc/swanctl/conf.d/hybrid-vpn.conf").decode()
    conf = tmp_path / "broken.conf"
    conf.write_text(text.replace("esp_proposals = aes256-sha256-modp2048", "esp_proposals = aes256-sha256-modp9999"))
    loaded = instance.swanctl("--load-conns", "--file", str(conf))
    assert loaded.returncode != 0
    assert "invalid value for: esp_proposals" in loaded.stdout + loaded.stderr


# ------------------------------------------------------------------------------------- legacy starter + stroke


def starter_conftest(conf: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([STARTER, "--conftest", "--conf", str(conf), "--debug-more"], env=env, capture_output=True,
                          text=True, timeout=DEADLINE, check=False)  # fmt: skip


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_starter_parses_the_legacy_ipsec_conf(tmp_path, scenario):
    need(STARTER)
    conf = tmp_path / "ipsec.conf"
    conf.write_bytes(gateway_file(load_plan(scenario), "/etc/ipsec.conf"))
    env = dict(os.environ, STRONGSWAN_CONF=str(tmp_path / "strongswan.conf"))
    (tmp_path / "strongswan.conf").write_text("")
    result = starter_conftest(conf, env)
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "config OK" in output, output
    # Unknown or deprecated keywords are reported as "# ..." lines and "parsing error(s)" (still rc 0).
    assert not [line for line in output.splitlines() if line.startswith("#")], output
    assert "parsing error" not in output
    assert "Loading conn 'tunnel1'" in output and "Loading conn 'tunnel2'" in output

    # Control: the guide's dead keyword is caught by this very check.
    conf.write_text(conf.read_text().replace("    reauth = no\n", "    reauth = no\n    leftkeepalive = yes\n"))
    output = starter_conftest(conf, env).stdout
    assert "unknown keyword 'leftkeepalive'" in output + starter_conftest(conf, env).stderr


@root
@pytest.mark.parametrize("scenario", ["default", "custom-crypto"])
def test_the_starter_loads_the_legacy_pair_into_charon(netns, tmp_path, scenario):
    """ipsec.conf through the real starter, ipsec.secrets through charon's stroke plugin, in a throwaway namespace."""
    need(STARTER)
    need(STROKE)
    need(CHARON)
    plan = load_plan(scenario)
    instance = Charon(netns("hvs"), tmp_path, plan, stroke=True)  # provides the strongswan.conf and the private /run
    conf = tmp_path / "ipsec.conf"
    conf.write_bytes(gateway_file(plan, "/etc/ipsec.conf"))
    secrets = tmp_path / "ipsec.secrets"
    secrets.write_bytes(gateway_file(plan, "/etc/ipsec.secrets"))
    secrets.chmod(0o600)
    out = open(tmp_path / "starter.out", "wb")  # noqa: SIM115
    proc = subprocess.Popen(instance.ns_shell(f"{STARTER} --nofork --conf {conf}"), env=instance.env, stdout=out,
                            stderr=subprocess.STDOUT)  # fmt: skip
    out.close()
    try:
        def both_added() -> bool:
            log = instance.log.read_text() if instance.log.exists() else ""
            return "added configuration 'tunnel1'" in log and "added configuration 'tunnel2'" in log

        wait_for(both_added, "the starter to add both connections through stroke", proc, tmp_path / "starter.out")
        log = instance.log.read_text()
        for tunnel in plan.tunnels:
            assert f"loaded IKE secret for {plan.gateway.public_ip} {tunnel.outside_ip}" in log
        assert "invalid" not in log.lower(), log[-2000:]
        status = subprocess.run(instance.ns_shell(f"{STROKE} statusall"), env=instance.env, capture_output=True,
                                text=True, timeout=DEADLINE, check=False)  # fmt: skip
        assert status.returncode == 0, status.stderr
        for tunnel in plan.tunnels:
            n = tunnel.name
            assert f"{n}:  {plan.gateway.private_ip}...{tunnel.outside_ip}  IKEv2" in status.stdout
            assert f"{n}:   local:  [{plan.gateway.public_ip}] uses pre-shared key authentication" in status.stdout
            assert f"{n}:   child:  0.0.0.0/0 === 0.0.0.0/0 TUNNEL" in status.stdout
    finally:
        stop(proc)
        subprocess.run(instance.ns_shell(f"{STARTER} --stop"), env=instance.env, capture_output=True, check=False)


# -------------------------------------------------------------------------------------------------------- nft


def nft(ns: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, "nft", *args], input=stdin, capture_output=True, text=True,
                          timeout=DEADLINE, check=False)  # fmt: skip


@root
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_nft_accepts_the_ruleset(netns, tmp_path, scenario):
    need("nft")
    ns = netns("hvn")
    ruleset = tmp_path / "nftables.nft"
    ruleset.write_bytes(gateway_file(load_plan(scenario), "/etc/hybrid-vpn/nftables.nft"))
    checked = nft(ns, "-c", "-f", str(ruleset))
    assert checked.returncode == 0, checked.stderr
    broken = tmp_path / "broken.nft"
    broken.write_text(ruleset.read_text().replace("tcp option maxseg size set", "tcp option maxseg sise set"))
    assert nft(ns, "-c", "-f", str(broken)).returncode != 0  # control: the check does check


@root
def test_nft_replaces_only_its_own_table_atomically_and_idempotently(netns, tmp_path):
    need("nft")
    ns = netns("hvn")
    foreign = "table inet someone_else {\n chain input {\n  type filter hook input priority 0; policy accept;\n }\n}\n"
    assert nft(ns, "-f", "-", stdin=foreign).returncode == 0
    files = {}
    for scenario in ("default", "multi-cidr"):
        files[scenario] = tmp_path / f"{scenario}.nft"
        files[scenario].write_bytes(gateway_file(load_plan(scenario), "/etc/hybrid-vpn/nftables.nft"))

    assert nft(ns, "-f", str(files["default"])).returncode == 0  # the table does not exist yet
    first = nft(ns, "list", "table", "inet", "hybrid_vpn").stdout
    assert nft(ns, "-f", str(files["default"])).returncode == 0  # it exists now: replaced, not appended to
    assert nft(ns, "list", "table", "inet", "hybrid_vpn").stdout == first
    assert "10.0.0.0/16" in first and "tcp option maxseg size set 1379" in first

    assert nft(ns, "-f", str(files["multi-cidr"])).returncode == 0
    second = nft(ns, "list", "table", "inet", "hybrid_vpn").stdout
    assert "192.168.100.0/24" in second and '"Tunnel2"' in second and '"vti-aws1"' not in second
    tables = nft(ns, "list", "tables").stdout.split("\n")
    assert sorted(t for t in tables if t) == ["table inet hybrid_vpn", "table inet someone_else"]
    assert nft(ns, "list", "table", "inet", "someone_else").returncode == 0


# ------------------------------------------------------------------------------------------------------ systemd


@pytest.mark.parametrize("unit_name", ["hybrid-vpn-failover.service", "hybrid-vpn-guard.service"])
def test_systemd_analyze_verifies_the_unit(tmp_path, unit_name):
    analyze = need("systemd-analyze")
    units = next((p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")) if p.is_dir()), None)
    if units is None:
        pytest.skip("no systemd unit directory to verify against")
    # A scratch root: the system's units (for sysinit.target & co), the rendered units, and executable stand-ins for
    # the ExecStart= programs, because verify insists that they exist (the agent is not installed here).
    root_dir = tmp_path / "root"
    shutil.copytree(units, root_dir / "usr/lib/systemd/system", symlinks=True)
    (root_dir / "etc/systemd/system").mkdir(parents=True)
    plan = load_plan("default")
    for name in ("hybrid-vpn-failover.service", "hybrid-vpn-guard.service"):
        path = f"/etc/systemd/system/{name}"
        (root_dir / path.lstrip("/")).write_bytes(gateway_file(plan, path))
    unit = root_dir / "etc/systemd/system" / unit_name
    for program in (gp.VPNCTL.path, gp.NFT):
        stand_in = root_dir / program.lstrip("/")
        stand_in.parent.mkdir(parents=True, exist_ok=True)
        stand_in.write_text("#!/bin/sh\nexit 0\n")
        stand_in.chmod(0o755)

    def verify(path: str) -> subprocess.CompletedProcess:
        return subprocess.run([analyze, "verify", f"--root={root_dir}", path], capture_output=True, text=True,
                              timeout=DEADLINE, check=False)  # fmt: skip

    result = verify(f"/etc/systemd/system/{unit_name}")
    if "Failed to" in result.stderr and "hybrid-vpn" not in result.stderr:
        pytest.skip(f"systemd-analyze verify cannot run here: {result.stderr.strip()[:200]}")
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stdout + result.stderr

    # Control: verify does report a mistake in this setup.
    bad = unit.with_name("hybrid-vpn-bad.service")
    bad.write_text(unit.read_text().replace("[Service]\n", "[Service]\nRestartSecs=1\n"))
    assert "Unknown key 'RestartSecs'" in verify("/etc/systemd/system/hybrid-vpn-bad.service").stderr


# ------------------------------------------------------------------------------------------------------ cloud-init


def cloud_init_schema(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["cloud-init", "schema", "--config-file", str(path)], capture_output=True, text=True,
                          timeout=DEADLINE, check=False)  # fmt: skip


def test_cloud_init_accepts_the_user_data(tmp_path):
    need("cloud-init")
    keygen = need("ssh-keygen")
    key = tmp_path / "ssh_host_ed25519_key"
    subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-C", "hybrid-vpn-dev-gw", "-f", str(key)], check=True)
    user_data = tmp_path / "user-data.yaml"
    user_data.write_text(
        render_user_data(hostname="hybrid-vpn-dev-gw", ssh_host_ed25519_private=key.read_text(),
                         ssh_host_ed25519_public=key.with_suffix(".pub").read_text())
    )  # fmt: skip
    result = cloud_init_schema(user_data)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Valid cloud-config" in result.stdout
    assert cloud_init_schema(GOLDEN / "user-data.yaml").returncode == 0

    # Control: the schema check does refuse a wrong document (an empty key type list).
    user_data.write_text(user_data.read_text().replace("ssh_genkeytypes: [ed25519]", "ssh_genkeytypes: []"))
    refused = cloud_init_schema(user_data)
    assert refused.returncode != 0 and "ssh_genkeytypes" in refused.stdout + refused.stderr


# ------------------------------------------------------------------------------------------------ the agent


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_agent_parses_the_rendered_agent_json(scenario):
    config = pytest.importorskip("hostconfig.agent.config", reason="the gateway agent (hostconfig.agent) is absent")
    plan = load_plan(scenario)
    parsed = config.parse_config(json.loads(gateway_file(plan, "/etc/hybrid-vpn/agent.json")))
    assert [t.interface for t in parsed.tunnels] == [t.interface for t in plan.tunnels]
    assert [str(n) for n in parsed.aws_cidrs] == [str(n) for n in plan.aws_cidrs]
    assert parsed.primary_tunnel == plan.failover.primary


@root
def test_the_agent_accepts_and_applies_the_rendered_ruleset(netns, tmp_path):
    """The agent's own reader (it refuses files touching other tables) and its transaction wrapper, in a netns."""
    agent_nft = pytest.importorskip("hostconfig.agent.nft", reason="the gateway agent (hostconfig.agent) is absent")
    need("nft")
    ns = netns("hvn")
    ruleset = tmp_path / "nftables.nft"
    ruleset.write_bytes(gateway_file(load_plan("multi-cidr"), "/etc/hybrid-vpn/nftables.nft"))
    text = agent_nft.read_ruleset(ruleset, planmod.OWNERSHIP["nft_table"])
    for _ in range(2):
        applied = nft(ns, "-f", "-", stdin=agent_nft.transaction(planmod.OWNERSHIP["nft_table"], text))
        assert applied.returncode == 0, applied.stderr
    assert nft(ns, "list", "tables").stdout.split() == ["table", "inet", "hybrid_vpn"]
