"""What a later `pulumi up` would do after a small stack edit: two mocked runs of the program compared the way the
engine compares a program with its state (issue 14 points 4 and 5).

The engine is not available here (no Pulumi CLI), so ``plan`` reproduces the part of it these tests need: a resource
is found in the previous run by its name or one of its aliases; inputs named in ``ignoreChanges`` take the previous
value; a changed input the provider cannot update in place (``FORCE_NEW``, from the providers' schemas) or named in
``replaceOnChanges`` means a replacement.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from lab.cloud import CloudAddressPlan, ProgramRun, RegisteredResource, run_program, stack_config_from_file

REPO = Path(__file__).resolve().parent.parent

T_INSTANCE = "linode:index/instance:Instance"
T_ROUTE = "aws:ec2/vpnConnectionRoute:VpnConnectionRoute"
T_PROP = "aws:ec2/vpnGatewayRoutePropagation:VpnGatewayRoutePropagation"

# Inputs that force a new resource. Linode instance: ForceNew in terraform-provider-linode (the provider
# pulumi-linode bridges) linode/instance/schema_resource.go (image, authorized_keys, authorized_users,
# metadata.user_data, interface_generation, firewall_id, backup_id, stackscript_*, ipv4, network_helper,
# disk_encryption) and
# linode/instance/linode_interfaces.go (linode_interfaces and every field in it). AWS: ForceNew in
# terraform-provider-aws for vpn_connection_route and vpn_gateway_route_propagation (all their arguments).
FORCE_NEW: dict[str, set[str]] = {
    T_INSTANCE: {"image", "authorizedKeys", "authorizedUsers", "metadatas", "interfaceGeneration", "firewallId",
                 "backupId", "stackscriptId", "stackscriptData", "ipv4s", "networkHelper", "diskEncryption",
                 "linodeInterfaces"},
    T_ROUTE: {"destinationCidrBlock", "vpnConnectionId"},
    T_PROP: {"routeTableId", "vpnGatewayId"},
}


def plan(old: ProgramRun, new: ProgramRun) -> dict[str, str]:
    """name -> same | update | replace | create (new resources) and delete (old ones nothing claims)."""
    by_key = {(r.type, r.name): r for r in old.resources}  # a URN is unique; (type, name) is here
    steps: dict[str, str] = {}
    claimed: set[tuple[str, str]] = set()
    for resource in new.resources:
        if not resource.id and not resource.type.startswith("pulumi:providers:"):
            continue  # a component: nothing in the cloud to compare
        previous = _previous(resource, by_key)
        if previous is None:
            steps[resource.name] = "create"
            continue
        claimed.add((previous.type, previous.name))
        steps[resource.name] = _step(previous, resource)
    for (typ, name), r in by_key.items():
        if (typ, name) not in claimed and (r.id or typ.startswith("pulumi:providers:")):
            steps[name] = "delete"
    return steps


def _previous(resource: RegisteredResource,
              by_key: dict[tuple[str, str], RegisteredResource]) -> RegisteredResource | None:
    for name in (resource.name, *(alias.rsplit("::", 1)[-1] for alias in resource.aliases)):
        if (resource.type, name) in by_key:
            return by_key[(resource.type, name)]
    return None


def _path(path: str) -> list[str | int]:
    """``linodeInterfaces[0].firewallId`` -> ["linodeInterfaces", 0, "firewallId"] (the engine's property paths)."""
    return [int(p) if p.isdigit() else p for p in re.findall(r"[^.\[\]]+", path)]


def _with_ignored(new: dict[str, Any], old: dict[str, Any], paths: tuple[str, ...]) -> dict[str, Any]:
    """What the engine does with ignoreChanges: the old value (or its absence) replaces the program's."""
    out = copy.deepcopy(new)
    for path in paths:
        *parents, last = _path(path)
        src, dst = old, out
        try:
            for part in parents:
                src, dst = src[part], dst[part]
        except (KeyError, IndexError, TypeError):
            continue
        if isinstance(src, dict) and last not in src:
            dst.pop(last, None)
        else:
            dst[last] = copy.deepcopy(src[last])
    return out


def _step(previous: RegisteredResource, resource: RegisteredResource) -> str:
    inputs = _with_ignored(resource.inputs, previous.inputs, resource.ignore_changes)
    keys = set(previous.inputs) | set(inputs)
    changed = {k for k in keys if previous.inputs.get(k) != inputs.get(k)}
    if not changed:
        return "same"
    if changed & (FORCE_NEW.get(resource.type, set()) | set(resource.replace_on_changes)):
        return "replace"
    return "update"


def changed(steps: dict[str, str]) -> dict[str, str]:
    return {name: step for name, step in steps.items() if step != "same"}


def dev() -> dict[str, Any]:
    config = copy.deepcopy(stack_config_from_file(REPO / "stacks" / "Pulumi.lab.yaml"))
    config["hybrid-vpn:linode"]["authorized_keys"] = [
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAVxIhEPKLnSJDJbSWjsXaFcd3vWoJD9a38FGX/4KgnN ops@laptop"]
    config["hybrid-vpn:linode"]["vlan_cidrs"] = ["172.16.0.0/16", "192.168.50.0/24"]
    config["hybrid-vpn:linode"]["gateway_vlan_address"] = "172.16.1.1/24"
    return config


def existing_vpc(config: dict[str, Any], route_tables: Any) -> dict[str, Any]:
    aws = config["hybrid-vpn:aws"]
    aws.pop("vpc_cidr")
    aws.update({"vpc_id": "vpc-0a1b2c3d4e5f60718", "cidrs": ["10.0.0.0/16"], "route_table_ids": route_tables})
    return config


@pytest.fixture(scope="module")
def base_run() -> ProgramRun:
    return run_program(dev())


# ---------------------------------------------------------------------------------------------------------------------
# Point 5: names by what things are
# ---------------------------------------------------------------------------------------------------------------------
def test_routes_are_named_by_their_cidr(base_run):
    routes = {r.name: r.inputs["destinationCidrBlock"] for r in base_run.of_type(T_ROUTE)}
    assert routes == {"vpn-route-172.16.0.0-16": "172.16.0.0/16", "vpn-route-192.168.50.0-24": "192.168.50.0/24"}


def test_inserting_a_cidr_adds_one_route_and_changes_nothing_else(base_run):
    config = dev()
    config["hybrid-vpn:linode"]["vlan_cidrs"] = ["10.200.0.0/16", "172.16.0.0/16", "192.168.50.0/24"]
    steps = plan(base_run, run_program(config))
    # The host config lists the VLAN CIDRs, so delivery pushes the new list: that update is the point of the edit.
    assert changed(steps) == {"vpn-route-10.200.0.0-16": "create", "gateway-config": "update"}


def test_removing_the_first_cidr_deletes_only_its_route(base_run):
    config = dev()
    config["hybrid-vpn:linode"]["vlan_cidrs"] = ["192.168.50.0/24"]
    config["hybrid-vpn:linode"]["gateway_vlan_address"] = "192.168.50.1/24"
    steps = plan(base_run, run_program(config))
    assert steps["vpn-route-172.16.0.0-16"] == "delete"
    assert steps["vpn-route-192.168.50.0-24"] == "same"  # by index it would have been route-0: a replacement


def test_propagations_are_named_by_route_table_and_inserting_one_changes_nothing_else():
    old = run_program(existing_vpc(dev(), ["rtb-0a1b2c3d4e5f60718"]))
    assert [r.name for r in old.of_type(T_PROP)] == ["vpn-propagation-rtb-0a1b2c3d4e5f60718"]
    new = run_program(existing_vpc(dev(), ["rtb-00000000000000009", "rtb-0a1b2c3d4e5f60718"]))
    assert changed(plan(old, new)) == {"vpn-propagation-rtb-00000000000000009": "create"}


def test_all_route_tables_are_named_by_the_ids_the_invoke_returns():
    """aws.ec2.get_route_tables is a plain invoke on a plain VPC id: it runs at preview, so the names are known."""
    tables = ("rtb-00000000000000001", "rtb-00000000000000003")
    old = run_program(existing_vpc(dev(), "all"), address_plan=CloudAddressPlan(route_table_ids=tables))
    assert sorted(r.name for r in old.of_type(T_PROP)) == [f"vpn-propagation-{t}" for t in tables]
    grown = CloudAddressPlan(route_table_ids=("rtb-00000000000000002", *tables))  # a table added in the VPC
    new = run_program(existing_vpc(dev(), "all"), address_plan=grown)
    assert changed(plan(old, new)) == {"vpn-propagation-rtb-00000000000000002": "create"}


def test_the_route_table_of_a_new_vpc_is_named_main(base_run):
    """Its id is unknown at preview, so the name says which table it is."""
    assert [r.name for r in base_run.of_type(T_PROP)] == ["vpn-propagation-main"]


def _as_named_by_index(run: ProgramRun, config: dict[str, Any]) -> ProgramRun:
    """The same resources under the names the program gave them before (vpn-route-<i> in config order)."""
    cidrs = config["hybrid-vpn:linode"]["vlan_cidrs"]
    renamed = []
    for r in run.resources:
        if r.type == T_ROUTE:
            r = dataclasses.replace(r, name=f"vpn-route-{cidrs.index(r.inputs['destinationCidrBlock'])}", aliases=())
        elif r.type == T_PROP:
            r = dataclasses.replace(r, name="vpn-propagation-0", aliases=())
        renamed.append(r)
    return ProgramRun(outputs=run.outputs, secret_paths=run.secret_paths, resources=renamed)


def test_aliases_move_a_stack_named_by_index_without_churn(base_run):
    old = _as_named_by_index(base_run, dev())
    assert sorted(r.name for r in old.of_type(T_ROUTE)) == ["vpn-route-0", "vpn-route-1"]
    assert changed(plan(old, base_run)) == {}


def _as_made_by_the_previous_program(run: ProgramRun, config: dict[str, Any]) -> ProgramRun:
    """A state as the program before this change left it: index names, no FirewallRules, the firewall attached by its
    own ``interfaces`` (with every rule inline) instead of the instance's ``firewallId``."""
    old = _as_named_by_index(run, config)
    resources = []
    instance = old.one(T_INSTANCE)
    for r in old.resources:
        if r.type == "pulumi-python:dynamic/hybrid-vpn:FirewallRules":
            continue
        if r.type == T_INSTANCE:
            inputs = copy.deepcopy(r.inputs)
            inputs["linodeInterfaces"][0].pop("firewallId")
            r = dataclasses.replace(r, inputs=inputs)
        if r.type == "linode:index/firewall:Firewall":
            rules = run.one("pulumi-python:dynamic/hybrid-vpn:FirewallRules").inputs["inbounds"]
            r = dataclasses.replace(r, inputs={**r.inputs, "inbounds": rules,
                                               "interfaces": [int(instance.id) * 10 + 1]})
        resources.append(r)
    return ProgramRun(outputs=old.outputs, secret_paths=old.secret_paths, resources=resources)


def test_a_stack_of_the_previous_program_upgrades_with_one_create_and_no_replacement(base_run):
    old = _as_made_by_the_previous_program(base_run, dev())
    assert "firewallId" not in old.one(T_INSTANCE).inputs["linodeInterfaces"][0]
    assert changed(plan(old, base_run)) == {"gateway-firewall-rules": "create"}


def test_aliases_are_only_right_for_the_order_the_stack_had(base_run):
    """Upgrading and inserting a CIDR in the same `pulumi up` maps the index names to the wrong CIDRs: the preview
    shows route replacements (docs/changes.md: upgrade first with the lists unchanged)."""
    old = _as_named_by_index(base_run, dev())
    config = dev()
    config["hybrid-vpn:linode"]["vlan_cidrs"] = ["10.200.0.0/16", "172.16.0.0/16", "192.168.50.0/24"]
    steps = plan(old, run_program(config))
    assert steps["vpn-route-10.200.0.0-16"] == "replace"  # claims vpn-route-0, which held 172.16.0.0/16
    for route in run_program(config).of_type(T_ROUTE):
        assert route.delete_before_replace, "AWS refuses a second route for the same CIDR: delete first"


# ---------------------------------------------------------------------------------------------------------------------
# Point 4: small edits do not replace the gateway; a needed replacement deletes first
# ---------------------------------------------------------------------------------------------------------------------
def test_adding_an_authorized_key_replaces_nothing(base_run):
    config = dev()
    config["hybrid-vpn:linode"]["authorized_keys"].append(
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKx2CXzp0xowL6/LgEeiGwIWHDIfLAG4aZBddpti4SFg ops2@laptop")
    new = run_program(config)
    assert new.one(T_INSTANCE).inputs["authorizedKeys"] != base_run.one(T_INSTANCE).inputs["authorizedKeys"]
    assert changed(plan(base_run, new)) == {}


def test_a_user_data_template_edit_replaces_nothing(base_run, tmp_path):
    program = tmp_path / "__main__.py"
    text = (REPO / "__main__.py").read_text()
    edited = text.replace("ssh_host_ed25519_public=keys[1])",
                          "ssh_host_ed25519_public=keys[1]) + '# template edit\\n'", 1)
    assert edited != text
    program.write_text(edited)
    new = run_program(dev(), program=program)
    assert new.one(T_INSTANCE).inputs["metadatas"] != base_run.one(T_INSTANCE).inputs["metadatas"]
    assert changed(plan(base_run, new)) == {}


def test_a_new_image_replaces_the_instance_deleting_it_first(base_run):
    config = dev()
    config["hybrid-vpn:linode"]["image"] = "linode/debian13"
    new = run_program(config)
    steps = changed(plan(base_run, new))
    assert steps["gateway-instance"] == "replace"
    # The label is unique per account and the VLAN address is held by one interface: create-before-delete fails.
    assert new.one(T_INSTANCE).delete_before_replace
    assert new.one(T_INSTANCE).inputs["label"] == base_run.one(T_INSTANCE).inputs["label"]


def test_instance_ignores_only_the_inputs_that_cloud_init_uses_once(base_run):
    instance = base_run.one(T_INSTANCE)
    assert set(instance.ignore_changes) == {"authorizedKeys", "metadatas", "linodeInterfaces[0].firewallId"}
    assert not set(instance.ignore_changes) & {"image", "linodeInterfaces", "type", "region", "label"}


def test_unrelated_resources_keep_create_before_delete(base_run):
    """delete_before_replace only where two copies cannot coexist."""
    dbr = sorted(r.name for r in base_run.resources if r.delete_before_replace)
    assert dbr == ["gateway-instance", "vpn-propagation-main", "vpn-route-172.16.0.0-16", "vpn-route-192.168.50.0-24"]


def test_rebuild_switch_makes_a_user_data_edit_a_replacement(base_run, monkeypatch):
    """HYBRID_VPN_REBUILD_GATEWAY=1: the way to boot a gateway from the current user data (ignored inputs otherwise
    keep their state value, even through a replacement)."""
    config = dev()
    config["hybrid-vpn:linode"]["authorized_keys"].append(
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKx2CXzp0xowL6/LgEeiGwIWHDIfLAG4aZBddpti4SFg ops2@laptop")
    monkeypatch.setenv("HYBRID_VPN_REBUILD_GATEWAY", "1")
    new = run_program(config)
    assert new.one(T_INSTANCE).ignore_changes == ()
    assert changed(plan(base_run, new))["gateway-instance"] == "replace"
    assert new.one(T_INSTANCE).delete_before_replace
