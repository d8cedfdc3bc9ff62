"""The Pulumi program's components. Importing this package first refuses a Python the program cannot run on.

``pulumi up`` runs the program with whatever ``python3`` made ``.venv`` (Pulumi's pip toolchain: ``python -m venv``,
or ``PULUMI_PYTHON_CMD``); on an older one the program would die later with an unrelated-looking error.
"""

from __future__ import annotations

import sys

# pyproject.toml's requires-python (tests/test_toolchain.py keeps the two equal).
MIN_PYTHON = (3, 11)


def python_version_problem(version: tuple[int, ...], executable: str) -> str | None:
    """Why ``version`` cannot run the program, with the fix, or None when it can."""
    if tuple(version[:2]) >= MIN_PYTHON:
        return None
    have = ".".join(str(v) for v in version[:3])
    need = ".".join(str(v) for v in MIN_PYTHON)
    return (f"hybrid-vpn needs Python >= {need} (pyproject.toml requires-python); this is Python {have} "
            f"({executable}). Install a newer Python, then rebuild the virtualenv Pulumi made: "
            f"rm -rf .venv && PULUMI_PYTHON_CMD=python{need} pulumi install")


_problem = python_version_problem(tuple(sys.version_info), sys.executable)
if _problem:
    raise SystemExit(_problem)
