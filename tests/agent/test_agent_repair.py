"""Pure data-path repair decisions with a fake clock: hold, backoff, one at a time, never the last carrier, dedupe."""

from __future__ import annotations

import pytest

from hostconfig.agent.health import (
    ChildSaFact,
    IkeSaFact,
    RepairPlan,
    RepairPolicy,
    RepairState,
    TunnelHealth,
    TunnelSaFacts,
    plan_repairs,
    replacement_installed,
)

T = ("tunnel1", "tunnel2")
POLICY = RepairPolicy()


def one_sa(ike_id: int, child_id: int, at: float = 0.0) -> IkeSaFact:
    return IkeSaFact(ike_id, at, (ChildSaFact(child_id, at),))


INSTALLED = {"tunnel1": TunnelSaFacts((one_sa(1, 1),)), "tunnel2": TunnelSaFacts((one_sa(2, 2),))}


class World:
    """Both tunnels' probe verdicts and SAs; ``tick`` observes and plans as the daemon does each round."""

    def __init__(self, up: dict[str, bool], sas: dict[str, TunnelSaFacts] | None = None,
                 active: str | None = "tunnel1"):
        self.health = {t: TunnelHealth(t, 3, 5) for t in T}
        for t, is_up in up.items():
            if is_up:
                self.health[t].presume_up(0.0, "test")
        self.sas = dict(INSTALLED if sas is None else sas)
        self.repairs = {t: RepairState() for t in T}
        self.active = active
        self.made: list[tuple[float, str, str]] = []

    def tick(self, now: float) -> RepairPlan:
        for t in T:
            self.repairs[t].observe(self.health[t], self.sas.get(t, TunnelSaFacts()), now, POLICY)
        plan = plan_repairs(T, self.health, self.sas, self.repairs, self.active, now, POLICY)
        for action in plan.actions:
            self.repairs[action.tunnel].record(action, now, 1000.0 + now)
            self.made.append((now, action.kind, action.tunnel))
        return plan

    def run(self, until: float, start: float = 0.0, step: float = 0.5) -> list[tuple[float, str, str]]:
        now = start
        while now <= until:
            self.tick(now)
            now += step
        return self.made


def test_dead_tunnel_with_installed_child_is_reestablished_after_the_hold_only():
    w = World({"tunnel1": True, "tunnel2": False})
    assert w.tick(0.0).actions == ()
    plan = w.tick(4.5)
    assert plan.actions == () and "hold 5s" in plan.waiting["tunnel2"]
    plan = w.tick(5.0)
    (action,) = plan.actions
    assert (action.kind, action.tunnel, action.delete_ike_ids, action.initiate) == ("reestablish", "tunnel2", (2,),
                                                                                    True)
    assert "tunnel1 answers probes" in action.reason
    assert w.repairs["tunnel2"].total == 1 and w.repairs["tunnel2"].last.kind == "reestablish"


def test_a_probe_miss_that_heals_within_the_hold_is_not_repaired():
    w = World({"tunnel1": True, "tunnel2": False})
    w.tick(0.0)
    w.tick(3.0)
    w.health["tunnel2"].presume_up(3.5, "answers again")
    w.tick(3.5)
    w.health["tunnel2"].force_down(4.0, "down again")
    w.tick(4.0)
    assert w.tick(8.5).actions == ()  # the hold starts again at 4.0
    assert [a.tunnel for a in w.tick(9.0).actions] == ["tunnel2"]


def test_no_child_sa_means_charon_is_bringing_it_back_not_us():
    w = World({"tunnel1": True, "tunnel2": False}, sas={"tunnel1": INSTALLED["tunnel1"]})
    assert w.run(120) == []


