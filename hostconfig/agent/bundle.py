"""Build `vpnctl` as one executable zipapp: hostconfig.agent, the contract it validates agent.json with
(hostconfig.contract) and the pure-Python pyroute2 and vici packages.

The gateway then needs only its system Python 3.11+. ``python -m hostconfig.agent.bundle OUT`` builds it.
"""

from __future__ import annotations

import importlib.metadata
import logging
import shutil
import sys
import tempfile
import zipapp
from pathlib import Path

log = logging.getLogger(__name__)

INTERPRETER = "/usr/bin/env python3"
BUNDLED = ("pyroute2", "vici")
# The hostconfig packages the agent imports: itself and the rules it shares with the program and the renderer.
HOSTCONFIG_PACKAGES = ("agent", "contract")
_MAIN = '''\
import sys

if sys.version_info < (3, 11):
    sys.exit("vpnctl needs Python 3.11 or newer (this is %d.%d)" % sys.version_info[:2])

from hostconfig.agent.cli import main

sys.exit(main())
'''


def _copy_package(source: Path, target: Path) -> None:
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.so"))


def _license_files(dist_name: str) -> list[Path]:
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        return []
    found = []
    for file in dist.files or []:
        name = file.name.upper()
        if name.startswith(("LICENSE", "COPYING", "NOTICE")):
            found.append(Path(dist.locate_file(file)))
    return found


def build_zipapp(out_path: Path | str) -> Path:
    """Write the zipapp to ``out_path`` (mode 0755) and return its path."""
    out_path = Path(out_path)
    agent_dir = Path(__file__).resolve().parent
    hostconfig_dir = agent_dir.parent
    with tempfile.TemporaryDirectory(prefix="vpnctl-build-") as tmp:
        root = Path(tmp) / "root"
        (root / "hostconfig").mkdir(parents=True)
        init = hostconfig_dir / "__init__.py"
        # The package marker is owned by the renderer; an empty one is equivalent when it is absent.
        (root / "hostconfig" / "__init__.py").write_text(init.read_text() if init.exists() else "")
        for package in HOSTCONFIG_PACKAGES:
            _copy_package(hostconfig_dir / package, root / "hostconfig" / package)
        for name in BUNDLED:
            module = __import__(name)
            _copy_package(Path(module.__file__).resolve().parent, root / name)
            for i, licence in enumerate(_license_files(name)):
                target = root / "licenses" / f"{name}-{licence.name}{'' if i == 0 else f'.{i}'}"
                target.parent.mkdir(exist_ok=True)
                shutil.copy(licence, target)
        (root / "__main__.py").write_text(_MAIN)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        zipapp.create_archive(root, out_path, interpreter=INTERPRETER, compressed=True)
    out_path.chmod(0o755)
    log.info("built %s (%d bytes)", out_path, out_path.stat().st_size)
    return out_path


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m hostconfig.agent.bundle OUT.pyz")
    print(build_zipapp(sys.argv[1]))
