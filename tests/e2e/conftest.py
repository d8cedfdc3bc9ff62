"""One lab per pytest session: `lab up` once (VM boot included), every e2e test shares it, `lab down` at the end."""

from __future__ import annotations

import os

import pytest

from lab import driver


@pytest.fixture(scope="session")
def lab_up():
    reason = driver.why_lab_cannot_run()
    if reason:
        pytest.skip(reason)
    if driver.lab("status", timeout=120).rc == 0:
        if os.environ.get("HYBRID_VPN_LAB_REUSE") == "1":  # iterate on the tests against a lab you started
            yield driver.Result(0, "reused a running lab", "")
            return
        pytest.skip("a lab is already running (`make lab down` first, or HYBRID_VPN_LAB_REUSE=1 to test it)")
    up = driver.lab("up", timeout=1800)
    try:
        yield up
    finally:
        down = driver.lab("down", timeout=600)
        assert down.rc == 0, f"lab down failed:\n{down.out}\n{down.err}"


@pytest.fixture
def lab(lab_up):
    """The running lab, healthy: both tunnels installed and traffic flowing before each test starts."""
    if lab_up.rc != 0:
        pytest.fail(f"`lab up` failed (rc {lab_up.rc}):\n{lab_up.out[-4000:]}\n{lab_up.err[-4000:]}")
    for tunnel in ("tunnel1", "tunnel2"):
        driver.lab("heal", tunnel, check=True)
    driver.lab("prefer", "tunnel1", check=True)
    driver.wait_until(lambda: driver.installed_children() >= 2, 300, "both CHILD_SAs installed")
    driver.wait_until(lambda: driver.ping("vlan", "10.0.4.85"), 180, "VLAN host -> VPC host ping")
    return driver
