"""`vpnctl updown` with missing or hostile PLUTO_* variables (root): after a good reconcile, every bad environment
exits non-zero naming the variable, creates no file (no event recorded, no marker from an injected command), runs
nothing, and leaves the kernel state byte for byte unchanged. Values are data: nothing reaches a shell."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from hardening_lib import kernel_snapshot, tree_fingerprint, vpnctl

pytestmark = pytest.mark.root

MARKER = Path(f"/tmp/pwned-{uuid.uuid4().hex[:8]}")
GOOD = {"PLUTO_VERB": "down-client", "PLUTO_CONNECTION": "tunnel1", "PLUTO_PEER": "198.51.100.1",
        "PLUTO_MARK_IN": "100/0xffffffff", "PLUTO_UNIQUEID": "7"}
LONG = "A" * 100_000  # below the kernel's 128 KiB limit for one environment string

# (id, environment, the variable the message must name)
CASES = [
    ("no-pluto-at-all", {}, "PLUTO_VERB: missing"),
    ("missing-verb", {k: v for k, v in GOOD.items() if k != "PLUTO_VERB"}, "PLUTO_VERB: missing"),
    ("missing-connection", {k: v for k, v in GOOD.items() if k != "PLUTO_CONNECTION"}, "PLUTO_CONNECTION"),
    ("empty-verb", dict(GOOD, PLUTO_VERB=""), "PLUTO_VERB"),
    ("verb-subst", dict(GOOD, PLUTO_VERB=f"$(touch {MARKER})"), "PLUTO_VERB"),
    ("verb-semicolon", dict(GOOD, PLUTO_VERB=f"down-client; touch {MARKER}"), "PLUTO_VERB"),
    ("verb-trailing-newline", dict(GOOD, PLUTO_VERB="down-client\n"), "PLUTO_VERB"),
    ("connection-subst", dict(GOOD, PLUTO_CONNECTION=f"$(touch {MARKER})"), "PLUTO_CONNECTION"),
    ("connection-backticks", dict(GOOD, PLUTO_CONNECTION=f"`touch {MARKER}`"), "PLUTO_CONNECTION"),
    ("connection-semicolon", dict(GOOD, PLUTO_CONNECTION=f"tunnel1;touch {MARKER}"), "PLUTO_CONNECTION"),
    ("connection-newline", dict(GOOD, PLUTO_CONNECTION="tunnel1\nPLUTO_VERB=up-client"), "PLUTO_CONNECTION"),
    ("connection-trailing-newline", dict(GOOD, PLUTO_CONNECTION="tunnel1\n"), "PLUTO_CONNECTION"),
    ("connection-very-long", dict(GOOD, PLUTO_CONNECTION=LONG), "PLUTO_CONNECTION"),
    ("connection-non-utf8", dict(GOOD, PLUTO_CONNECTION=b"tunnel1\xff\xfe"), "PLUTO_CONNECTION"),
    ("peer-subst", dict(GOOD, PLUTO_PEER=f"$(touch {MARKER})"), "PLUTO_PEER"),
    ("peer-backticks", dict(GOOD, PLUTO_PEER=f"198.51.100.1`touch {MARKER}`"), "PLUTO_PEER"),
    ("peer-trailing-newline", dict(GOOD, PLUTO_PEER="198.51.100.1\n"), "PLUTO_PEER"),
    ("peer-very-long", dict(GOOD, PLUTO_PEER=LONG), "PLUTO_PEER"),
    ("peer-non-utf8", dict(GOOD, PLUTO_PEER=b"198.51.100.\xe9"), "PLUTO_PEER"),
    ("mark-semicolon", dict(GOOD, PLUTO_MARK_IN=f"100;touch {MARKER}"), "PLUTO_MARK_IN"),
    ("mark-trailing-newline", dict(GOOD, PLUTO_MARK_IN="100/0xffffffff\n"), "PLUTO_MARK_IN"),
    ("mark-too-big", dict(GOOD, PLUTO_MARK_IN="4294967296"), "PLUTO_MARK_IN"),
    ("uniqueid-subst", dict(GOOD, PLUTO_UNIQUEID=f"$(touch {MARKER})"), "PLUTO_UNIQUEID"),
    ("uniqueid-trailing-newline", dict(GOOD, PLUTO_UNIQUEID="7\n"), "PLUTO_UNIQUEID"),
    ("uniqueid-very-long", dict(GOOD, PLUTO_UNIQUEID="7" * 100_000), "PLUTO_UNIQUEID"),
]


@pytest.fixture(scope="module")
def baseline(reconciled_gateway):
    return kernel_snapshot(reconciled_gateway.ns)


@pytest.mark.parametrize("case, env, variable", CASES, ids=[c[0] for c in CASES])
def test_hostile_or_missing_environment_applies_nothing(reconciled_gateway, baseline, case, env, variable):
    gw = reconciled_gateway
    state_before = tree_fingerprint(gw.tmp / "state")
    proc = vpnctl(gw.ns, gw.config, "updown", "--tunnel-links", "given", env=env)
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode != 0, err
    assert "Traceback" not in err, err
    assert variable in err, err
    assert "e.g." in err, err  # a right value is shown
    assert len(err) < 1000, "the message must not echo a huge value"
    assert not MARKER.exists(), "an injected command ran"
    assert tree_fingerprint(gw.tmp / "state") == state_before, "an event was recorded from a refused environment"
    assert kernel_snapshot(gw.ns) == baseline


def test_control_a_good_up_event_does_act(reconciled_gateway, baseline):
    """The same harness with a valid environment changes the routes (the baseline has no tunnel up: no charon, no
    daemon): the refusals above are not a broken harness. Runs last here (it changes the state compared above)."""
    gw = reconciled_gateway
    proc = vpnctl(gw.ns, gw.config, "updown", "--tunnel-links", "given", env=dict(GOOD, PLUTO_VERB="up-client"))
    assert proc.returncode == 0, proc.stderr.decode()
    assert (gw.tmp / "state" / "updown-tunnel1.json").exists()
    after = kernel_snapshot(gw.ns)["routes"]
    assert after != baseline["routes"] and '"dev":"vti-aws1","table":"1519"' in after
