"""PLUTO_* environment values are validated data: hostile values are refused with the variable named."""

from __future__ import annotations

import copy

import pytest
from agent_testlib import BASE_CONFIG

from hostconfig.agent.config import parse_config
from hostconfig.agent.updown import UpdownInputError, parse_environment, tunnel_for_event

CFG = parse_config(copy.deepcopy(BASE_CONFIG))
GOOD = {"PLUTO_VERB": "up-client", "PLUTO_CONNECTION": "tunnel1", "PLUTO_PEER": "198.51.100.1",
        "PLUTO_MARK_IN": "100/0xffffffff", "PLUTO_UNIQUEID": "7", "PATH": "/usr/bin"}


def test_good_environment():
    event = parse_environment(GOOD)
    assert (event.verb, event.connection, event.peer, event.mark_in, event.unique_id) == (
        "up-client", "tunnel1", "198.51.100.1", 100, "7")
    assert event.is_up and not event.is_down


@pytest.mark.parametrize(
    "variable, value, message",
    [
        ("PLUTO_VERB", "up-client; reboot", "PLUTO_VERB: not an updown verb"),
        ("PLUTO_VERB", "$(id)", "PLUTO_VERB: not an updown verb"),
        ("PLUTO_CONNECTION", "tunnel1`touch /tmp/x`", "PLUTO_CONNECTION: must be 1-64"),
        ("PLUTO_CONNECTION", "tunnel1\nPLUTO_VERB=down-client", "PLUTO_CONNECTION: must be 1-64"),
        ("PLUTO_CONNECTION", "../../etc/passwd", "PLUTO_CONNECTION: must be 1-64"),
        ("PLUTO_CONNECTION", "x" * 65, "PLUTO_CONNECTION: must be 1-64"),
        ("PLUTO_PEER", "198.51.100.1 && rm -rf /", "PLUTO_PEER: must be an IPv4 address"),
        ("PLUTO_MARK_IN", "100/0xffffffff;id", "PLUTO_MARK_IN: must be value[/mask]"),
        ("PLUTO_MARK_IN", "99999999999", "PLUTO_MARK_IN"),
        ("PLUTO_UNIQUEID", "7 8", "PLUTO_UNIQUEID: must be a decimal number"),
    ],
)
def test_hostile_values_are_refused(variable, value, message):
    env = dict(GOOD, **{variable: value})
    with pytest.raises(UpdownInputError) as info:
        parse_environment(env)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_verb_and_connection():
    with pytest.raises(UpdownInputError, match="PLUTO_VERB: missing"):
        parse_environment({"PLUTO_CONNECTION": "tunnel1"})
    with pytest.raises(UpdownInputError, match="PLUTO_CONNECTION"):
        parse_environment({"PLUTO_VERB": "down-client"})


@pytest.mark.parametrize(
    "env, tunnel",
    [
        ({"PLUTO_MARK_IN": "200/0xffffffff", "PLUTO_CONNECTION": "tunnel1"}, "tunnel2"),  # the mark decides
        ({"PLUTO_MARK_IN": "0xc8", "PLUTO_CONNECTION": "x"}, "tunnel2"),
        ({"PLUTO_PEER": "198.51.100.1", "PLUTO_CONNECTION": "aws-a"}, "tunnel1"),
        ({"PLUTO_CONNECTION": "tunnel2"}, "tunnel2"),
        ({"PLUTO_CONNECTION": "other", "PLUTO_PEER": "203.0.113.9"}, None),
    ],
)
def test_event_to_tunnel_mapping(env, tunnel):
    event = parse_environment({"PLUTO_VERB": "down-client", **env})
    assert tunnel_for_event(CFG, event) == tunnel
