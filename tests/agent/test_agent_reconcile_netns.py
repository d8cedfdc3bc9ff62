"""The reconciler against a real kernel, in throwaway namespaces (root).

The tunnel links are veth pairs handed to the reconciler in link mode 'given'; creating real VTIs (mode 'vti') is
exercised by the lab VM. Every check reads the kernel through `ip`/`nft`/`sysctl`, not through the code under test.
"""

from __future__ import annotations

import json
import subprocess

import pytest

pytestmark = pytest.mark.root

BOTH = {"tunnel1", "tunnel2"}


def routes(gw) -> dict[tuple[str, int], str]:
    out = json.loads(gw.ip("-j", "route", "show", "table", "1519", check=False).stdout or "[]")
    return {(r["dst"], r.get("metric", 0)): f"{r.get('type', 'unicast')} {r.get('dev')} {r.get('prefsrc')}"
            f" {r.get('protocol')}" for r in out}


def rules(gw) -> list[dict]:
    return json.loads(gw.ip("-j", "rule", "show").stdout)


def sysctl(gw, key: str) -> str:
    return gw.run("sysctl", "-n", key, check=True).stdout.strip()


def test_cold_apply_then_second_run_changes_nothing(gateway):
    changes, problems = gateway.reconcile(BOTH, "tunnel1")
    assert problems == []
    assert "add_rule pref 10100 lookup 1519" in changes
    assert any(c.startswith("apply_nft table inet hybrid_vpn") for c in changes)
    assert routes(gateway) == {
        ("10.0.0.0/16", 100): "unicast vti-aws1 172.16.1.1 157",
        ("10.0.0.0/16", 200): "unicast vti-aws2 172.16.1.1 157",
        ("10.0.0.0/16", 4294967295): "unreachable None None 157",
    }
    ours = [r for r in rules(gateway) if r["priority"] == 10100]
    assert len(ours) == 1 and ours[0]["table"] == "1519" and ours[0].get("src", "all") == "all"
    assert sysctl(gateway, "net.ipv4.ip_forward") == "1"
    assert sysctl(gateway, "net.ipv4.conf.all.rp_filter") != "2"  # only the VTIs are loosened, not the public NIC
    for dev in ("vti-aws1", "vti-aws2"):
        assert sysctl(gateway, f"net.ipv4.conf.{dev}.rp_filter") == "2"
        assert sysctl(gateway, f"net.ipv4.conf.{dev}.disable_policy") == "1"
        link = json.loads(gateway.ip("-j", "addr", "show", "dev", dev).stdout)[0]
        assert link["mtu"] == 1419 and "UP" in link["flags"]
    addrs = json.loads(gateway.ip("-j", "-4", "addr", "show", "dev", "vti-aws1").stdout)[0]["addr_info"]
    assert [(a["local"], a["prefixlen"]) for a in addrs] == [("169.254.10.2", 30)]
    assert "tcp option maxseg size set 1379" in gateway.run("nft", "list", "table", "inet", "hybrid_vpn").stdout
    assert gateway.reconcile(BOTH, "tunnel1") == ([], [])


def test_switch_is_one_replace_and_both_down_never_leaks(gateway):
    gateway.reconcile(BOTH, "tunnel1")
    changes, problems = gateway.reconcile({"tunnel2"}, "tunnel2")
    assert problems == []
    # the active nexthop now points at vti-aws2; deleting the standby nexthop takes its routes with it
    assert [c.split(" (")[0] for c in changes] == [
        "replace_nexthop id 1519101 dev vti-aws2",
        "delete_nexthop id 1519102 dev vti-aws2 proto 157",
    ]
    assert routes(gateway) == {
        ("10.0.0.0/16", 100): "unicast vti-aws2 172.16.1.1 157",
        ("10.0.0.0/16", 4294967295): "unreachable None None 157",
    }
    get = gateway.ip("route", "get", "10.0.1.1")
    assert "dev vti-aws2" in get.stdout and "src 172.16.1.1" in get.stdout
    # both down: a default route in main would carry AWS traffic in clear text, the unreachable route stops it
    gateway.ip("route", "add", "default", "via", "172.16.1.254", "dev", "eth1")
    changes, _ = gateway.reconcile(set(), None)
    assert [c.split(" (")[0] for c in changes] == ["delete_nexthop id 1519101 dev vti-aws2 proto 157"]
    assert routes(gateway) == {("10.0.0.0/16", 4294967295): "unreachable None None 157"}
    leak = gateway.ip("route", "get", "10.0.1.1", check=False)
    assert leak.returncode != 0 and "No route to host" in leak.stderr  # EHOSTUNREACH from our unreachable route
    assert "via 172.16.1.254" in gateway.ip("route", "get", "192.0.2.7").stdout  # other traffic unaffected


