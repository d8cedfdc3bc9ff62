"""Netlink errors in the middle of a reconcile (root): the kernel refuses the Nth write (EPERM, EBUSY) or a dump
(EBUSY). The reconcile reports the error naming what it tried, keeps going with the other stages, never leaves AWS
traffic a way out through the default route, and the next reconcile converges (no stuck half state)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
from agent_testlib import config_dict, run_in_netns, wire_gateway, write_config
from hardening_lib import route_get, table_routes, without_ipv6

pytestmark = pytest.mark.root

AWS_CIDRS = ["10.0.0.0/16", "10.1.0.0/16"]
BOTH = frozenset({"tunnel1", "tunnel2"})
WRITES = {"link": {"add", "set", "del"}, "addr": {"add", "del"}, "route": {"replace", "add", "del"},
          "rule": {"add", "del"}}


class FaultyIPRoute:
    """Delegates to a real IPRoute; the ``fail_at``-th write request (1-based) raises NetlinkError(code) instead.
    With ``fail_dump`` the route dump raises once. Counts the writes so a test can walk every position."""

    def __init__(self, real, fail_at: int | None, code: int, fail_dump: bool = False):
        self.real = real
        self.fail_at = fail_at
        self.code = code
        self.fail_dump = fail_dump
        self.writes = 0
        self.failed: str | None = None

    def __getattr__(self, name):
        attr = getattr(self.real, name)
        if name in WRITES:
            def wrapped(command, *args, **kwargs):
                if command in WRITES[name]:
                    self.writes += 1
                    if self.writes == self.fail_at:
                        from pyroute2.netlink.exceptions import NetlinkError

                        self.failed = f"{name} {command} {kwargs.get('dst', kwargs.get('ifname', ''))}"
                        raise NetlinkError(self.code)
                elif command == "dump" and name == "route" and self.fail_dump:
                    from pyroute2.netlink.exceptions import NetlinkError

                    self.fail_dump = False
                    raise NetlinkError(self.code)
                return attr(command, *args, **kwargs)
            return wrapped
        return attr

    def rtnl(self, real):
        """The same fault plan over the raw rtnetlink client (nexthops, routes via a nexthop, the route dump)."""
        return FaultyRtnl(real, self)


class FaultyRtnl:
    WRITES = {"replace_nexthop", "delete_nexthop", "replace_route_via_nexthop"}

    def __init__(self, real, plan: FaultyIPRoute):
        self.real = real
        self.plan = plan

    def __getattr__(self, name):
        attr = getattr(self.real, name)
        plan = self.plan

        def wrapped(*args, **kwargs):
            from hostconfig.agent.rtnl import RtnlError

            if name in self.WRITES:
                plan.writes += 1
                if plan.writes == plan.fail_at:
                    plan.failed = f"{name} {args[0] if args else ''}"
                    raise RtnlError(plan.code, os.strerror(plan.code))
            elif name == "dump_routes" and plan.fail_dump:
                plan.fail_dump = False
                raise RtnlError(plan.code, os.strerror(plan.code))
            return attr(*args, **kwargs)
        return wrapped if callable(attr) else attr


def _reconcile(config: str, up: frozenset[str], active: str | None, fail_at: int | None = None,
               code: int = errno.EPERM, fail_dump: bool = False) -> dict:
    from pyroute2 import IPRoute

    from hostconfig.agent.config import load_config
    from hostconfig.agent.desired import TunnelView
    from hostconfig.agent.kernel import Kernel
    from hostconfig.agent.reconcile import Reconciler
    from hostconfig.agent.rtnl import Rtnl

    faulty = FaultyIPRoute(IPRoute(), fail_at, code, fail_dump)
    with Kernel(faulty, faulty.rtnl(Rtnl())) as kernel:  # type: ignore[arg-type]
        result = Reconciler(load_config(config), kernel, "given").run(TunnelView(up, active))
    return {"changes": [str(c) for c in result.changes], "problems": result.problems, "writes": faulty.writes,
            "failed": faulty.failed}


class Lab:
    def __init__(self, gw: str, config: Path, tmp: Path):
        self.gw, self.config, self.tmp = gw, config, tmp

    def reconcile(self, up, active, **fault) -> dict:
        return run_in_netns(self.gw, _reconcile, str(self.config), frozenset(up), active, **fault)

    def reset_cold(self) -> None:
        """Back to a never-reconciled gateway: no routes in our table, no rule, no table, tunnel links down."""
        def ip(*a: str) -> None:
            subprocess.run(["ip", "-n", self.gw, *a], capture_output=True, check=False)
        ip("route", "flush", "table", "1519")
        ip("rule", "del", "pref", "10100")
        for dev in ("vti-aws1", "vti-aws2"):
            ip("addr", "flush", "dev", dev)
            ip("link", "set", dev, "down")
        subprocess.run(["ip", "netns", "exec", self.gw, "nft", "delete", "table", "inet", "hybrid_vpn"],
                       capture_output=True, check=False)
        (self.tmp / "state" / "nft-applied.json").unlink(missing_ok=True)


@pytest.fixture
def lab(netns, tmp_path):
    gw, aws = netns("hvfgw"), netns("hvfaws")
    without_ipv6(gw)
    data = config_dict(tmp_path, aws_cidrs=AWS_CIDRS)
    config = write_config(tmp_path, data)
    wire_gateway(gw, aws, data)
    # The way out a leak would take: a default route in main.
    subprocess.run(["ip", "-n", gw, "route", "add", "default", "via", "172.16.1.254", "dev", "eth1"], check=True)
    return Lab(gw, config, tmp_path)


def assert_no_leak(lab: Lab) -> None:
    """Each AWS CIDR resolves to a tunnel link or is unreachable; never to the default route."""
    for cidr in AWS_CIDRS:
        host = cidr.replace(".0.0/16", ".4.85")
        code, out = route_get(lab.gw, host)
        if code == 0:
            assert '"dev":"vti-aws' in out and "172.16.1.254" not in out, f"{host} leaks: {out}"
        else:
            assert "No route to host" in out or "unreachable" in out, out


def expected_table(up: frozenset[str], active: str | None) -> set[tuple[str, int, str]]:
    dev = {"tunnel1": "vti-aws1", "tunnel2": "vti-aws2"}
    rows = set()
    for cidr in AWS_CIDRS:
        if active:
            rows.add((cidr, 100, dev[active]))
        standby = sorted(up - {active})
        if standby:
            rows.add((cidr, 200, dev[standby[0]]))
        rows.add((cidr, 4294967295, "unreachable"))
    return rows


def actual_table(lab: Lab) -> set[tuple[str, int, str]]:
    return {(r["dst"], r.get("metric", 0), r.get("dev") or r.get("type")) for r in table_routes(lab.gw)}


def our_rules(lab: Lab) -> list[str]:
    out = subprocess.run(["ip", "-n", lab.gw, "rule", "show", "pref", "10100"], capture_output=True, text=True)
    return out.stdout.splitlines()


# (id, state before, target state)
SCENARIOS = [
    ("cold-start", None, (BOTH, "tunnel1")),
    ("switch", (BOTH, "tunnel1"), (frozenset({"tunnel2"}), "tunnel2")),
    ("both-down", (BOTH, "tunnel1"), (frozenset(), None)),
    ("failback", (frozenset({"tunnel2"}), "tunnel2"), (BOTH, "tunnel1")),
]
MESSAGES = {errno.EPERM: "Operation not permitted", errno.EBUSY: "Device or resource busy"}


@pytest.mark.parametrize("code", [errno.EPERM, errno.EBUSY], ids=["EPERM", "EBUSY"])
@pytest.mark.parametrize("name, before, target", SCENARIOS, ids=[s[0] for s in SCENARIOS])
def test_a_refused_write_at_every_position_is_reported_and_the_next_run_converges(lab, name, before, target, code):
    def prepare() -> None:
        if before is None:
            lab.reset_cold()
        else:
            good = lab.reconcile(*before)
            assert good["problems"] == [], good
            assert actual_table(lab) == expected_table(*before)

    prepare()
    writes = lab.reconcile(*target)["writes"]  # how many netlink writes this transition takes
    assert writes >= 1
    for position in range(1, writes + 1):
        prepare()
        faulty = lab.reconcile(*target, fail_at=position, code=code)
        assert faulty["failed"], f"write {position} of {writes} was not reached"
        problems = " | ".join(faulty["problems"])
        assert MESSAGES[code] in problems, (position, faulty)
        # the message says what was tried: the operation and its object
        assert any(word in problems for word in ("route", "rule", "address", "link", "nexthop")), problems
        if before is not None or our_rules(lab):
            assert_no_leak(lab)
        if before is not None:
            assert len(our_rules(lab)) == 1, "the rule that makes our table count went missing"
        recovered = lab.reconcile(*target)
        assert recovered["problems"] == [], (position, recovered)
        assert actual_table(lab) == expected_table(*target), position
        assert len(our_rules(lab)) == 1
        assert_no_leak(lab)
        again = lab.reconcile(*target)
        assert (again["changes"], again["problems"]) == ([], []), (position, again)


def test_a_failed_route_dump_is_an_error_not_a_crash_and_the_other_stages_still_run(lab):
    lab.reconcile(BOTH, "tunnel1")
    faulty = lab.reconcile(frozenset({"tunnel2"}), "tunnel2", fail_dump=True, code=errno.EBUSY)
    problems = " | ".join(faulty["problems"])
    assert "routes:" in problems and MESSAGES[errno.EBUSY] in problems, faulty
    assert len(our_rules(lab)) == 1
    assert_no_leak(lab)
    recovered = lab.reconcile(frozenset({"tunnel2"}), "tunnel2")
    assert recovered["problems"] == [] and actual_table(lab) == expected_table(frozenset({"tunnel2"}), "tunnel2")


def test_vpnctl_reports_a_netlink_refusal_in_one_line_and_exits_1(lab):
    """Through the CLI: a write refused by the kernel is an exit status and a line naming it, no traceback."""
    lab.reconcile(BOTH, "tunnel1")
    # The CLI runs in its own process: patch pyroute2 there so that every route replace fails with EPERM.
    patch = ("import errno, sys\n"
             "from pyroute2.netlink.exceptions import NetlinkError\n"
             "import hostconfig.agent.kernel as kernel\n"
             "real = kernel.IPRoute\n"
             "class Refusing:\n"
             "    def __init__(self):\n"
             "        self.ipr = real()\n"
             "    def __getattr__(self, name):\n"
             "        return getattr(self.ipr, name)\n"
             "    def route(self, command, *a, **k):\n"
             "        if command == 'replace':\n"
             "            raise NetlinkError(errno.EPERM)\n"
             "        return self.ipr.route(command, *a, **k)\n"
             "kernel.IPRoute = Refusing\n"
             "class RefusingRtnl(kernel.Rtnl):\n"
             "    def replace_route_via_nexthop(self, *a, **k):\n"
             "        raise kernel.RtnlError(errno.EPERM, 'Operation not permitted')\n"
             "kernel.Rtnl = RefusingRtnl\n"
             "from hostconfig.agent.cli import main\n"
             "sys.exit(main(sys.argv[1:]))\n")
    subprocess.run(["ip", "-n", lab.gw, "route", "del", "10.0.0.0/16", "table", "1519", "metric", "200"], check=True)
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.run(["ip", "netns", "exec", lab.gw, sys.executable, "-c", patch, "reconcile", "--tunnel-links",
                           "given", "--config", str(lab.config)], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1, proc
    assert "Traceback" not in proc.stderr
    assert "problem: replace route 10.0.0.0/16 metric 200" in proc.stdout and "Operation not permitted" in proc.stdout
    assert_no_leak(lab)