def test_backoff_doubles_up_to_the_cap_and_resets_once_the_tunnel_stayed_healed():
    w = World({"tunnel1": True, "tunnel2": False})
    times = [t for t, _kind, _tunnel in w.run(1300)]
    # hold 5 s, then waits of 20, 40, 80, 160, 300, 300 ... (the hold restarts at each repair and is shorter)
    gaps = [round(b - a) for a, b in zip(times, times[1:], strict=False)]
    assert times[0] == 5.0
    assert gaps[:6] == [20, 40, 80, 160, 300, 300]
    assert POLICY.backoff(50) == POLICY.backoff_max_seconds
    w.health["tunnel2"].presume_up(1300.0, "healed")
    w.tick(1310.0)
    assert w.repairs["tunnel2"].attempts > 0  # healthy for 10 s only
    w.tick(1300.0 + POLICY.backoff_reset_seconds + 0.5)
    assert w.repairs["tunnel2"].attempts == 0


def test_a_fault_after_a_healed_one_is_repaired_after_the_hold_not_the_old_backoff():
    """An endpoint replacement took three repairs (AWS refused IKE meanwhile); the tunnel healed; a minute later its
    ESP dies while IKE answers. AWS's DPD never fires then, so the gateway's repair is the only thing that moves AWS's
    return traffic: it must come after the hold, not after the 80 s the replacement's repairs had built up."""
    w = World({"tunnel1": True, "tunnel2": False})
    repaired = [t for t, _kind, _tunnel in w.run(70)]
    assert len(repaired) == 3 and w.repairs["tunnel2"].attempts == 3
    w.health["tunnel2"].presume_up(71.0, "the new endpoint answers")
    w.run(100.0, start=71.0)
    w.health["tunnel2"].force_down(100.0, "ESP dropped, IKE alive")
    made = w.run(120.0, start=100.0)[3:]
    assert [(t, kind) for t, kind, _tunnel in made] == [(100.0 + POLICY.hold_seconds, "reestablish")]


def test_a_tunnel_that_flaps_faster_than_the_reset_keeps_backing_off():
    w = World({"tunnel1": True, "tunnel2": False})
    w.run(6.0)
    assert w.repairs["tunnel2"].attempts == 1
    w.health["tunnel2"].presume_up(7.0, "up for a moment")
    w.run(7.0 + POLICY.backoff_reset_seconds - 5, start=7.0)
    w.health["tunnel2"].force_down(18.0, "down again")
    made = w.run(60.0, start=18.0)
    assert [t for t, _kind, _tunnel in made][1] >= 5.0 + POLICY.backoff(1)  # waited out the backoff of repair 1


def test_both_dead_repairs_one_at_a_time_standby_first_never_both():
    w = World({"tunnel1": False, "tunnel2": False}, active="tunnel1")
    made = w.run(5.0)
    assert made == [(5.0, "reestablish", "tunnel2")]  # not the tunnel the kernel sends on
    plan = w.tick(10.0)
    assert plan.actions == () and "one repair at a time: tunnel2" in plan.waiting["tunnel1"]
    # tunnel2 came back with a new CHILD_SA but still does not answer: once its repair settled, tunnel1 may go, since
    # tunnel2 keeps an installed CHILD_SA.
    w.sas["tunnel2"] = TunnelSaFacts((one_sa(3, 3, 6.0),))
    made = w.run(100.0, start=10.5)
    assert made[1] == (5.0 + POLICY.settle_seconds, "reestablish", "tunnel1")
    # then they take turns, each waiting for the other's repair to settle: never two at once
    assert [m[2] for m in made] == ["tunnel2", "tunnel1"] * 2 + ["tunnel2"]
    assert all(b[0] - a[0] >= POLICY.settle_seconds for a, b in zip(made, made[1:], strict=False))


def test_the_only_installed_tunnel_is_never_torn_down():
    # tunnel2 has no CHILD_SA; tunnel1 (active) is probe-dead: it may still carry AWS -> gateway traffic.
    w = World({"tunnel1": False, "tunnel2": False}, sas={"tunnel1": INSTALLED["tunnel1"]}, active="tunnel1")
    assert w.run(600) == []
    assert "only tunnel with an installed CHILD_SA" in w.tick(601).waiting["tunnel1"]
    # the same when it is not the active one
    w = World({"tunnel1": False, "tunnel2": False}, sas={"tunnel2": INSTALLED["tunnel2"]}, active="tunnel1")
    assert w.run(600) == []


