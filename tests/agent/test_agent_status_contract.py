"""The daemon state and the status JSON, one definition each (hostconfig/agent/status_contract.py): the documented
examples (docs/contracts.md §3a) read and write back equal; another version, a missing field and a wrong type are
refused naming the field; and the real writers' output is what the real readers read (daemon -> status -> opsview,
daemon -> metrics, daemon -> doctor). No root."""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import os
import time
from contextlib import redirect_stdout
from pathlib import Path

import pytest
from agent_testlib import config_dict, write_config
from testlib import DELETE, contract_example, set_path

from hostconfig.agent import cli
from hostconfig.agent.config import load_config
from hostconfig.agent.doctor_checks import check_daemon, check_repairs
from hostconfig.agent.doctor_facts import DoctorFacts, Unavailable, daemon_facts
from hostconfig.agent.metrics import render_metrics
from hostconfig.agent.state import DAEMON_STATE, acquire_daemon_lock, read_daemon_state, write_daemon_state
from hostconfig.agent.status import gather_status, render_status
from hostconfig.agent.status_contract import ContractError, DaemonState, StatusReport
from hostconfig.opsview import Unreachable, compare, gather, parse_gateway_status, render_json
from hostconfig.plan import GatewayPlan

HOST_CONFIG = Path(__file__).resolve().parents[1] / "fixtures" / "host_config.default.json"


def host_config_plan() -> GatewayPlan:
    return GatewayPlan.from_host_config(json.loads(HOST_CONFIG.read_text()))

DOCUMENTS = [("daemon-state", DaemonState), ("status", StatusReport)]


@pytest.mark.parametrize("name, cls", DOCUMENTS, ids=[d[0] for d in DOCUMENTS])
def test_the_documented_example_reads_and_writes_back_equal(name, cls):
    example = contract_example(name)
    document = cls.from_json(example)
    assert document.to_json() == example  # every documented key is in the definition and nothing else
    assert cls.loads(document.dumps()) == document
    assert example["version"] == cls.VERSION


def _mutated(example: dict, path: tuple, value: object) -> dict:
    data = copy.deepcopy(example)
    set_path(data, path, value)
    return data


REFUSED = [
    ("daemon-state", ("version",), 2, r"^daemon state: version 2 is not the version this reader knows \(1\)"),
    ("daemon-state", ("version",), DELETE, r"^daemon state: missing field 'version'"),
    ("daemon-state", ("version",), True, r"version True is not the version"),
    ("daemon-state", ("tunnels", "tunnel2", "repair", "attempts"), DELETE,
     r"^daemon state\.tunnels\.tunnel2\.repair\.attempts: missing field$"),
    ("daemon-state", ("tunnels", "tunnel2", "repair", "attempts"), "3",
     r"^daemon state\.tunnels\.tunnel2\.repair\.attempts: expected an integer, found a string '3'$"),
    ("daemon-state", ("switches_total",), True, r"switches_total: expected an integer, found a boolean"),
    ("daemon-state", ("updated_at",), "now", r"updated_at: expected a number, found a string"),
    ("daemon-state", ("last_switch", "from"), DELETE, r"last_switch\.from: missing field"),
    ("daemon-state", ("up",), "tunnel1", r"\.up: expected a list, found a string"),
    ("status", ("version",), 0, r"^vpnctl status --json: version 0 is not the version this reader knows \(1\)"),
    ("status", ("daemon", "running"), DELETE, r"^vpnctl status --json\.daemon\.running: missing field$"),
    ("status", ("tunnels", 1, "repair", "last", "errors"), DELETE,
     r"tunnels\[1\]\.repair\.last\.errors: missing field"),
    ("status", ("kernel",), [], r"\.kernel: expected an object, found a list"),
]


@pytest.mark.parametrize("name, path, value, message", REFUSED,
                         ids=[f"{r[0]}:{'.'.join(map(str, r[1]))}={'deleted' if r[2] is DELETE else repr(r[2])}"
                              for r in REFUSED])
def test_another_version_a_missing_field_or_a_wrong_type_is_refused_naming_it(name, path, value, message):
    cls = dict(DOCUMENTS)[name]
    with pytest.raises(ContractError, match=message):
        cls.from_json(_mutated(contract_example(name), path, value))


def test_keys_a_reader_does_not_know_are_ignored_and_numbers_read_as_floats():
    data = _mutated(contract_example("daemon-state"), ("added_by_a_newer_daemon",), {"x": 1})
    data["updated_at"] = 1764597131  # an integer where a number is expected
    state = DaemonState.from_json(data)
    assert state.updated_at == 1764597131.0 and "added_by_a_newer_daemon" not in state.to_json()
    with pytest.raises(ContractError, match="not JSON"):
        StatusReport.loads("vpnctl: configuration error")


