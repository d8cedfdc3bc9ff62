"""`vpnctl doctor` against a real kernel in throwaway namespaces (root).

This host kernel has no ip_vti and no ESP, so the agent's tests stand veth pairs in for the VTIs (their far ends in an
'AWS' namespace answer the probes). The doctor is not told otherwise: in link mode 'vti' it reports the veths as "not
a VTI", in mode 'given' it skips the VTI identity, and the XFRM and SA checks fail honestly (no SA can be installed
here). Every other check must be ok on a reconciled namespace and must fail, with its hint, when that state is broken
by hand. The lab VM runs the same command where VTIs and ESP exist.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
AGENT_TESTS = REPO / "tests" / "agent"
if str(AGENT_TESTS) not in sys.path:
    sys.path.insert(0, str(AGENT_TESTS))
from agent_testlib import config_dict, run_in_netns, wire_gateway, write_config  # noqa: E402
from testlib import Charon, wait_for  # noqa: E402

pytestmark = pytest.mark.root

BOTH = frozenset({"tunnel1", "tunnel2"})
# What this kernel cannot have (no ESP: no SA, no XFRM state/policy from charon) and what is absent in these tests
# unless a test starts it (charon, the failover daemon).
NO_ESP_HERE = {"xfrm state tunnel1", "xfrm state tunnel2", "xfrm policy tunnel1", "xfrm policy tunnel2"}
NO_CHARON = {"sa tunnel1", "sa tunnel2"}
GIVEN_SKIPS = {"vti vti-aws1", "vti vti-aws2"}


def _reconcile(config: str, up: frozenset[str], active: str | None) -> list[str]:
    from hostconfig.agent.config import load_config
    from hostconfig.agent.desired import TunnelView
    from hostconfig.agent.kernel import Kernel
    from hostconfig.agent.reconcile import Reconciler

    with Kernel() as kernel:
        result = Reconciler(load_config(config), kernel, "given").run(TunnelView(up, active))
    return result.problems


@dataclass
class Gateway:
    ns: str
    aws: str
    tmp: Path
    data: dict[str, Any]
    config: Path

    def sh(self, *args: str, ns: str | None = None, check: bool = True, **kw: Any) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", ns or self.ns, *args], capture_output=True, text=True,
                              check=check, **kw)

    def doctor(self, *args: str) -> tuple[int, dict[str, dict], str]:
        """Run the real CLI in the namespace; (exit status, checks by name, text report)."""
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "PYTHONPATH": str(REPO)}
        base = ["ip", "netns", "exec", self.ns, sys.executable, "-m", "hostconfig.agent.cli", "doctor", "--config",
                str(self.config), "--charon-log", str(self.tmp / "charon.log"), "--probe-timeout", "5", *args]
        js = subprocess.run([*base, "--json"], capture_output=True, text=True, env=env, timeout=120)
        text = subprocess.run(base, capture_output=True, text=True, env=env, timeout=120)
        assert js.returncode in (0, 1), js.stderr
        assert text.returncode == js.returncode
        report = json.loads(js.stdout)
        return js.returncode, {c["name"]: c for c in report["checks"]}, text.stdout

    def kernel_snapshot(self) -> str:
        # IPv4 only and nft -s (stateless): IPv6 DAD flags and counters change by themselves.
        parts = [self.sh("ip", "-d", "link").stdout, self.sh("ip", "-4", "addr").stdout,
                 self.sh("ip", "-4", "route", "show", "table", "all").stdout, self.sh("ip", "-4", "rule").stdout,
                 self.sh("nft", "-s", "list", "ruleset").stdout, self.sh("ip", "xfrm", "policy").stdout,
                 self.sh("sysctl", "net.ipv4.ip_forward", "net.ipv4.conf.all.rp_filter").stdout]
        return "\n".join(parts)


@pytest.fixture
def gw(netns, tmp_path) -> Gateway:
    for tool in ("nft", "unshare"):
        if subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True).returncode != 0:
            pytest.skip(f"needs {tool} (Debian packages nftables, util-linux)")
    ns, aws = netns("hvdgw"), netns("hvdaws")
    data = config_dict(tmp_path)
    data["probe"].update({"interval_ms": 100, "timeout_ms": 300, "down_after": 3, "up_after": 3,
                          "failback_hold_seconds": 2})
    config = write_config(tmp_path, data)
    (tmp_path / "charon.log").write_text("")
    wire_gateway(ns, aws, data)
    assert run_in_netns(ns, _reconcile, str(config), BOTH, "tunnel1") == []
    return Gateway(ns, aws, tmp_path, data, config)


def not_ok(checks: dict[str, dict]) -> dict[str, str]:
    return {name: c["status"] for name, c in checks.items() if c["status"] != "ok"}


# ---------------------------------------------------------------------------------------------- healthy namespace


SWANCTL_CONF = """connections {{
{conns}
}}
secrets {{
{secrets}
}}
"""


def _swanctl_conf(data: dict[str, Any], psk: str) -> str:
    conns, secrets = [], []
    for t in data["tunnels"]:
        conns.append(f"""  {t['name']} {{
    version = 2
    local_addrs = {data['local_outside_ip']}
    remote_addrs = {t['remote_outside_ip']}
    local {{ auth = psk
      id = 203.0.113.10 }}
    remote {{ auth = psk
      id = {t['remote_outside_ip']} }}
    children {{ {t['name']} {{ local_ts = 0.0.0.0/0
      remote_ts = 0.0.0.0/0
      mark_in = {t['mark']}
      mark_out = {t['mark']}
      start_action = none }} }}
  }}""")
        secrets.append(f"""  ike-{t['name']} {{ id-local = 203.0.113.10
    id-remote = {t['remote_outside_ip']}
    secret = "{psk}" }}""")
    return SWANCTL_CONF.format(conns="\n".join(conns), secrets="\n".join(secrets))


def test_healthy_namespace_every_supported_check_ok_and_doctor_changes_nothing(gw: Gateway):
    charon_path = Path("/usr/lib/ipsec/charon")
    if not charon_path.exists():
        pytest.skip("needs strongSwan charon (Debian package strongswan-charon)")
    charon = Charon(gw.ns, gw.tmp)  # its VICI socket is <tmp>/charon.vici, as in agent.json
    assert charon.socket == Path(gw.data["paths"]["vici_socket"])
    daemon = None
    try:
        charon.start()
        # charon is up but has no connection loaded yet
        _, checks, _ = gw.doctor("--tunnel-links", "given")
        assert "connection not loaded" in checks["sa tunnel1"]["found"]
        assert "swanctl --load-all" in checks["sa tunnel1"]["hint"]

        conf = gw.tmp / "swanctl.conf"
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(_swanctl_conf(gw.data, "doctortest" + os.urandom(8).hex()))
        load = gw.sh("swanctl", "--load-all", "--file", str(conf), "--uri", f"unix://{charon.socket}", check=False,
                     env={**os.environ, "STRONGSWAN_CONF": str(charon.conf)})
        assert load.returncode == 0, load.stdout + load.stderr

        daemon = subprocess.Popen(
            ["ip", "netns", "exec", gw.ns, sys.executable, "-m", "hostconfig.agent.cli", "daemon", "--tunnel-links",
             "given", "--config", str(gw.config)],
            env={"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL,
            stderr=open(gw.tmp / "daemon.log", "w"))  # noqa: SIM115
        state = gw.tmp / "state" / "daemon-state.json"

        def daemon_has_both_up() -> bool:
            try:
                data = json.loads(state.read_text())
            except (OSError, ValueError):
                return False
            return data.get("active") == "tunnel1" and all(
                data.get("tunnels", {}).get(n, {}).get("up") for n in BOTH)
        wait_for(daemon_has_both_up, what="the failover daemon to see both tunnels up")

        before = gw.kernel_snapshot()
        rc, checks, text = gw.doctor("--tunnel-links", "given")
        (gw.tmp / "doctor-healthy.txt").write_text(text)
        assert rc == 1  # the SA/XFRM lines cannot pass on a kernel without ESP
        assert not_ok(checks) == {**{n: "FAIL" for n in NO_ESP_HERE | NO_CHARON},
                                  **{n: "skip" for n in GIVEN_SKIPS}}, text
        assert checks["sa tunnel2"]["found"] == "no IKE SA (connection loaded)"
        assert checks["daemon"]["found"] == "running, active tunnel1"
        assert checks["nftables inet hybrid_vpn"]["found"].startswith("loaded, equal to the file")
        assert checks["probe tunnel1"]["found"].endswith("via vti-aws1")
        assert checks["route 10.0.0.0/16 standby"]["found"].endswith("(tunnel2)")
        assert gw.kernel_snapshot() == before, "doctor changed kernel state"

        # link mode 'vti' (the default): the veths are reported as what they are, never as VTIs
        rc, checks, text = gw.doctor()
        assert checks["vti vti-aws1"]["status"] == "FAIL" and "kind veth" in checks["vti vti-aws1"]["found"]
        assert "is not a VTI" in checks["vti vti-aws1"]["hint"]
        assert set(not_ok(checks)) == NO_ESP_HERE | NO_CHARON | GIVEN_SKIPS
    finally:
        if daemon is not None:
            if daemon.poll() is None:
                daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=60)
        charon.stop()


# ---------------------------------------------------------------------------------------------- broken states


def _drop_probes_on_aws_side(gw: Gateway) -> None:
    ruleset = ('table inet brk {\n chain input {\n  type filter hook input priority 0; policy accept;\n'
               '  iifname "aws2" drop\n }\n}\n')
    gw.sh("nft", "-f", "-", ns=gw.aws, input=ruleset)


BROKEN: list[tuple[str, Any, str, str, set[str]]] = [
    # (id, how to break it, the line that must fail, a phrase of its report line, other lines allowed to change)
    ("active route deleted",
     lambda g: g.sh("ip", "route", "del", "10.0.0.0/16", "table", "1519", "metric", "100"),
     "route 10.0.0.0/16 active", "no active route", {"route 10.0.0.0/16 standby"}),
    ("unreachable route deleted",
     lambda g: g.sh("ip", "route", "del", "unreachable", "10.0.0.0/16", "table", "1519", "metric", "4294967295"),
     "route 10.0.0.0/16 unreachable", "leak protection missing", set()),
    ("ip_forward off", lambda g: g.sh("sysctl", "-qw", "net.ipv4.ip_forward=0"),
     "sysctl net.ipv4.ip_forward", "found 0. Likely: the gateway does not forward", set()),
    ("rp_filter strict on a tunnel", lambda g: g.sh("sysctl", "-qw", "net.ipv4.conf.vti-aws2.rp_filter=1"),
     "sysctl net.ipv4.conf.vti-aws2.rp_filter", "loose", set()),
    ("disable_policy off", lambda g: g.sh("sysctl", "-qw", "net.ipv4.conf.vti-aws1.disable_policy=0"),
     "sysctl net.ipv4.conf.vti-aws1.disable_policy", "drops them", set()),
    ("nft table flushed", lambda g: g.sh("nft", "flush", "table", "inet", "hybrid_vpn"),
     "nftables inet hybrid_vpn", "edited or flushed", set()),
    ("nft table deleted", lambda g: g.sh("nft", "delete", "table", "inet", "hybrid_vpn"),
     "nftables inet hybrid_vpn", "table not loaded", set()),
    ("rule deleted", lambda g: g.sh("ip", "rule", "del", "pref", "10100"),
     "rule 10100", "never reach table 1519", set()),
    ("foreign rule at our priority",
     lambda g: g.sh("ip", "rule", "add", "pref", "10100", "fwmark", "0x64", "lookup", "main"),
     "rule 10100", "not its own", set()),
    ("tunnel link down", lambda g: g.sh("ip", "link", "set", "vti-aws2", "down"),
     "link vti-aws2", "down", {"probe tunnel2", "route 10.0.0.0/16 standby"}),
    ("wrong mtu", lambda g: g.sh("ip", "link", "set", "vti-aws1", "mtu", "1500"),
     "link vti-aws1", "mtu 1500", set()),
    ("inside address deleted", lambda g: g.sh("ip", "addr", "flush", "dev", "vti-aws1"),
     # the kernel also drops every route through a link that loses its last IPv4 address
     "address vti-aws1", "found none", {"probe tunnel1", "route 10.0.0.0/16 active"}),
    ("AWS stops answering on tunnel2", _drop_probes_on_aws_side,
     "probe tunnel2", "no reply", {"route 10.0.0.0/16 standby"}),
    ("XFRM policies with a wrong mark",
     lambda g: [g.sh("ip", "xfrm", "policy", "add", "src", "0.0.0.0/0", "dst", "0.0.0.0/0", "dir", d, "mark",
                     "0x65", "mask", "0xffffffff", "tmpl", "src", a, "dst", b, "proto", "esp", "reqid", "1", "mode",
                     "tunnel") for d, a, b in (("out", "10.8.0.2", "198.51.100.1"),
                                               ("in", "198.51.100.1", "10.8.0.2"))],
     "xfrm policy tunnel1", "mark_in/mark_out must be 100", set()),
]


@pytest.mark.parametrize("breaker,line,phrase,also", [b[1:] for b in BROKEN], ids=[b[0] for b in BROKEN])
def test_broken_state_fails_the_right_line_with_the_right_hint(gw: Gateway, breaker, line, phrase, also):
    _, before, _ = gw.doctor("--tunnel-links", "given")
    baseline = NO_ESP_HERE | NO_CHARON | GIVEN_SKIPS | {"daemon"}
    assert set(not_ok(before)) == baseline, not_ok(before)
    breaker(gw)
    rc, after, text = gw.doctor("--tunnel-links", "given")
    assert rc == 1
    assert after[line]["status"] == "FAIL", text
    report_line = next(x for x in text.splitlines() if x.startswith(f"FAIL {line}:"))
    assert phrase in report_line, report_line
    changed = {n for n in after if after[n]["status"] != before[n]["status"]}
    assert changed - {line} <= also, f"unexpected lines changed: {sorted(changed - {line} - also)}\n{text}"


def test_real_xfrm_policies_with_the_right_mark_pass_the_policy_check(gw: Gateway):
    # Policies (unlike SAs) can be installed on this kernel: the gatherer parses real `ip xfrm policy` output.
    for d, a, b in (("out", "10.8.0.2", "198.51.100.1"), ("in", "198.51.100.1", "10.8.0.2")):
        gw.sh("ip", "xfrm", "policy", "add", "src", "0.0.0.0/0", "dst", "0.0.0.0/0", "dir", d, "mark", "0x64",
              "mask", "0xffffffff", "tmpl", "src", a, "dst", b, "proto", "esp", "reqid", "1", "mode", "tunnel")
    _, checks, _ = gw.doctor("--tunnel-links", "given")
    assert checks["xfrm policy tunnel1"]["status"] == "ok"
    assert checks["xfrm policy tunnel2"]["status"] == "FAIL"
    assert checks["xfrm state tunnel1"]["status"] == "FAIL"  # an SA cannot be installed on this kernel


def test_log_errors_from_the_charon_log_file_are_reported(gw: Gateway):
    (gw.tmp / "charon.log").write_text(
        "Jan 10 10:00:01 09[IKE] received NO_PROPOSAL_CHOSEN notify error\n"
        "Jan 10 10:00:02 11[IKE] received AUTHENTICATION_FAILED notify error\n")
    _, checks, _ = gw.doctor("--tunnel-links", "given", "--no-probe")
    assert checks["charon log NO_PROPOSAL_CHOSEN"]["status"] == "FAIL"
    assert "crypto profile" in checks["charon log NO_PROPOSAL_CHOSEN"]["hint"]
    assert checks["charon log AUTHENTICATION_FAILED"]["status"] == "FAIL"
    assert checks["charon log CHILD_SA not established"]["status"] == "ok"
    assert checks["probe tunnel1"]["status"] == "skip"