def test_the_active_tunnel_is_repaired_when_the_other_answers():
    w = World({"tunnel1": False, "tunnel2": True}, active="tunnel1")
    assert w.run(5.0) == [(5.0, "reestablish", "tunnel1")]


def test_a_settling_repair_ends_early_when_its_tunnel_answers():
    w = World({"tunnel1": False, "tunnel2": False}, active="tunnel1")
    w.run(5.0)
    w.health["tunnel2"].presume_up(7.0, "answers")
    made = w.run(12.0, start=5.5)
    assert made[-1] == (5.5, "reestablish", "tunnel1")  # tunnel2 answers: its repair no longer blocks


def test_duplicates_keep_the_newest_installed_child_and_delete_the_rest():
    crossed = TunnelSaFacts((IkeSaFact(4, 100.0, (ChildSaFact(7, 101.0),)),
                             IkeSaFact(5, 102.0, (ChildSaFact(8, 103.0), ChildSaFact(9, 104.0))),
                             IkeSaFact(6, 105.0, ())))
    w = World({"tunnel1": True, "tunnel2": True}, sas={"tunnel1": crossed, "tunnel2": INSTALLED["tunnel2"]})
    assert w.tick(110.0).actions == ()
    (action,) = w.tick(115.0).actions
    assert action.kind == "dedupe" and not action.initiate
    assert (action.keep_ike_id, action.delete_ike_ids, action.delete_child_ids) == (5, (4, 6), (8,))
    assert "3 IKE_SAs, 3 CHILD_SAs" in action.reason and "CHILD_SA #9" in action.reason


def test_a_dead_duplicated_tunnel_is_reestablished_not_deduplicated():
    crossed = TunnelSaFacts((one_sa(4, 7, 1.0), one_sa(5, 8, 2.0)))
    w = World({"tunnel1": True, "tunnel2": False}, sas={"tunnel1": INSTALLED["tunnel1"], "tunnel2": crossed})
    made = w.run(5.0)
    assert made == [(5.0, "reestablish", "tunnel2")]
    assert w.repairs["tunnel2"].last.reason.endswith("(duplicated); tunnel1 answers probes")


def test_a_brief_duplicate_during_a_rekey_is_left_to_charon():
    w = World({"tunnel1": True, "tunnel2": True})
    w.tick(0.0)
    w.sas["tunnel1"] = TunnelSaFacts((IkeSaFact(1, 0.0, (ChildSaFact(1, 0.0), ChildSaFact(10, 2.0))),))
    w.tick(2.0)
    w.sas["tunnel1"] = TunnelSaFacts((IkeSaFact(1, 0.0, (ChildSaFact(10, 2.0),)),))
    assert w.run(60) == []


def test_dedupe_keeps_the_sa_the_peer_sends_on_over_a_newer_one():
    # What crossed initiations left on a real charon 5.9.8 (tests/agent/test_agent_repair_charon.py): two IKE_SAs
    # installed within the same second, the peer had silently destroyed one (INITIAL_CONTACT) and answers on the other.
    crossed = TunnelSaFacts((IkeSaFact(3, 100.0, (ChildSaFact(3, 100.0, receiving=True),)),
                             IkeSaFact(4, 100.0, (ChildSaFact(4, 100.0, sending=True),))))
    w = World({"tunnel1": True, "tunnel2": True}, sas={"tunnel1": crossed, "tunnel2": INSTALLED["tunnel2"]})
    w.tick(100.0)
    (action,) = w.tick(105.0).actions
    assert (action.keep_ike_id, action.delete_ike_ids) == (3, (4,))
    assert "(the peer sends on it)" in action.reason
    # without traffic in, the one the kernel sends on wins over a newer install
    quiet = TunnelSaFacts((IkeSaFact(3, 100.0, (ChildSaFact(3, 101.0),)),
                           IkeSaFact(4, 100.0, (ChildSaFact(4, 100.0, sending=True),))))
    w = World({"tunnel1": True, "tunnel2": True}, sas={"tunnel1": quiet, "tunnel2": INSTALLED["tunnel2"]})
    w.tick(100.0)
    (action,) = w.tick(105.0).actions
    assert (action.keep_ike_id, action.delete_ike_ids) == (4, (3,)) and "(the kernel sends on it)" in action.reason


