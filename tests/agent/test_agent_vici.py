"""The agent's VICI client against a real charon started in a namespace with its own socket (root)."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys

import pytest
from agent_testlib import REPO, wait_for, write_config

from hostconfig.agent.vici_client import ViciEventStream, ViciUnavailable, list_sas

pytestmark = pytest.mark.root


def test_list_sas_events_and_reconnect_after_charon_restart(netns, charon_factory, tmp_path):
    ns = netns("hvavici")
    charon = charon_factory(ns)
    with pytest.raises(ViciUnavailable, match="charon.vici"):
        list_sas(charon.socket)  # not started yet: a clear error, not a hang
    charon.start()
    assert list_sas(charon.socket) == []
    stream = ViciEventStream(charon.socket)
    try:
        readable, _, _ = select.select([stream], [], [], 0.2)
        assert readable == []  # registered, nothing happening
        charon.stop()
        readable, _, _ = select.select([stream], [], [], 30)
        assert readable == [stream]
        with pytest.raises(ViciUnavailable, match="connection lost"):
            stream.read_event()
    finally:
        stream.close()
    charon.start()
    again = ViciEventStream(charon.socket)
    again.close()
    assert list_sas(charon.socket) == []


def test_daemon_reconnects_to_a_restarted_charon(gateway, charon_factory):
    charon = charon_factory(gateway.ns)
    data = gateway.data
    data["paths"]["vici_socket"] = str(charon.socket)
    write_config(gateway.tmp, data)
    charon.start()
    proc = subprocess.Popen(
        ["ip", "netns", "exec", gateway.ns, sys.executable, "-m", "hostconfig.agent.cli", "daemon", "--tunnel-links",
         "given", "--config", str(gateway.config)],
        env={"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL,
        stderr=open(gateway.tmp / "daemon.log", "w"))  # noqa: SIM115

    def daemon_state() -> dict:
        try:
            return json.loads((gateway.tmp / "state" / "daemon-state.json").read_text())
        except (OSError, ValueError):
            return {}

    try:
        wait_for(lambda: daemon_state().get("vici") == "connected", what="daemon connected to VICI")
        charon.stop()
        wait_for(lambda: str(daemon_state().get("vici", "")).startswith(("lost", "unreachable")),
                 what="daemon noticing charon gone")
        assert proc.poll() is None
        charon.start()
        wait_for(lambda: daemon_state().get("vici") == "connected", what="daemon reconnected")
        status = gateway.vpnctl("status", "--json")
        tunnels = json.loads(status.stdout)["tunnels"]
        assert [t["ike_sa"] for t in tunnels] == ["NONE", "NONE"]  # charon reachable, no SAs loaded
        assert json.loads(status.stdout)["vici"] == "reachable"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
    assert rc == 0
    log = (gateway.tmp / "daemon.log").read_text()
    assert log.count("VICI: listening") >= 2 and "Traceback" not in log
