"""The stack outputs as the operator's tools read them: `pulumi stack output --json --show-secrets` (or the bare
host_config object) -> host_config, pinned to the delivered SSH host key when the stack has one.

Shared by `python -m hostconfig render` (hostconfig/__main__.py) and `python -m hostconfig status`
(hostconfig/opsview.py); it imports neither, so neither imports the other.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUTPUT_KEY = "host_config"
# The host key the gateway presents once delivery has installed it (host_config's key is the user-data bootstrap key,
# replaced by the first push): whoever pins the gateway's key from the stack outputs pins this one when it exists.
DELIVERED_HOST_KEY_OUTPUT = "gateway_ssh_host_public_key"


def host_config_of_outputs(data: dict) -> Any:
    """host_config from `pulumi stack output --json --show-secrets`, pinned to the delivered host key if any."""
    value = data[OUTPUT_KEY]
    delivered = data.get(DELIVERED_HOST_KEY_OUTPUT)
    if isinstance(value, dict) and isinstance(value.get("gateway"), dict) and isinstance(delivered, str):
        value = {**value, "gateway": {**value["gateway"], "ssh_host_public_key": delivered}}
    return value


class InputError(ValueError):
    """The outputs file is unreadable or lacks the host_config object."""


def load_host_config(source: str) -> dict:
    """Read `pulumi stack output --json --show-secrets` (or the bare host_config object) from a path or '-'."""
    where = "standard input" if source == "-" else source
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"--outputs {where}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"--outputs {where}: not UTF-8 text (byte {exc.start}); expected the JSON of "
                         "`pulumi stack output --json --show-secrets`") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        # Position only: the text holds the PSKs.
        raise InputError(
            f"--outputs {where}: not JSON (line {exc.lineno}, column {exc.colno}); expected the output "
            "of `pulumi stack output --json --show-secrets`"
        ) from None
    if isinstance(data, dict) and data.get("kind") == "hybrid-vpn/host-config":
        return data
    if not isinstance(data, dict) or OUTPUT_KEY not in data:
        keys = ", ".join(sorted(data)) if isinstance(data, dict) else type(data).__name__
        raise InputError(
            f"--outputs {where}: no '{OUTPUT_KEY}' key (found: {keys}); expected the output of "
            "`pulumi stack output --json --show-secrets` of a hybrid-vpn stack"
        )
    value = host_config_of_outputs(data)
    if value == "[secret]":
        raise InputError(
            f"--outputs {where}: '{OUTPUT_KEY}' is masked as [secret]; run `pulumi stack output --json --show-secrets`"
        )
    return value
