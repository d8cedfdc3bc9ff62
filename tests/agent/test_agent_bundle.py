"""The zipapp runs on the system Python with nothing but the file (no venv, no repo on the path)."""

from __future__ import annotations

import json
import shutil
import subprocess
import zipfile

import pytest
from agent_testlib import write_config

from hostconfig.agent.bundle import build_zipapp

SYSTEM_PYTHON = "/usr/bin/python3"


def test_zipapp_contents_and_runs_on_system_python(tmp_path):
    pyz = build_zipapp(tmp_path / "out" / "vpnctl")
    assert pyz.read_bytes().startswith(b"#!/usr/bin/env python3\n")
    assert pyz.stat().st_mode & 0o111
    names = zipfile.ZipFile(pyz).namelist()
    for needed in ("__main__.py", "hostconfig/__init__.py", "hostconfig/agent/cli.py", "hostconfig/contract/rules.py",
                   "hostconfig/contract/reader.py", "pyroute2/__init__.py", "vici/session.py"):
        assert needed in names
    assert not any("__pycache__" in n for n in names)
    if shutil.which(SYSTEM_PYTHON) is None:
        pytest.skip("no system python3 at /usr/bin/python3")
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}  # no PYTHONPATH, no venv
    run = subprocess.run([SYSTEM_PYTHON, "-I", str(pyz), "--help"], capture_output=True, text=True, env=env,
                         cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    for command in ("reconcile", "updown", "daemon", "status", "metrics"):
        assert command in run.stdout
    config = write_config(tmp_path)
    status = subprocess.run([SYSTEM_PYTHON, "-I", str(pyz), "status", "--json", "--config", str(config)],
                            capture_output=True, text=True, env=env, cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)
    assert [t["name"] for t in data["tunnels"]] == ["tunnel1", "tunnel2"]
    assert data["vici"].startswith("unreachable") and data["daemon"]["running"] is False
    bad = subprocess.run([SYSTEM_PYTHON, "-I", str(pyz), "status", "--config", str(tmp_path / "nope.json")],
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    assert bad.returncode == 2 and "no such file" in bad.stderr
