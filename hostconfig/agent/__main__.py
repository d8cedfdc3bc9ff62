"""`python -m hostconfig.agent` is `vpnctl`."""

import sys

from .cli import main

sys.exit(main())
