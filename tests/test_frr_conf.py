"""The gateway's frr.conf (routing.mode bgp, issue 16): rendered from the same plan as swanctl.conf, checked by FRR."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest

from hostconfig import gateway_paths
from hostconfig.contract import rules
from hostconfig.frr_check import frr_config_problems
from hostconfig.plan import GatewayPlan, PlanError, frr_view
from hostconfig.render import render_frr_conf, render_gateway_files

REPO = Path(__file__).resolve().parent.parent
FIXTURE = REPO / "tests" / "fixtures" / "host_config.default.json"
ROUTING = {"mode": "bgp", "customer_asn": 65000, "amazon_side_asn": 64512}


def bgp_host_config(**routing) -> dict:
    obj = json.loads(FIXTURE.read_text())
    obj["routing"] = {**ROUTING, **routing}
    return obj


def bgp_plan(**routing) -> GatewayPlan:
    return GatewayPlan.from_host_config(bgp_host_config(**routing))


needs_frr = pytest.mark.skipif(not (shutil.which(gateway_paths.VTYSH)
                                     and Path(gateway_paths.FRR_BGPD).exists()),
                               reason="FRR is not installed (scripts/setup-machine installs Debian's frr)")


def test_static_plan_has_no_routing_and_renders_no_frr_conf():
    plan = GatewayPlan.from_host_config(json.loads(FIXTURE.read_text()))
    assert plan.routing is None
    assert gateway_paths.FRR_CONF.path not in {f.path for f in render_gateway_files(plan)}
    with pytest.raises(ValueError):
        frr_view(plan)


def test_bgp_plan_renders_frr_conf_as_an_owned_file():
    files = {f.path: f for f in render_gateway_files(bgp_plan())}
    frr = files[gateway_paths.FRR_CONF.path]
    assert frr.mode == 0o640 and not frr.secret
    text = frr.content.decode()
    assert text.startswith("! Managed by hybrid-vpn") and "bgp no-rib" in text


def test_one_neighbor_per_tunnel_at_awss_inside_address_with_awss_timers():
    plan = bgp_plan(customer_asn=65010, amazon_side_asn=64600)
    view = frr_view(plan)
    assert [(n["tunnel"], n["address"], n["local_address"], n["interface"]) for n in view["neighbors"]] == [
        (t.name, str(t.aws_inside_ip), str(t.gateway_inside_ip), t.interface) for t in plan.tunnels]
    text = render_frr_conf(plan)
    assert "router bgp 65010\n" in text and " timers bgp 10 30\n" in text
    for t in plan.tunnels:
        assert f" neighbor {t.aws_inside_ip} remote-as 64600\n" in text
        assert f" neighbor {t.aws_inside_ip} update-source {t.gateway_inside_ip}\n" in text
        assert f" neighbor {t.aws_inside_ip} timers 10 30\n" in text
    # The primary tunnel starts primary, the other standby, prepended with the customer ASN.
    primary = plan.tunnel(plan.failover.primary).aws_inside_ip
    other = next(t.aws_inside_ip for t in plan.tunnels if t.name != plan.failover.primary)
    assert f"  neighbor {primary} route-map {rules.ROUTE_MAP_PRIMARY} out\n" in text
    assert f"  neighbor {other} route-map {rules.ROUTE_MAP_STANDBY} out\n" in text
    assert " set as-path prepend 65010 65010\n" in text


def test_the_vlan_cidrs_and_their_halves_are_networks_only_the_more_specific_map_lets_the_halves_out():
    obj = bgp_host_config()
    obj["linode"]["vlan_cidrs"] = ["172.16.0.0/12", "192.168.50.0/24"]
    text = render_frr_conf(GatewayPlan.from_host_config(obj))
    for net in ("172.16.0.0/12", "172.16.0.0/13", "172.24.0.0/13", "192.168.50.0/24", "192.168.50.0/25",
                "192.168.50.128/25"):
        assert f"  network {net}\n" in text
    assert "ip prefix-list hybrid-vpn-vlan-halves seq 10 permit 172.24.0.0/13\n" in text
    halves_map = [block for block in text.split("route-map ") if "match ip address prefix-list hybrid-vpn-vlan-halves"
                  in block]
    assert [block.split()[0] for block in halves_map] == [rules.ROUTE_MAP_PRIMARY_MORE_SPECIFIC]


@pytest.mark.parametrize(("routing", "key"), [
    ({"customer_asn": 64512}, "host_config.routing.customer_asn"),
    ({"customer_asn": 7224}, "host_config.routing.customer_asn"),
    ({"amazon_side_asn": 65000, "customer_asn": 65001}, None),
    ({"amazon_side_asn": 100}, "host_config.routing.amazon_side_asn"),
    ({"mode": "static"}, "host_config.routing.mode"),
])
def test_plan_checks_the_routing_rules_again(routing, key):
    if key is None:
        assert bgp_plan(**routing).routing.amazon_side_asn == 65000
        return
    with pytest.raises(PlanError) as err:
        bgp_plan(**routing)
    assert key in str(err.value)


def test_plan_counts_the_halves_against_awss_route_limit():
    obj = bgp_host_config()
    obj["linode"]["vlan_cidrs"] = [f"172.16.{i}.0/24" for i in range(34)]
    obj["gateway"]["vlan_address"] = "172.16.1.1/24"
    with pytest.raises(PlanError) as err:
        GatewayPlan.from_host_config(obj)
    assert "host_config.linode.vlan_cidrs: 34 VLAN CIDRs make 102 BGP routes" in str(err.value)
    static = copy.deepcopy(obj)
    del static["routing"]
    assert GatewayPlan.from_host_config(static).routing is None


@needs_frr
def test_frr_accepts_the_rendered_config(tmp_path):
    path = tmp_path / "frr.conf"
    path.write_text(render_frr_conf(bgp_plan()))
    assert frr_config_problems(path) == []


@needs_frr
@pytest.mark.parametrize(("breakage", "finder"), [
    ((" timers bgp 10 30\n", " timers bgp ten 30\n"), "vtysh --dryrun"),  # not a command
    # a well-formed command bgpd refuses (no such neighbor): only bgpd's own dry run finds it, vtysh passes it
    (("  neighbor 169.254.11.1 activate\n", "  neighbor 169.254.99.1 activate\n"), "bgpd --dryrun"),
])
def test_frr_check_finds_a_broken_config(tmp_path, breakage, finder):
    text = render_frr_conf(bgp_plan())
    assert breakage[0] in text
    path = tmp_path / "frr.conf"
    path.write_text(text.replace(breakage[0], breakage[1]))
    found = frr_config_problems(path)
    assert any(p.startswith(finder) for p in found), found
