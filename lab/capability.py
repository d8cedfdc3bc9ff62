"""Can this host kernel run the lab directly? Probe (a VTI and an ESP state in a scratch namespace), never assume."""

from __future__ import annotations

import logging
import subprocess
import uuid

log = logging.getLogger(__name__)


def host_kernel_can_do_vti_esp() -> tuple[bool, str]:
    ns = f"hvlab-probe-{uuid.uuid4().hex[:6]}"

    def ip(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "-n", ns, *args], capture_output=True, text=True)

    if subprocess.run(["ip", "netns", "add", ns], capture_output=True).returncode != 0:
        return False, "cannot create a network namespace (needs root)"
    try:
        r = ip("link", "add", "probe0", "type", "vti", "local", "192.0.2.1", "remote", "192.0.2.2", "key", "1")
        if r.returncode != 0:
            return False, f"no VTI support ({r.stderr.strip()})"
        r = ip("xfrm", "state", "add", "src", "192.0.2.1", "dst", "192.0.2.2", "proto", "esp", "spi", "0x100",
               "mode", "tunnel", "aead", "rfc4106(gcm(aes))", "0x" + "11" * 20, "128")
        if r.returncode != 0:
            return False, f"no ESP state support ({r.stderr.strip()})"
        return True, "host kernel has VTI and ESP"
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