def test_converges_from_perturbed_state_and_leaves_foreign_state_alone(gateway):
    gateway.reconcile(BOTH, "tunnel1")
    # foreign state that must survive
    gateway.ip("route", "add", "192.0.2.0/24", "dev", "eth1", "table", "1519", "proto", "static")
    gateway.ip("route", "add", "198.51.100.0/24", "dev", "eth1", "table", "1520")
    gateway.ip("rule", "add", "pref", "10200", "fwmark", "0x7", "lookup", "1520")
    gateway.run("nft", "add", "table", "inet", "other", check=True)
    # perturbations of what we own
    gateway.ip("rule", "del", "pref", "10100")
    gateway.ip("route", "add", "203.0.113.0/24", "dev", "vti-aws1", "table", "1519", "proto", "157", "metric", "100")
    gateway.ip("route", "replace", "10.0.0.0/16", "dev", "vti-aws2", "table", "1519", "proto", "157", "metric", "100")
    gateway.ip("link", "set", "vti-aws2", "mtu", "1500")
    gateway.ip("addr", "add", "169.254.99.9/32", "dev", "vti-aws1")
    gateway.run("sysctl", "-w", "net.ipv4.conf.vti-aws1.rp_filter=1", check=True)
    gateway.run("nft", "flush", "table", "inet", "hybrid_vpn", check=True)

    changes, problems = gateway.reconcile(BOTH, "tunnel1")
    assert problems == []
    assert sorted(c.split(" ")[0] for c in changes) == sorted([
        "add_rule", "delete_route", "replace_route", "set_link", "delete_address", "set_sysctl", "apply_nft"])
    assert any("203.0.113.0/24" in c for c in changes if c.startswith("delete_route"))
    assert any("(loaded table differs" in c for c in changes if c.startswith("apply_nft"))
    assert routes(gateway)[("10.0.0.0/16", 100)] == "unicast vti-aws1 172.16.1.1 157"
    assert routes(gateway)[("192.0.2.0/24", 0)] == "unicast eth1 None static"
    assert "198.51.100.0/24" in gateway.ip("route", "show", "table", "1520").stdout
    assert any(r["priority"] == 10200 for r in rules(gateway))
    assert "table inet other" in gateway.run("nft", "list", "tables").stdout
    assert gateway.reconcile(BOTH, "tunnel1") == ([], [])


def test_wrong_rules_at_our_priority_are_replaced_and_deleted_table_reapplied(gateway):
    gateway.reconcile(BOTH, "tunnel1")
    gateway.ip("rule", "del", "pref", "10100")
    gateway.ip("rule", "add", "pref", "10100", "from", "172.16.0.0/12", "lookup", "1519")
    gateway.ip("rule", "add", "pref", "10100", "lookup", "main")
    gateway.run("nft", "delete", "table", "inet", "hybrid_vpn", check=True)
    changes, problems = gateway.reconcile(BOTH, "tunnel1")
    assert problems == []
    assert sorted(c.split(" ")[0] for c in changes) == ["add_rule", "apply_nft", "delete_rule", "delete_rule"]
    ours = [r for r in rules(gateway) if r["priority"] == 10100]
    assert len(ours) == 1 and ours[0]["table"] == "1519" and ours[0].get("src", "all") == "all"
    assert gateway.reconcile(BOTH, "tunnel1") == ([], [])


