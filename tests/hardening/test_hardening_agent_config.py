"""Bad agent.json at the `vpnctl` boundary (root): after a good reconcile, every corrupt, partial or invalid config is
refused with exit 2 and a message naming the key, the rule and a right value, and the kernel state (routes of every
table, rules, links, addresses, nftables, sysctls, read through `ip -j` / `nft -j`) stays byte for byte the same."""

from __future__ import annotations

import copy
import json
import uuid
from pathlib import Path

import pytest
from hardening_lib import kernel_snapshot, tree_fingerprint, vpnctl
from testlib import DELETE as _DELETE
from testlib import set_path

pytestmark = pytest.mark.root

PWNED = Path(f"/tmp/pwned-{uuid.uuid4().hex[:8]}")


def _edit(path: tuple, value: object):
    def apply(data: dict) -> str:
        set_path(data, path, value)
        return json.dumps(data, indent=2)
    return apply



# (id, how to produce the file text from the good config dict, expected fragments: key, rule, example)
CASES = [
    ("corrupt-json", lambda d: json.dumps(d).replace(",", ",,", 1), ["not valid JSON", "line 1 column", "example:"]),
    ("truncated", lambda d: json.dumps(d, indent=2)[:400], ["not valid JSON", "truncated", "example:"]),
    ("empty-file", lambda d: "", ["empty", "example:", '"version": 1']),
    ("whitespace-only", lambda d: " \n\t\n", ["empty", "example:"]),
    ("not-an-object", lambda d: "[1, 2]", ["must be an object", "example:"]),
    ("missing-key", _edit(("mtu",), _DELETE), ["mtu: is required", "example: 1419"]),
    ("missing-nested-key", _edit(("tunnels", 1, "aws_inside_ip"), _DELETE),
     ["tunnels[1].aws_inside_ip: is required", "example: 169.254.11.1"]),
    ("wrong-type-string-for-int", _edit(("mtu",), "1419"), ["mtu: must be an integer 576..1446", "example: 1419"]),
    ("wrong-type-bool", _edit(("ownership", "route_table"), True), ["ownership.route_table: must be an integer",
                                                                    "example: 1519"]),
    ("wrong-type-list-for-object", _edit(("probe",), []), ["probe: must be an object", "example:"]),
    ("wrong-version", _edit(("version",), 2),
     ["version: version 2 is not the version this agent knows (1)", "example: 1"]),
    ("unknown-key", _edit(("colour",), "blue"), ["colour: unknown key", "known keys", "public_interface"]),
    ("unknown-nested-key", _edit(("tunnels", 0, "psk"), "x"), ["tunnels[0].psk: unknown key", "known keys"]),
    ("bad-cidr-prefix", _edit(("aws_cidrs",), ["10.0.0.0/33"]), ["aws_cidrs[0]: '10.0.0.0/33' is not an IPv4 network",
                                                                 "example: [10.0.0.0/16]"]),
    ("bad-cidr-host-bits", _edit(("vlan_cidrs",), ["172.16.1.1/12"]), ["vlan_cidrs[0]: '172.16.1.1/12' is not an IPv4",
                                                                       "no host bits", "example:"]),
    ("bad-cidr-not-a-string", _edit(("aws_cidrs",), [167772160]), ["aws_cidrs[0]", "example: [10.0.0.0/16]"]),
    ("duplicate-cidr", _edit(("aws_cidrs",), ["10.0.0.0/16", "10.0.0.0/16"]),
     ["aws_cidrs[1]: 10.0.0.0/16 is listed twice", "example:"]),
    ("duplicate-marks", _edit(("tunnels", 1, "mark"), 100), ["tunnels[1].mark: 100 is also tunnel1's mark",
                                                            "example:"]),
    ("duplicate-interfaces", _edit(("tunnels", 1, "interface"), "vti-aws1"),
     ["tunnels[1].interface: vti-aws1 is also tunnel1's interface", "example:"]),
    ("ifname-too-long", _edit(("tunnels", 0, "interface"), "vti-aws1-toolong"),
     ["tunnels[0].interface: 'vti-aws1-toolong' is not valid: a Linux interface name", "example: vti-aws1"]),
    ("ifname-space", _edit(("tunnels", 0, "interface"), "vti aws1"), ["tunnels[0].interface: 'vti aws1' is not"]),
    ("ifname-slash", _edit(("tunnels", 0, "interface"), "vti/aws1"), ["tunnels[0].interface: 'vti/aws1' is not"]),
    ("ifname-empty", _edit(("tunnels", 0, "interface"), ""), ["tunnels[0].interface: '' is not"]),
    ("ifname-dotdot", _edit(("tunnels", 0, "interface"), ".."), ["tunnels[0].interface: '..' is not"]),
    ("ifname-trailing-newline", _edit(("tunnels", 0, "interface"), "vti-aws1\n"),
     ["tunnels[0].interface: 'vti-aws1\\n' is not valid: a Linux interface name", "example: vti-aws1"]),
    ("ifname-shell-subst", _edit(("tunnels", 0, "interface"), f"$(touch {PWNED})"), ["tunnels[0].interface"]),
    ("ifname-backticks", _edit(("tunnels", 1, "interface"), f"`touch {PWNED}`"), ["tunnels[1].interface"]),
    ("ifname-semicolon", _edit(("vlan_interface",), f"eth1;touch {PWNED}"), ["vlan_interface: 'eth1;touch"]),
    ("nft-table-newline", _edit(("ownership", "nft_table"), "hybrid_vpn\n"),
     ["ownership.nft_table: 'hybrid_vpn\\n' is not valid: an nftables table name", "example: hybrid_vpn"]),
    ("tunnel-name-newline", _edit(("tunnels", 0, "name"), "tunnel1\n"), ["tunnels[0].name: 'tunnel1\\n' is not",
                                                                        "example: tunnel1"]),
]


