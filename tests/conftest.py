"""Shared fixtures: throwaway network namespaces for the root tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _can_make_netns() -> str | None:
    """Return why network namespaces are unusable, or None when they work."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    if shutil.which("ip") is None:
        return "needs iproute2 (ip)"
    return None


@pytest.fixture
def netns(request):
    """Factory: ``netns()`` creates a uniquely named namespace with lo up; all are deleted at teardown."""
    reason = _can_make_netns()
    if reason:
        pytest.skip(reason)
    made: list[str] = []

    def make(prefix: str = "hvt") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        made.append(name)
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        return name

    yield make
    for name in reversed(made):
        subprocess.run(["ip", "netns", "del", name], check=False)
