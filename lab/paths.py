"""Where the lab keeps its files, on the host and inside the guest.

The kernel cache survives `lab down` (it is a download cache, like apt's); everything under RUNTIME_DIR is removed by
`lab down`. Inside the VM, RUNTIME_DIR is the guest's own tmpfs /run, except RPC_DIR, which is the host directory shared
read-write with the guest.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Not under /var/cache: virtme-ng hides that behind a tmpfs in the guest, and the guest loads the modules from here.
CACHE_DIR = Path(os.environ.get("HYBRID_VPN_LAB_CACHE", "/var/lib/hybrid-vpn-lab"))
RUNTIME_DIR = Path(os.environ.get("HYBRID_VPN_LAB_RUN", "/run/hybrid-vpn-lab"))

# Host side of the VM backend.
VM_PID_FILE = RUNTIME_DIR / "vm.pid"
VM_LOG_FILE = RUNTIME_DIR / "vm.log"
VM_MODE_FILE = RUNTIME_DIR / "backend"
RPC_DIR = RUNTIME_DIR / "rpc"

# The lab itself (inside the guest, or on the host when the host kernel can do VTI + ESP).
STATE_DIR = RUNTIME_DIR / "lab"

NS_PREFIX = "hvlab-"