@pytest.fixture
def gateway(tmp_path):
    """A config, and a daemon state as the daemon writes it, fresh and with its lock held (this process)."""
    config = load_config(write_config(tmp_path, config_dict(tmp_path)))
    config_path = tmp_path / "agent.json"
    state = dataclasses.replace(DaemonState.from_json(contract_example("daemon-state")), pid=os.getpid(),
                                updated_at=time.time())
    lock = acquire_daemon_lock(config.paths.state_dir, timeout=0)
    write_daemon_state(config.paths.state_dir, state)
    yield config, state, config_path
    os.close(lock)


def test_what_the_daemon_writes_status_metrics_and_doctor_read(gateway):
    config, state, config_path = gateway
    assert read_daemon_state(config.paths.state_dir) == state
    status = gather_status(config)
    assert status.daemon.running and status.daemon.state_file == "fresh" and status.daemon.state_error is None
    assert status.daemon.repairs_total == 1 and status.daemon.last_switch == state.last_switch
    tunnel2 = status.tunnel("tunnel2")
    assert tunnel2 is not None and tunnel2.repair == state.tunnels["tunnel2"].repair  # repairs stay visible
    assert tunnel2.probe is not None and tunnel2.probe.up is False
    text = render_status(status)
    assert "tunnel2 repair: 1 repair(s); last " in text and "reestablish: probe-dead for 5.0s" in text
    assert "data-path repairs: 1 since the daemon started" in text
    metrics = render_metrics(read_daemon_state(config.paths.state_dir))
    assert 'hybrid_vpn_repairs_total{tunnel="tunnel2",kind="reestablish"} 1' in metrics
    assert 'hybrid_vpn_active_tunnel{tunnel="tunnel1"} 1' in metrics and "hybrid_vpn_switches_total 2" in metrics
    facts = daemon_facts(config.paths.state_dir)
    assert facts.running and facts.active == "tunnel1" and facts.repairs["tunnel2"].total == 1
    no = Unavailable("test")
    doctor = DoctorFacts("given", no, no, no, no, no, no, no, no, no, None, None, daemon=facts)
    assert [r.status for r in check_daemon(config, doctor)] == ["ok"]
    assert "1 repair(s), last reestablish" in {r.name: r for r in check_repairs(config, doctor)}["repair tunnel2"].found


def test_a_state_file_of_another_version_is_shown_by_status_doctor_and_metrics(gateway, caplog):
    config, _, config_path = gateway
    path = config.paths.state_dir / DAEMON_STATE
    path.write_text(json.dumps({**json.loads(path.read_text()), "version": 2}))
    status = gather_status(config)
    assert status.daemon.running and status.daemon.state_file == "stale"  # the lock is held, the state unusable
    assert status.daemon.state_error is not None and "version 2 is not the version" in status.daemon.state_error
    assert "daemon: its state file is unusable: daemon state: version 2" in render_status(status)
    assert all(t.probe is None and t.repair is None for t in status.tunnels)
    no = Unavailable("test")
    doctor = DoctorFacts("given", no, no, no, no, no, no, no, no, no, None, None,
                         daemon=daemon_facts(config.paths.state_dir))
    (line,) = check_daemon(config, doctor)
    assert line.status == "FAIL" and "version 2 is not the version" in line.found
    out = io.StringIO()
    with redirect_stdout(out):
        assert cli.main(["metrics", "--config", str(config_path)]) == 0
    assert 'hybrid_vpn_tunnel_up{tunnel="tunnel1"} 0' in out.getvalue()
    assert "version 2 is not the version" in caplog.text


def test_opsview_reads_what_the_real_vpnctl_status_json_prints(gateway, tmp_path):
    """The operator's reader on the real writer's output (before: two dict readers and hand-made test dicts that
    lacked `repair`, `daemon.state_file` and most of `daemon`, so nothing tied the two ends together)."""
    config, state, config_path = gateway
    out = io.StringIO()
    with redirect_stdout(out):
        assert cli.main(["status", "--json", "--config", str(config_path)]) == 0
    report = compare(host_config_plan(), Unreachable("not asked"), parse_gateway_status(out.getvalue(), "vpnctl"))
    assert report.gateway_daemon == "running"
    rows = {r.name: r for r in report.rows}
    assert rows["tunnel2"].gateway is not None and rows["tunnel2"].gateway.repair == state.tunnels["tunnel2"].repair
    assert json.loads(render_json(report))["rows"][1]["gateway"]["repair"]["total"] == 1


def test_opsview_refuses_a_status_that_does_not_match_instead_of_misreading_it():
    """Before: a status without `daemon.running` (another vpnctl) read as `None` -> "the failover daemon is not
    running", a wrong diagnosis. Now the gateway view is unavailable with the reader's message."""
    broken = _mutated(contract_example("status"), ("daemon", "running"), DELETE)

    report = gather(host_config_plan(), ec2=None, target=None, vpnctl="/usr/local/sbin/vpnctl",
                    gateway_reader=lambda target, vpnctl: parse_gateway_status(json.dumps(broken), vpnctl))
    flags = report.all_flags
    assert any("gateway view unavailable" in f and "daemon.running: missing field" in f for f in flags), flags
    assert not any("failover daemon is not running" in f for f in flags)