def test_the_last_installed_tunnel_is_deduplicated_though_not_rebuilt():
    # Both probe-dead, only tunnel1 has SAs, two of them: rebuilding it is refused (rule 4) but deleting the SA the
    # peer lacks is not a teardown, and it is what makes the kernel send on the one the peer has.
    crossed = TunnelSaFacts((IkeSaFact(3, 100.0, (ChildSaFact(3, 100.0, receiving=True),)),
                             IkeSaFact(4, 100.0, (ChildSaFact(4, 100.0, sending=True),))))
    w = World({"tunnel1": False, "tunnel2": False}, sas={"tunnel1": crossed}, active="tunnel1")
    made = w.run(10.0)
    assert made == [(5.0, "dedupe", "tunnel1")]


def test_an_up_and_down_between_two_looks_restarts_the_hold():
    # The daemon looks once a second; the probes flip faster. Found by the daemon test: at start the tunnel is "not
    # probed yet" (dead with a CHILD_SA), comes up 0.3 s later and goes down again, all between two looks.
    w = World({"tunnel1": True, "tunnel2": False})
    w.tick(0.0)
    w.health["tunnel2"].presume_up(0.3, "answers")
    w.health["tunnel2"].force_down(4.0, "down again")
    assert w.tick(4.5).actions == ()  # dead since 4.0, not since 0.0
    assert w.tick(8.5).actions == ()
    assert [a.tunnel for a in w.tick(9.0).actions] == ["tunnel2"]


def test_repair_hold_is_optional_in_agent_json_and_checked(tmp_path):
    from agent_testlib import config_dict, write_config

    from hostconfig.agent.config import ConfigError, load_config

    data = config_dict(tmp_path)
    assert load_config(write_config(tmp_path, data)).probe.repair_hold_seconds == RepairPolicy().hold_seconds == 5
    data["probe"]["repair_hold_seconds"] = 12
    assert load_config(write_config(tmp_path, data)).probe.repair_hold_seconds == 12
    data["probe"]["repair_hold_seconds"] = 0
    with pytest.raises(ConfigError, match=r"probe\.repair_hold_seconds: 0 is out of range: 1\.\.3600 seconds"):
        load_config(write_config(tmp_path, data))


# ---- a VICI down event: fail over at once, or does a replacement remain? (health.replacement_installed) ------------

def sas_of(*ikes: tuple[int, tuple[int, ...]]) -> TunnelSaFacts:
    return TunnelSaFacts(tuple(IkeSaFact(ike, 0.0, tuple(ChildSaFact(c, 0.0) for c in children))
                               for ike, children in ikes))


def test_a_delete_of_the_tunnels_only_ike_sa_fails_it_over_without_asking_charon():
    """AWS's maintenance with DELETE: the event alone decides (charon answers only after its updown hook ran)."""
    assert not replacement_installed(sas_of((1, (11,))), frozenset(), True, 1, frozenset({11}))
    assert not replacement_installed(sas_of((1, (11,))), frozenset(), False, 1, frozenset({11}))  # its child-updown


def test_a_down_event_of_a_duplicate_or_an_old_sa_keeps_the_tunnel():
    assert replacement_installed(sas_of((1, (11,)), (2, (21,))), frozenset(), True, 1, frozenset({11}))
    # a reauthentication's new CHILD_SA came up after the last listing: its up event counts
    assert replacement_installed(sas_of((1, (11,))), frozenset({31}), True, 1, frozenset({11}))
    # a listing from before a rekey still shows the rekeyed-away SA: "remains", the probes decide
    assert replacement_installed(sas_of((1, (11,))), frozenset(), False, 1, frozenset({12}))
