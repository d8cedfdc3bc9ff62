"""hostconfig/gateway_paths.py is the one table of the gateway's paths and modes: every reader takes them from there.

The grep below looks at the string literals of the project's code (docstrings and comments aside) and at the
templates: a gateway path written anywhere but the table is a copy that can drift.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

from hostconfig import gateway_paths as gp
from hostconfig.cloudinit import render_user_data
from hostconfig.deliver.gateway import host_key_files
from hostconfig.plan import GatewayPlan
from hostconfig.render import render_gateway_files, render_legacy_files

REPO = Path(__file__).resolve().parent.parent
CODE = ("hostconfig", "infra", "lab", "bench")
TABLE = REPO / "hostconfig" / "gateway_paths.py"
# (file, path) -> why the literal is not a copy of the table's entry
ALLOWED = {
    ("lab/awspeer.py", gp.VICI_SOCKET): "the emulated AWS end's own charon (its own /run), not the gateway's",
}
FIXTURE = REPO / "tests" / "fixtures" / "host_config.default.json"


def table_paths() -> set[str]:
    found = set()
    for value in vars(gp).values():
        if isinstance(value, (gp.GatewayFile, gp.GatewayDir)):
            found.add(value.path)
        elif isinstance(value, str) and value.startswith("/") and value != gp.__file__:
            found.add(value.split()[0])
    return found


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def literals(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every string the file's code holds: Python string constants except docstrings, or a
    template's lines."""
    text = path.read_text(encoding="utf-8")
    if path.suffix != ".py":
        return list(enumerate(text.splitlines(), start=1))
    tree = ast.parse(text, filename=str(path))
    skip = _docstrings(tree)
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip]


def copies(root: Path = REPO) -> list[str]:
    # a path, not the start of a longer one (/run/hybrid-vpn-lab is the lab's, not /run/hybrid-vpn)
    pattern = re.compile("|".join(rf"{re.escape(p)}(?![\w.-])" for p in sorted(table_paths(), key=len, reverse=True)))
    files = [root / "__main__.py", *sorted((root / "hostconfig" / "templates").glob("*.j2"))]
    files += [f for package in CODE for f in sorted((root / package).rglob("*.py"))]
    found = []
    for file in files:
        if file == TABLE:
            continue
        rel = str(file.relative_to(root))
        for line, text in literals(file):
            for match in pattern.finditer(text):
                if (rel, match.group()) not in ALLOWED:
                    found.append(f"{rel}:{line}: {match.group()}")
    return found


def test_the_grep_finds_a_copied_path(tmp_path):
    (tmp_path / "hostconfig" / "templates").mkdir(parents=True)
    (tmp_path / "hostconfig" / "templates" / "x.j2").write_text(f"Documentation=file://{gp.AGENT_CONFIG.path}\n")
    (tmp_path / "hostconfig" / "a.py").write_text(f'"""{gp.VPNCTL.path} in a docstring is prose."""\n'
                                                  f'X = "{gp.VPNCTL.path}"\nY = "{gp.STATE_DIR.path}-lab"\n')
    (tmp_path / "__main__.py").write_text("")
    for package in CODE[1:]:
        (tmp_path / package).mkdir()
    assert copies(tmp_path) == [f"hostconfig/templates/x.j2:1: {gp.AGENT_CONFIG.path}",
                                f"hostconfig/a.py:2: {gp.VPNCTL.path}"]


def test_gateway_paths_are_written_only_in_the_table():
    assert copies() == []


def test_every_delivered_file_has_the_tables_mode_and_secrecy():
    by_path = {v.path: v for v in vars(gp).values() if isinstance(v, gp.GatewayFile)}
    plan = GatewayPlan.from_host_config(json.loads(FIXTURE.read_text()))
    keys = host_key_files("-----BEGIN OPENSSH PRIVATE KEY-----\nx\n-----END OPENSSH PRIVATE KEY-----",
                          "ssh-ed25519 AAAA gw")
    files = [*render_gateway_files(plan), *render_legacy_files(plan), *keys]
    assert {f.path for f in files} <= set(by_path)
    for f in files:
        assert (f.mode, f.secret) == (by_path[f.path].mode, by_path[f.path].secret), f.path
    assert gp.SWANCTL_CONF.mode == gp.SSH_HOST_KEY.mode == 0o600  # what holds a PSK or a private key
    assert all(f.mode & 0o077 == 0 for f in by_path.values() if f.secret)


HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEVYQU1QTEUtaG9zdC1rZXktbm90LWEtcmVhbC1rZXkh gw"


def test_cloud_init_writes_the_tables_modes_and_makes_its_directories():
    text = render_user_data(hostname="gw", ssh_host_ed25519_public=HOST_KEY,
                            ssh_host_ed25519_private="-----BEGIN OPENSSH PRIVATE KEY-----\nx\n"
                                                     "-----END OPENSSH PRIVATE KEY-----")
    for f in (gp.SYSCTL_CONF, gp.FAILOVER_UNIT_FILE, gp.GUARD_UNIT_FILE):
        assert re.search(rf'- path: "{re.escape(f.path)}"\n(    .*\n)*?    permissions: "{f.mode:04o}"', text), f.path
    for d in (*gp.FIRST_BOOT_DIRS, gp.STATE_DIR):
        assert re.search(rf'"install", "-d", "-m", "{d.mode:04o}",[^\]]*"{re.escape(d.path)}"', text), d


def test_contracts_section_4_lists_the_tables_files_and_modes():
    text = (REPO / "docs" / "contracts.md").read_text()
    section = text[text.index("## 4. Files on the gateway"):text.index("## 5.")]
    rows = re.findall(r"^\| [^|`]*`(/[^`]+)`[^|]*\| (0[0-7]{3}) \|", section, re.MULTILINE)
    documented = {path.rstrip("/"): int(mode, 8) for path, mode in rows}
    table = {v.path: v.mode for v in vars(gp).values() if isinstance(v, (gp.GatewayFile, gp.GatewayDir))}
    assert len(documented) >= 10
    assert {path: table.get(path) for path in documented} == documented


# Old names of table entries that modules re-exported (hostconfig/plan.py: STATE_DIR and thirteen more;
# hostconfig/deliver/gateway.py: AGENT_CONFIG and eight more; lab/gateway.py: CHARON_UNIT) are gone: every user reads
# the table.


def table_aliases(path: Path) -> list[tuple[int, str]]:
    """Module-level ``NAME = gp.X[.path]``: a second name for an entry of the table."""
    found = []
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            value = node.value
            while isinstance(value, ast.Attribute):
                value = value.value
            if isinstance(value, ast.Name) and value.id in ("gp", "gateway_paths") and node.value is not value:
                found.append((node.lineno, node.targets[0].id))
    return found


def test_no_module_gives_a_table_entry_a_second_name():
    files = [path for package in CODE for path in sorted((REPO / package).rglob("*.py"))]
    found = [f"{path.relative_to(REPO)}:{line}: {name}" for path in files for line, name in table_aliases(path)]
    assert found == []
