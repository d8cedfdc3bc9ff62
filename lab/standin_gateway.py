"""TEMPORARY gateway configuration used only while hostconfig's renderer/agent are not in the tree.

It lets the topology, both charons and the VTIs be exercised before the real chain exists. `lab up` says loudly when
it is in use; once `hostconfig.render` and `hostconfig.agent` land, lab/gateway.py uses them instead.
"""

from __future__ import annotations

from lab.awspeer import aws_proposals
from lab.sh import ip_batch, run_in, sysctl_in

CHARON_CONF = """charon {
    install_routes = no
    retransmit_timeout = 2
    retransmit_base = 1.4
}
"""


def render_swanctl(host_config: dict) -> str:
    crypto = host_config["crypto"]
    gw = host_config["gateway"]
    conns, secrets = [], []
    for t in host_config["tunnels"]:
        conns.append(f"""    {t['name']} {{
        version = 2
        local_addrs = {gw['private_ip']}
        remote_addrs = {t['outside_ip']}
        proposals = {aws_proposals(crypto['phase1'], ike=True)}
        dpd_delay = 10s
        local {{
            auth = psk
            id = {gw['public_ip']}
        }}
        remote {{
            auth = psk
            id = {t['outside_ip']}
        }}
        children {{
            {t['name']} {{
                local_ts = 0.0.0.0/0
                remote_ts = 0.0.0.0/0
                esp_proposals = {aws_proposals(crypto['phase2'], ike=False)}
                mark_in = {t['mark']}
                mark_out = {t['mark']}
                start_action = start
                dpd_action = restart
            }}
        }}
    }}""")
        secrets.append(f"""    ike-{t['name']} {{
        id-1 = {gw['public_ip']}
        id-2 = {t['outside_ip']}
        secret = "{t['psk']}"
    }}""")
    return "connections {\n" + "\n".join(conns) + "\n}\nsecrets {\n" + "\n".join(secrets) + "\n}\n"


def apply(host_config: dict) -> None:
    gw = host_config["gateway"]
    run_in("gw", ["sh", "-ec", "umask 077; cat > /etc/swanctl/conf.d/hybrid-vpn.conf"],
           input=render_swanctl(host_config))
    lines, settings = [], {"net.ipv4.ip_forward": "1", "net.ipv4.conf.all.rp_filter": "2"}
    for i, t in enumerate(host_config["tunnels"]):
        prefix = t["inside_cidr"].split("/")[1]
        vti = t["interface"]
        lines += [f"link add {vti} type vti local {gw['private_ip']} remote {t['outside_ip']} key {t['mark']}",
                  f"addr add {t['gateway_inside_ip']}/{prefix} dev {vti}",
                  f"link set {vti} mtu {host_config['tunnel_mtu']} up"]
        for cidr in host_config["aws"]["cidrs"]:
            lines.append(f"route add {cidr} dev {vti} metric {100 * (i + 1)} src {gw['vlan_address'].split('/')[0]}")
        settings[f"net.ipv4.conf.{vti}.disable_policy"] = "1"
        settings[f"net.ipv4.conf.{vti}.rp_filter"] = "2"
    ip_batch("gw", lines)
    sysctl_in("gw", settings)
    run_in("gw", ["swanctl", "--load-all", "--noprompt"])
