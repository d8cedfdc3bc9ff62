"""The lab controller inside the VM: serves the host's RPC calls until `shutdown`, then the VM powers off."""

from __future__ import annotations

import logging
import os
import sys

from lab import engine, paths
from lab.rpc import RpcServer


def main() -> int:
    # the VM's console is not captured reliably: log where the host can read it (removed by `lab down`)
    logging.basicConfig(level=logging.INFO, filename=str(paths.RPC_DIR / "guest.log"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ["HYBRID_VPN_LAB_IN_VM"] = "1"
    RpcServer(paths.RPC_DIR, engine.dispatch).serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