def test_changed_ruleset_file_is_reapplied_and_bad_file_applies_nothing(gateway):
    gateway.reconcile(BOTH, "tunnel1")
    path = gateway.tmp / "nftables.nft"
    path.write_text(path.read_text().replace("1379", "1360"))
    changes, _ = gateway.reconcile(BOTH, "tunnel1")
    assert changes == ["apply_nft table inet hybrid_vpn (ruleset file changed)"]
    assert "size set 1360" in gateway.run("nft", "list", "table", "inet", "hybrid_vpn").stdout
    # a ruleset nft refuses: the old table stays loaded (atomic), the problem is reported
    path.write_text("table inet hybrid_vpn {\n  chain c { this is not nft }\n}\n")
    changes, problems = gateway.reconcile(BOTH, "tunnel1")
    assert changes == [] and "refused the ruleset" in problems[0]
    assert "size set 1360" in gateway.run("nft", "list", "table", "inet", "hybrid_vpn").stdout
    # a ruleset touching another table is refused before any change
    gateway.ip("rule", "del", "pref", "10100")
    path.write_text("flush ruleset\n")
    with pytest.raises(AssertionError, match="flush ruleset"):
        gateway.reconcile(BOTH, "tunnel1")
    assert not any(r["priority"] == 10100 for r in rules(gateway))


def test_missing_link_is_reported_and_leak_protection_still_applied(gateway):
    gateway.ip("link", "del", "vti-aws2")
    changes, problems = gateway.reconcile(BOTH, "tunnel1")
    assert any("vti-aws2 is missing" in p for p in problems)
    assert routes(gateway)[("10.0.0.0/16", 4294967295)] == "unreachable None None 157"
    assert routes(gateway)[("10.0.0.0/16", 100)] == "unicast vti-aws1 172.16.1.1 157"
    assert any(r["priority"] == 10100 for r in rules(gateway))


def test_vti_mode_creates_vtis_or_reports_that_the_kernel_cannot(gateway):
    """On a kernel with ip_vti this checks the real VTI; on this host it checks the failure is reported, not hidden."""
    for dev in ("vti-aws1", "vti-aws2"):
        gateway.ip("link", "del", dev)
    changes, problems = gateway.reconcile(BOTH, "tunnel1", link_mode="vti")
    details = json.loads(gateway.ip("-d", "-j", "link", "show").stdout)
    vtis = {d["ifname"]: d for d in details if d.get("linkinfo", {}).get("info_kind") == "vti"}
    if not vtis:
        assert any("cannot create VTI" in p for p in problems), problems
        assert routes(gateway) == {("10.0.0.0/16", 4294967295): "unreachable None None 157"}
        pytest.skip("this kernel cannot create VTI links: the VTI path is exercised by the lab VM")
    data = vtis["vti-aws1"]["linkinfo"]["info_data"]
    assert (data["local"], data["remote"], data["ikey"], data["okey"]) == ("10.8.0.2", "198.51.100.1", "0.0.0.100",
                                                                            "0.0.0.100")
    assert gateway.reconcile(BOTH, "tunnel1", link_mode="vti") == ([], [])


def test_reconcile_cli_json(gateway):
    proc = gateway.vpnctl("reconcile", "--tunnel-links", "given", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    # no daemon, no charon, nothing routed yet: nothing is known to be up, only leak protection goes in
    assert out["active"] is None and out["problems"] == []
    assert "replace_route 10.0.0.0/16 metric 4294967295 unreachable" in out["changes"]
    again = json.loads(gateway.vpnctl("reconcile", "--tunnel-links", "given", "--json").stdout)
    assert again["changes"] == []


def test_bad_config_applies_nothing(gateway):
    data = json.loads(gateway.config.read_text())
    data["mtu"] = "big"
    gateway.config.write_text(json.dumps(data))
    proc = gateway.vpnctl("reconcile", "--tunnel-links", "given")
    assert proc.returncode == 2 and "mtu: must be an integer 576..1446 bytes" in proc.stderr
    assert gateway.ip("route", "show", "table", "1519", check=False).stdout.strip() == ""
    assert subprocess.run(["ip", "netns", "exec", gateway.ns, "nft", "list", "tables"], capture_output=True,
                          text=True).stdout.strip() == ""
