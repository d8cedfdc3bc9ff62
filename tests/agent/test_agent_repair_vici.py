"""The repair driver (daemon.Repairer) against a fake VICI server speaking the real wire protocol: which commands
reach charon, in which order, with which arguments, how often; and what status, metrics and doctor show. No root."""

from __future__ import annotations

import dataclasses
import logging
import time
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
    """Tick on a fake clock; after each tick wait for the worker's VICI calls, so that the next tick takes them in
    (the daemon's loop never waits: there the next tick is whichever comes after the call returned)."""
    now = start
    while now <= until:
        repairer.tick(now, active)
        assert repairer.worker.wait(10.0)
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
    assert gone.total == 1 and gone.last is not None and gone.last.errors == []  # counted at the decision
    assert repairer.worker.wait(10.0)
    repairer.tick(5.0, "tunnel1")  # takes in the commands' outcome
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


# ---- charon busy (it answers VICI only after the updown hook it runs): the daemon's loop goes on ------------------

def tick_while_held(repairer: Repairer, start: float, seconds: float) -> tuple[float, int]:
    """Tick as the daemon's loop does, every 50 ms for ``seconds`` of real time (the fake clock advances alike);
    returns the slowest tick and how many ran."""
    slowest, ticks, began = 0.0, 0, time.monotonic()
    while time.monotonic() - began < seconds:
        t0 = time.monotonic()
        repairer.tick(start + (t0 - began), "tunnel1")
        slowest, ticks = max(slowest, time.monotonic() - t0), ticks + 1
        time.sleep(0.05)
    return slowest, ticks


def test_a_listing_charon_holds_back_does_not_hold_up_the_loop(config):
    vici = FakeVici()
    install_both(config, vici)
    repairer, _ = setup(config, {"tunnel1": True, "tunnel2": True}, vici)
    run(repairer, 0.0, 1.0)
    repairer.tick(1.25, "tunnel1")  # takes in the listing asked for at 1.0
    before = repairer.facts
    assert before is not None and set(before) == {"tunnel1", "tunnel2"}
    t1 = config.tunnel("tunnel1")
    vici.hold("list-sas")
    try:
        vici.add("tunnel1", str(t1.remote_outside_ip), t1.mark)  # a reauthentication's new SA charon cannot list yet
        slowest, ticks = tick_while_held(repairer, 2.0, 3.0)  # longer than the client's 2 s read timeout
        # The old code listed on the loop's thread: the tick took the whole read timeout (2 s) every second.
        assert slowest < 0.5, f"a tick took {slowest:.2f}s while charon held list-sas back"
        assert ticks >= 20
        assert vici.held_most == 1  # one listing under way at most, not one per second piling up
        assert repairer.facts is before  # the last listing that completed is what a down event is judged by
    finally:
        vici.release()
    assert repairer.worker.wait(10.0)
    run(repairer, 10.0, 11.5)  # charon answers again: the next listing is taken in
    assert repairer.facts is not None and len(repairer.facts["tunnel1"].ikes) == 2
    assert repairer.listed_at is not None and repairer.listed_at >= 10.0


def test_a_repairs_commands_charon_holds_back_do_not_hold_up_the_loop(config, caplog):
    vici = FakeVici()
    install_both(config, vici)
    old = vici.tunnel_ikes("tunnel2")[0].ike_id
    repairer, _ = setup(config, {"tunnel1": True, "tunnel2": False}, vici)
    run(repairer, 0.0, 4.75)
    vici.hold("terminate", "initiate")
    caplog.set_level(logging.INFO, logger="hostconfig.agent.daemon")
    try:
        slowest, _ticks = tick_while_held(repairer, 5.0, 3.0)
        assert slowest < 0.5, f"a tick took {slowest:.2f}s while charon held the repair's commands back"
        # decided, logged and counted at once (status shows it), though its commands have not been answered yet
        snap = repairer.snapshot("tunnel2", 8.0)
        assert snap.total == 1 and snap.by_kind == {"reestablish": 1}
        assert sum(r.getMessage().startswith("repair tunnel2 (reestablish") for r in caplog.records) == 1
    finally:
        vici.release()
    assert repairer.worker.wait(15.0)
    repairer.tick(8.5, "tunnel1")
    # once charon answers, both went out (the terminate's client may have given up on its answer and sent the
    # initiate, so the fake may see them in either order)
    assert sorted(vici.commands, key=lambda c: c[0]) == [("initiate", {"child": "tunnel2", "timeout": "-1"}),
                                                         ("terminate", {"ike-id": str(old), "timeout": "-1",
                                                                        "force": "yes"})]
