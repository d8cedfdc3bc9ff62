"""AWS Site-to-Site VPN rules the program and the renderer both enforce (pure; no Pulumi).

Source: ../shared/aws-vpn-facts.md; AWS user guide "Tunnel options for your VPN connection". Validation messages cite
these rules, so they live in one place.
"""

import ipaddress
import re

AWS_ENCRYPTION = ("AES128", "AES256", "AES128-GCM-16", "AES256-GCM-16")
AWS_INTEGRITY = ("SHA1", "SHA2-256", "SHA2-384", "SHA2-512")
AWS_PHASE1_DH = (2, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24)
AWS_PHASE2_DH = (2, 5, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24)
AWS_DPD_ACTIONS = ("clear", "restart", "none")
AWS_STARTUP_ACTIONS = ("add", "start")
AWS_RESERVED_INSIDE = tuple(
    ipaddress.ip_network(c)
    for c in ("169.254.0.0/30", "169.254.1.0/30", "169.254.2.0/30", "169.254.3.0/30", "169.254.4.0/30",
              "169.254.5.0/30", "169.254.169.252/30")
)
LINK_LOCAL = ipaddress.ip_network("169.254.0.0/16")
RFC1918 = tuple(ipaddress.ip_network(c) for c in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))
PHASE1_LIFETIME = (900, 28800)
PHASE2_LIFETIME = (900, 3600)
REKEY_MARGIN_MIN = 60
REPLAY_WINDOW = (64, 2048)
DPD_TIMEOUT_MIN = 30
MAX_ROUTES_TO_AWS = 100  # static routes from the customer gateway to a VGW
MAX_TUNNEL_MTU = 1446  # AWS maximum; PMTUD is not supported
PSK_RULE = "8 to 64 characters, only letters, digits, '.' and '_', not starting with '0'"
PSK_PATTERN = re.compile(r"^(?!0)[A-Za-z0-9._]{8,64}$")
