"""Whether this pytest session brought the static lab up and has not taken it down yet.

A plain module, not conftest.py: a test module that imports from conftest gets a second copy of it (pytest imports
conftest.py under its own name), so a flag kept there would not be the one the session's fixture set.
"""

from __future__ import annotations

from lab import driver

_up: list[bool] = []


def brought_up() -> None:
    _up.append(True)


def owned() -> bool:
    """The running lab is this session's own (it goes down at the session's end), not one a user started."""
    return bool(_up)


def take_down() -> bool:
    """Take the session's static lab down now (at the session's end, or for a module that needs a lab of its own);
    False when the session did not bring up the running lab (someone else's: left alone)."""
    if not _up:
        return False
    _up.clear()
    down = driver.lab("down", timeout=600)
    assert down.rc == 0, f"lab down failed:\n{down.out}\n{down.err}"
    return True
