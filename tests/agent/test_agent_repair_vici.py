"""The repair driver (daemon.Repairer) against a fake VICI server speaking the real wire protocol: which commands
reach charon, in which order, with which arguments, how often; and what status, metrics and doctor show. No root."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest
from agent_testlib import config_dict, write_config
from fake_vici import FakeVici
from testlib import contract_example

from hostconfig.agent.config import load_config
from hostconfig.agent.daemon import Repairer
from hostconfig.agent.doctor_checks import check_repairs
from hostconfig.agent.doctor_facts import DaemonFacts, DoctorFacts, Unavailable
from hostconfig.agent.health import RepairPolicy, TunnelHealth
from hostconfig.agent.metrics import render_metrics
from hostconfig.agent.status import render_repair
from hostconfig.agent.status_contract import DaemonState
from hostconfig.agent.vici_client import ViciUnavailable

POLICY = RepairPolicy()


@pytest.fixture
def config(tmp_path):
    return load_config(write_config(tmp_path, config_dict(tmp_path)))


def setup(config, up: dict[str, bool], vici: FakeVici) -> tuple[Repairer, dict[str, TunnelHealth]]:
    health = {t.name: TunnelHealth(t.name, 3, 5) for t in config.tunnels}
    for name, is_up in up.items():
        if is_up:
            health[name].presume_up(0.0, "test")
    return Repairer(config, health, POLICY, vici.connect, wall=lambda: 1_700_000_000.0), health


def install_both(config, vici: FakeVici) -> None:
    for t in config.tunnels:
        vici.add(t.name, str(t.remote_outside_ip), t.mark)


def run(repairer: Repairer, start: float, until: float, active: str | None = "tunnel1", step: float = 0.25) -> None:
    now = start
    while now <= until:
        repairer.tick(now, active)
        now += step


def test_a_dead_tunnel_is_deleted_then_initiated_once_without_waiting(config, caplog):
    vici = FakeVici()
    install_both(config, vici)
    old = vici.tunnel_ikes("tunnel2")[0].ike_id
    repairer, _health = setup(config, {"tunnel1": True, "tunnel2": False}, vici)
    caplog.set_level(logging.INFO, logger="hostconfig.agent.daemon")
    run(repairer, 0.0, 4.75)
    assert vici.commands == []
    run(repairer, 5.0, 15.0)
    # forced: the DELETE still goes out, and the initiate gets a fresh IKE_SA instead of queueing on the dying one
    assert vici.commands == [("terminate", {"ike-id": str(old), "timeout": "-1", "force": "yes"}),
                             ("initiate", {"child": "tunnel2", "timeout": "-1"})]
    new = vici.tunnel_ikes("tunnel2")
    assert len(new) == 1 and new[0].ike_id != old
    repairs = [r.getMessage() for r in caplog.records if r.getMessage().startswith("repair ")]
    assert len(repairs) == 1 and repairs[0].startswith("repair tunnel2 (reestablish, #1 for this tunnel)")
    assert f"delete IKE_SA #{old}, initiate tunnel2" in repairs[0]
    snap = repairer.snapshot("tunnel2", 15.0)
    assert snap.total == 1 and snap.by_kind == {"reestablish": 1} and snap.last is not None and snap.last.initiated
    assert snap.next_allowed_in_seconds == pytest.approx(10.0, abs=0.5)
    # still dead on the new SA: the second repair waits for the backoff (20 s after the first)
    run(repairer, 15.25, 24.75)
    assert len(vici.commands) == 2
    run(repairer, 25.0, 26.0)
    assert [c[0] for c in vici.commands] == ["terminate", "initiate"] * 2
    assert vici.connections < 40  # one listing a second plus the commands, not one per tick


def test_duplicates_of_a_healthy_tunnel_are_deleted_keeping_the_newest(config):
    vici = FakeVici()
    install_both(config, vici)
    t1 = config.tunnel("tunnel1")
    older = vici.add("tunnel1", str(t1.remote_outside_ip), t1.mark, established=50)  # crossed initiation, older
    older.children[0].install_time = 50
    newest = vici.tunnel_ikes("tunnel1")[0]
    newest.children[0].install_time = 5
    repairer, _ = setup(config, {"tunnel1": True, "tunnel2": True}, vici)
    run(repairer, 0.0, 10.0)
    assert vici.commands == [("terminate", {"ike-id": str(older.ike_id), "timeout": "-1", "force": "yes"})]
    assert [i.ike_id for i in vici.tunnel_ikes("tunnel1")] == [newest.ike_id]
    assert repairer.snapshot("tunnel1", 10.0).by_kind == {"dedupe": 1}


def test_the_last_installed_tunnel_is_left_alone_and_shown_as_waiting(config):
    vici = FakeVici()
    t1 = config.tunnel("tunnel1")
    vici.add("tunnel1", str(t1.remote_outside_ip), t1.mark)  # tunnel2 has no SA at all
    repairer, _ = setup(config, {}, vici)
    run(repairer, 0.0, 120.0, step=1.0)
    assert vici.commands == []
    snap = repairer.snapshot("tunnel1", 120.0)
    assert snap.waiting is not None and "only tunnel with an installed CHILD_SA" in snap.waiting
    assert "now: not repaired: the only tunnel" in render_repair("tunnel1", snap)


def test_an_sa_gone_meanwhile_is_an_error_recorded_and_the_initiate_still_runs(config):
    vici = FakeVici()
    install_both(config, vici)
    repairer, _ = setup(config, {"tunnel1": True, "tunnel2": False}, vici)
    run(repairer, 0.0, 4.75)
    vici.ikes = [i for i in vici.ikes if i.name != "tunnel2"]  # charon dropped it just now (the listing is 1 s old)
    gone = repairer.states["tunnel2"]
    from hostconfig.agent.health import RepairAction
    repairer.execute(RepairAction("reestablish", "tunnel2", "test", (4242,)), 5.0)
    assert [c[0] for c in vici.commands] == ["terminate", "initiate"]
    assert gone.last is not None and "no matching SAs" in gone.last.errors[0]


def test_charon_unreachable_means_no_decision_and_no_crash(config):
    def refuse(path: Path, timeout: float):
        raise ViciUnavailable(f"VICI socket {path}: refused")

    health = {t.name: TunnelHealth(t.name, 3, 5) for t in config.tunnels}
    repairer = Repairer(config, health, POLICY, refuse)
    for now in range(0, 60):
        assert repairer.tick(float(now), "tunnel1") is None
    assert repairer.total == 0


def test_metrics_and_doctor_show_the_repairs(config):
    vici = FakeVici()
    install_both(config, vici)
    repairer, _ = setup(config, {"tunnel1": True, "tunnel2": False}, vici)
    run(repairer, 0.0, 6.0)
    example = DaemonState.from_json(contract_example("daemon-state"))
    snapshot = dataclasses.replace(example, tunnels={
        t: dataclasses.replace(example.tunnels[t], up=t == "tunnel1", repair=repairer.snapshot(t, 6.0))
        for t in ("tunnel1", "tunnel2")})
    text = render_metrics(snapshot)
    assert 'hybrid_vpn_repairs_total{tunnel="tunnel2",kind="reestablish"} 1' in text
    assert 'hybrid_vpn_repairs_total{tunnel="tunnel1",kind="reestablish"} 0' in text
    assert "# TYPE hybrid_vpn_repairs_total counter" in text
    no = Unavailable("test")
    facts = DoctorFacts("given", no, no, no, no, no, no, no, no, no, None, None,
                        daemon=DaemonFacts(True, "tunnel1", repairs={t: s.repair for t, s in snapshot.tunnels.items()}))
    by_name = {r.name: r for r in check_repairs(config, facts)}
    assert by_name["repair tunnel1"].status == "ok" and "no repair needed" in by_name["repair tunnel1"].found
    assert by_name["repair tunnel2"].status == "ok" and "1 repair(s), last reestablish" in by_name[
        "repair tunnel2"].found
    repairs = dict(facts.daemon.repairs)
    repairs["tunnel2"] = dataclasses.replace(repairs["tunnel2"], attempts=3)
    facts.daemon = DaemonFacts(True, "tunnel1", repairs=repairs)
    failing = {r.name: r for r in check_repairs(config, facts)}["repair tunnel2"]
    assert failing.status == "FAIL" and "3 repairs in a row did not heal it" in failing.found
