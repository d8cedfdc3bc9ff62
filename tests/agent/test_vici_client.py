"""The VICI client against a VICI server in the test (tests/agent/fake_vici.py: the vici package's wire format over a
socketpair or a Unix socket in tmp_path): the calls the agent makes (list-sas, initiate, terminate, the updown
events), reached by a socket path or through a connected socket. No root, no charon; the real-charon test is
test_agent_vici.py."""

from __future__ import annotations

import select
import socket
import time

import pytest
from fake_vici import FakeVici

from hostconfig.agent.vici_client import (
    NO_WAIT,
    ViciClient,
    ViciCommandFailed,
    ViciUnavailable,
    list_sas,
)

REMOTE = "198.51.100.1"


@pytest.fixture
def vici() -> FakeVici:
    fake = FakeVici()
    fake.add("tunnel1", REMOTE, 100)
    return fake


@pytest.fixture
def unix_server(vici, tmp_path):
    path = tmp_path / "charon.vici"
    listener = vici.serve_unix(path)
    yield path
    listener.close()


def test_list_sas_by_socket_path_parses_charons_listing(vici, unix_server):
    (ike,) = ViciClient(unix_server).list_sas()
    assert (ike.name, ike.state, ike.remote_host, ike.ike_id) == ("tunnel1", "ESTABLISHED", REMOTE, 101)
    (child,) = ike.children
    assert (child.name, child.state, child.mark_in, child.child_id) == ("tunnel1", "INSTALLED", 100, 102)
    assert list_sas(str(unix_server)) == [ike]  # the one-call form, a str path
    assert vici.connections == 2  # a path: one connection per call


def test_a_connected_socket_carries_one_call_after_another_and_stays_open(vici):
    sock = vici.connect(None, 2.0)
    client = ViciClient(sock)
    assert [i.name for i in client.list_sas()] == ["tunnel1"]
    vici.remotes["tunnel2"] = ("198.51.100.2", 200)
    client.initiate_child("tunnel2")
    assert sorted(i.name for i in client.list_sas()) == ["tunnel1", "tunnel2"]
    assert vici.connections == 1 and sock.fileno() != -1  # the caller's socket: not closed by the client
    assert vici.commands == [("initiate", {"child": "tunnel2", "timeout": NO_WAIT})]
    sock.close()


def test_terminate_sends_charons_arguments_and_reports_a_refusal(vici):
    client = ViciClient("/unused", connect=vici.connect)  # a path with the connector a test (or the daemon) gives
    (ike,) = client.list_sas()
    client.terminate_child(ike.children[0].child_id)
    client.terminate_ike(ike.ike_id, force=True)
    assert vici.commands == [
        ("terminate", {"child-id": str(ike.children[0].child_id), "timeout": NO_WAIT}),
        ("terminate", {"ike-id": str(ike.ike_id), "timeout": NO_WAIT, "force": "yes"}),
    ]
    assert client.list_sas() == []
    with pytest.raises(ViciCommandFailed, match="terminate .*no matching SAs"):
        client.terminate_ike(ike.ike_id)


def test_updown_events_on_a_connected_socket(vici):
    stream = ViciClient(vici.connect(None, 2.0)).events()
    try:
        vici.wait_registered(2)
        assert sorted(name for _, name in vici.registrations) == ["child-updown", "ike-updown"]
        assert select.select([stream], [], [], 0.05)[0] == []  # registered, nothing happening
        (ike,) = vici.tunnel_ikes("tunnel1")
        assert vici.emit("child-updown", {"up": "yes", **vici.listing(ike)}) == 1
        assert select.select([stream], [], [], 5)[0] == [stream]
        event = stream.read_event()
        assert (event.kind, event.up, [s.name for s in event.sas]) == ("child-updown", True, ["tunnel1"])
        vici.emit("ike-updown", vici.listing(ike))  # no "up": a down event
        assert select.select([stream], [], [], 5)[0] == [stream]
        event = stream.read_event()
        assert (event.kind, event.up) == ("ike-updown", False)
    finally:
        stream.close()


def test_a_refused_event_registration_is_unavailable(vici, unix_server):
    vici.refused_events.add("child-updown")
    with pytest.raises(ViciUnavailable, match="refused to register event child-updown"):
        ViciClient(unix_server).events()


def test_a_server_that_goes_away_is_unavailable_not_a_hang(vici):
    ours, theirs = socket.socketpair()
    stream = ViciClient(vici.connect(None, 2.0)).events()
    try:
        vici.wait_registered(2)
        vici.hang_up()  # charon stopped
        assert select.select([stream], [], [], 5)[0] == [stream]
        with pytest.raises(ViciUnavailable, match="connection lost"):
            stream.read_event()
    finally:
        stream.close()
    theirs.close()  # a VICI server that closes before answering
    with pytest.raises(ViciUnavailable, match=r"VICI list-sas on socket"):
        ViciClient(ours).list_sas()
    ours.close()


def test_a_missing_socket_path_is_unavailable_at_once(tmp_path):
    started = time.monotonic()
    with pytest.raises(ViciUnavailable, match=r"VICI socket .*charon.vici"):
        ViciClient(tmp_path / "charon.vici").list_sas()
    with pytest.raises(ViciUnavailable, match=r"charon.vici"):
        ViciClient(tmp_path / "charon.vici").events()
    assert time.monotonic() - started < 2.0
