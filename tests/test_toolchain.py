"""`pulumi up` on a fresh clone: Pulumi's pip toolchain builds .venv from requirements.txt; that venv runs the program.

What Pulumi does (pulumi/pulumi sdk/python/toolchain/pip.go at commit 1b59498, v3.259.0+14, the newest source
available here; the same three steps since the toolchain was split out in v3.119.0): with ``toolchain: pip`` and
``virtualenv: .venv`` in Pulumi.yaml, ``EnsureVenv`` finds no ``.venv/bin/python`` and calls ``InstallDependencies``:
``python3 -m venv <abs .venv>``, ``.venv/bin/python -m pip install --upgrade pip setuptools wheel``, then, only if
``requirements.txt`` exists in the program directory, ``.venv/bin/python -m pip install -r requirements.txt``.
Nothing on that path reads pyproject.toml.

The slow test below does exactly that in a temporary copy of the project (about 2 minutes here, most of it pip
unpacking pulumi-aws) and evaluates the program under the lab's mocks with the new venv's interpreter.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

from infra import MIN_PYTHON, python_version_problem

REPO = Path(__file__).resolve().parent.parent


def _name(requirement: str) -> str:
    return re.split(r"[=<>!~;\[ ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def requirements_txt() -> list[str]:
    lines = (REPO / "requirements.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def test_requirements_txt_pins_exactly_what_pyproject_pins():
    pinned = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert requirements_txt() == pinned, "edit pyproject.toml [project].dependencies and requirements.txt together"
    assert all("==" in r for r in pinned), "the program runs against exact versions"
    assert "pulumi" in {_name(r) for r in requirements_txt()}


def test_pulumi_yaml_selects_the_pip_toolchain_with_a_project_venv():
    options = yaml.safe_load((REPO / "Pulumi.yaml").read_text())["runtime"]["options"]
    assert options == {"toolchain": "pip", "virtualenv": ".venv"}


def test_the_python_floor_is_pyprojects():
    spec = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert spec == ">=" + ".".join(str(v) for v in MIN_PYTHON)


def test_an_older_python_is_refused_with_the_fix():
    problem = python_version_problem((3, 10, 14), "/usr/bin/python3")
    assert problem and "needs Python >= 3.11" in problem and "this is Python 3.10.14" in problem
    assert "rm -rf .venv && PULUMI_PYTHON_CMD=python3.11 pulumi install" in problem
    assert python_version_problem((3, 11, 0), "/usr/bin/python3") is None
    assert python_version_problem((3, 13, 1), "/usr/bin/python3") is None
    # The import itself refuses: the program imports infra before anything else that needs 3.11.
    fake = "import sys; sys.version_info = (3, 10, 14, 'final', 0); import infra"
    run = subprocess.run([sys.executable, "-c", fake], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and "hybrid-vpn needs Python >= 3.11" in run.stderr, run.stderr


PROBE = """
import json, sys
from pathlib import Path
sys.path.insert(0, str(Path.cwd()))
import pulumi
from lab.cloud import run_program, stack_config_from_file
lab = run_program(stack_config_from_file(Path("stacks/Pulumi.lab.yaml")), stack="lab")
dev_config = stack_config_from_file(Path("stacks/Pulumi.dev.yaml"))
dev_config["hybrid-vpn:tunnels"]["psks"] = ["Toolchain_psk_1", "Toolchain_psk_2"]
dev = run_program(dev_config, stack="dev", secret_keys=("hybrid-vpn:tunnels",))
print(json.dumps({"pulumi": pulumi.__file__, "prefix": sys.prefix,
                  "runs": {name: {"types": sorted({r.type for r in run.resources}), "outputs": sorted(run.outputs)}
                           for name, run in (("lab", lab), ("dev", dev))}}))
"""


def _activated(venv: Path) -> dict[str, str]:
    """pip.go's ActivateVirtualEnv: the venv's bin first on PATH, VIRTUAL_ENV set, PYTHONHOME removed."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "PYTHONPATH")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(venv)
    return env


def _run(args: list[str], cwd: Path, env: dict[str, str], timeout: int) -> subprocess.CompletedProcess:
    run = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert run.returncode == 0, f"{' '.join(args)}: exit {run.returncode}\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    return run


def test_a_venv_made_like_pulumis_pip_toolchain_runs_the_program(tmp_path):
    project = tmp_path / "hybrid-vpn"
    # What a clone holds: tracked files plus new ones not ignored (so an uncommitted requirements.txt counts).
    tracked = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                             capture_output=True, check=True).stdout
    for rel in filter(None, tracked.decode().split("\0")):
        if (REPO / rel).is_file():  # the working copy, so uncommitted edits are what is tested
            (project / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, project / rel)
    assert not (project / ".venv").exists()

    # pip.go CommandPath: PULUMI_PYTHON_CMD, else python3 on PATH (not the interpreter running these tests).
    python = shutil.which(os.environ.get("PULUMI_PYTHON_CMD", "python3"))
    assert python, "no python3 on PATH: Pulumi's pip toolchain could not create the venv either"
    venv = project / ".venv"  # pip.go resolves the virtualenv option against the project root: absolute
    env = _activated(venv)
    _run([python, "-m", "venv", str(venv)], project, env, 300)
    vpy = str(venv / "bin" / "python")
    _run([vpy, "-m", "pip", "install", "--upgrade", "pip", "setuptools", "wheel"], project, env, 900)
    if (project / "requirements.txt").exists():  # pip.go skips this step without the file (then: no pulumi module)
        _run([vpy, "-m", "pip", "install", "-r", "requirements.txt"], project, env, 1800)
    _run([vpy, "-m", "pip", "check"], project, env, 300)

    # Only what requirements.txt brings: no test tooling, no editable install of this project.
    listed = json.loads(_run([vpy, "-m", "pip", "list", "--format", "json"], project, env, 300).stdout)
    installed = {p["name"].lower().replace("_", "-") for p in listed}
    assert {_name(r) for r in requirements_txt()} <= installed
    assert not installed & {"pytest", "ruff", "hybrid-vpn"}, installed

    probe = _run([vpy, "-I", "-c", PROBE], project, env, 600)
    result = json.loads(probe.stdout.strip().splitlines()[-1])
    assert Path(result["prefix"]) == venv and result["pulumi"].startswith(str(venv))
    for name, run in result["runs"].items():
        assert {"linode:index/instance:Instance", "aws:ec2/vpnConnection:VpnConnection"} <= set(run["types"]), name
        assert {"gateway_public_ip", "host_config", "tunnels"} <= set(run["outputs"]), name
