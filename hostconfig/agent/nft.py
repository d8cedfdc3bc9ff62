"""The agent's one nftables table: applied atomically, reapplied only when the file or the loaded table changed.

The ruleset file is rendered by hostconfig (paths.nft_ruleset) and holds only ``table inet <nft_table>``. We apply
``table inet T`` + ``delete table inet T`` + the file in one ``nft -f -`` transaction (the ruleset goes on stdin, never
in argv), so the table is replaced as a whole or not at all. To make a second run a no-op we remember, in the state
dir, the hash of the file we applied and the hash of the normalised ``nft -j list table`` that resulted; a changed file,
a flushed/edited/deleted table or a missing record means apply again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from hostconfig import gateway_paths as gp

from .errors import AgentError
from .state import atomic_write_text

log = logging.getLogger(__name__)

NFT_TIMEOUT_SECONDS = 30
# Top-level statements naming a table ("table inet t {", "add rule ip filter input ...", "delete chain inet t c"):
# every one must name our table. "flush ruleset" and "include" could reach anything: refused.
_TABLE_DECL = re.compile(r"^\s*table\s+(\S+)\s+(\S+)", re.MULTILINE)
_COMMAND = re.compile(r"^\s*(?:add|create|insert|replace|delete|destroy|flush|reset)\s+"
                      r"(?:table|chain|rule|set|map|element|flowtable|counter|quota|limit|ct\s+\S+|secmark|synproxy)"
                      r"\s+(\S+)\s+(\S+)", re.MULTILINE)
_GLOBAL = re.compile(r"^\s*(flush\s+ruleset|include\b)", re.MULTILINE)
# Keys whose value changes while the table is unchanged (kernel handles, live counters).
_VOLATILE = {"handle", "packets", "bytes"}


class NftError(AgentError):
    """The ruleset cannot be applied (missing, touches other tables, or nft refused it)."""


@dataclass(frozen=True)
class NftRecord:
    source_sha256: str
    loaded_sha256: str


def nft_binary() -> str:
    found = shutil.which("nft") or (gp.NFT if Path(gp.NFT).exists() else None)
    if found is None:
        raise NftError("nft: not installed (Debian package nftables)")
    return found


def read_ruleset(path: Path, table: str) -> str:
    """The rendered ruleset, checked to touch only ``table inet <table>``."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise NftError(f"{path}: cannot read the nftables ruleset: {exc.strerror}") from None
    bad = _GLOBAL.search(text)
    if bad:
        raise NftError(f"{path}: '{bad.group(1)}' could change other tables; the file must only define"
                       f" 'table inet {table} {{ ... }}'")
    for match in [*_TABLE_DECL.finditer(text), *_COMMAND.finditer(text)]:
        family, name = match.group(1), match.group(2).rstrip("{")
        if (family, name) != ("inet", table):
            raise NftError(f"{path}: touches table {family} {name}; the agent owns only 'table inet {table}',"
                           f" e.g. 'table inet {table} {{ chain forward {{ ... }} }}'")
    if not re.search(rf"^\s*table\s+inet\s+{re.escape(table)}\b", text, re.MULTILINE):
        raise NftError(f"{path}: defines no 'table inet {table}'")
    return text


def transaction(table: str, ruleset: str) -> str:
    # "table" first so that "delete" never fails on a missing table; all three in one atomic transaction.
    return f"table inet {table}\ndelete table inet {table}\n{ruleset}"


def _run_nft(args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([nft_binary(), *args], input=stdin, capture_output=True, text=True,
                          timeout=NFT_TIMEOUT_SECONDS, check=False)


def loaded_fingerprint(table: str) -> str | None:
    """sha256 of the loaded table as normalised JSON, or None when the table is not loaded."""
    proc = _run_nft(["-j", "list", "table", "inet", table])
    if proc.returncode != 0:
        if "No such file or directory" in proc.stderr or "does not exist" in proc.stderr:
            return None
        raise NftError(f"nft list table inet {table}: {proc.stderr.strip()}")
    data = json.loads(proc.stdout)
    items = [normalise(item) for item in data.get("nftables", []) if "metainfo" not in item]
    return hashlib.sha256(json.dumps(items, sort_keys=True).encode()).hexdigest()


def normalise(value: object) -> object:
    if isinstance(value, dict):
        return {k: normalise(v) for k, v in value.items() if k not in _VOLATILE}
    if isinstance(value, list):
        return [normalise(v) for v in value]
    return value


def read_record(path: Path) -> NftRecord | None:
    try:
        data = json.loads(path.read_text())
        return NftRecord(str(data["source_sha256"]), str(data["loaded_sha256"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def needs_apply(ruleset: str, table: str, record_path: Path) -> tuple[bool, str]:
    """Whether the table must be (re)applied, and why."""
    record = read_record(record_path)
    source = hashlib.sha256(ruleset.encode()).hexdigest()
    loaded = loaded_fingerprint(table)
    if loaded is None:
        return True, "table not loaded"
    if record is None:
        return True, "no record of what was applied"
    if record.source_sha256 != source:
        return True, "ruleset file changed"
    if record.loaded_sha256 != loaded:
        return True, "loaded table differs from what was applied"
    return False, "up to date"


def apply_ruleset(ruleset: str, table: str, record_path: Path) -> None:
    """Replace the table atomically and record what is now loaded."""
    proc = _run_nft(["-f", "-"], stdin=transaction(table, ruleset))
    if proc.returncode != 0:
        raise NftError(f"nft -f (table inet {table}) refused the ruleset, nothing applied: {proc.stderr.strip()}")
    loaded = loaded_fingerprint(table)
    if loaded is None:
        raise NftError(f"table inet {table} is not loaded after nft -f succeeded")
    record = {"source_sha256": hashlib.sha256(ruleset.encode()).hexdigest(), "loaded_sha256": loaded}
    atomic_write_text(record_path, json.dumps(record) + "\n")