@pytest.fixture(scope="module")
def baseline(reconciled_gateway):
    return kernel_snapshot(reconciled_gateway.ns)


@pytest.mark.parametrize("case, make_text, expected", CASES, ids=[c[0] for c in CASES])
def test_bad_config_is_refused_and_kernel_state_is_unchanged(reconciled_gateway, baseline, case, make_text,
                                                              expected):
    gw = reconciled_gateway
    bad = gw.tmp / f"agent-{case}.json"
    bad.write_text(make_text(copy.deepcopy(gw.data)))
    state_before = tree_fingerprint(gw.tmp / "state")
    for command in (["reconcile", "--tunnel-links", "given"], ["updown", "--tunnel-links", "given"],
                    ["status"], ["metrics", "--write"]):
        env = {"PLUTO_VERB": "down-client", "PLUTO_CONNECTION": "tunnel1"} if command[0] == "updown" else None
        proc = vpnctl(gw.ns, bad, *command, env=env)
        err = proc.stderr.decode(errors="replace")
        assert proc.returncode == 2, (command, proc.returncode, err)
        assert "Traceback" not in err, err
        assert "configuration error" in err and str(bad) in err
        for fragment in expected:
            assert fragment in err, f"{command[0]}: {fragment!r} not in {err!r}"
    assert kernel_snapshot(gw.ns) == baseline
    assert tree_fingerprint(gw.tmp / "state") == state_before
    assert not PWNED.exists()


def test_non_utf8_and_unreadable_files_are_refused(reconciled_gateway, baseline):
    gw = reconciled_gateway
    bad = gw.tmp / "agent-latin1.json"
    bad.write_bytes(json.dumps(gw.data).replace("eth1", "eth\xe91").encode("latin-1"))
    proc = vpnctl(gw.ns, bad, "reconcile", "--tunnel-links", "given")
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode == 2 and "cannot read" in err and "utf-8" in err and "Traceback" not in err
    missing = gw.tmp / "no-such-agent.json"
    proc = vpnctl(gw.ns, missing, "reconcile", "--tunnel-links", "given")
    assert proc.returncode == 2 and b"no such file" in proc.stderr
    assert kernel_snapshot(gw.ns) == baseline


def test_the_good_config_still_converges_with_nothing_to_do(reconciled_gateway, baseline):
    """Control: the same command with the good file works and finds nothing to change (the baseline is converged)."""
    gw = reconciled_gateway
    proc = vpnctl(gw.ns, gw.config, "reconcile", "--tunnel-links", "given", "--json")
    assert proc.returncode == 0, proc.stderr.decode()
    result = json.loads(proc.stdout)
    assert result["changes"] == [] and result["problems"] == []
    assert kernel_snapshot(gw.ns) == baseline
