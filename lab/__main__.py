"""`make lab` / `python -m lab up|down|status|exec <host> <cmd...>|break <tunnel>|heal <tunnel>|prefer <tunnel>|
maintenance <tunnel> [seconds] [--no-delete]|restart charon|agent|frr`.

The lab runs directly on the host when its kernel can do VTI + ESP, else inside a small VM (lab/vm.py); the commands
and their output are the same either way. HYBRID_VPN_LAB_BACKEND=vm|host forces one.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time

from lab import paths

USAGE = """usage: lab up [--routing static|bgp] | down | status | exec <host> <command...> | break <tunnel>
           | heal <tunnel> | prefer <tunnel> | maintenance <tunnel> [seconds] [--no-delete]
           | restart charon|agent|frr | lifetimes short|normal
hosts: vlan gw nat inet aws vpc ops"""
UP_TIMEOUT_SECONDS = float(os.environ.get("HYBRID_VPN_LAB_UP_TIMEOUT", "1800"))
CALL_TIMEOUT_SECONDS = 600.0


def say(msg: str) -> None:
    print(f"lab: {msg}", flush=True)


def current_backend() -> str | None:
    try:
        return paths.VM_MODE_FILE.read_text().strip()
    except FileNotFoundError:
        return None


def choose_backend() -> str:
    forced = os.environ.get("HYBRID_VPN_LAB_BACKEND")
    if forced in ("vm", "host"):
        say(f"backend forced by HYBRID_VPN_LAB_BACKEND={forced}")
        return forced
    from lab.capability import host_kernel_can_do_vti_esp

    ok, why = host_kernel_can_do_vti_esp()
    say(f"host kernel {os.uname().release}: {why}" + ("" if ok else " -> running the lab in a VM"))
    return "host" if ok else "vm"


def local(verb: str, args: list[str]) -> int:
    from lab import engine

    return engine.dispatch(verb, args, sys.stdout.buffer, sys.stderr.buffer)


def parse_up_args(args: list[str]) -> str:
    """`lab up [--routing static|bgp]` -> the routing mode."""
    from lab.host_config_source import check_routing_mode

    routing = "static"
    rest = list(args)
    while rest:
        arg = rest.pop(0)
        if arg.startswith("--routing="):
            routing = arg.split("=", 1)[1]
        elif arg == "--routing" and rest:
            routing = rest.pop(0)
        else:
            raise ValueError(f"lab up: unknown argument {arg!r} (expected --routing static|bgp)")
    return check_routing_mode(routing)


def up(routing: str = "static") -> int:
    if os.geteuid() != 0:
        say("needs root (network namespaces, VTIs, mounts)")
        return 1
    backend = current_backend()
    if backend == "vm":
        from lab import vm

        if vm.is_running():
            return vm.client().call("up", [], timeout=UP_TIMEOUT_SECONDS)
        vm.stop(quiet=True)  # a VM that died leaves files behind
    elif backend == "host":
        return local("up", [])
    backend = choose_backend()
    paths.RUNTIME_DIR.mkdir(parents=True, exist_ok=True)
    paths.VM_MODE_FILE.write_text(backend)
    # The operator's side (program + renderer) runs here, on the host, while the VM boots: under TCG it is ~7x slower.
    operator_dir = (paths.RPC_DIR if backend == "vm" else paths.RUNTIME_DIR) / "operator"
    preparing = start_operator(operator_dir, routing)
    if backend == "host":
        finish_operator(preparing, operator_dir)
        return local("up", [str(operator_dir)])
    from lab import vm

    t0 = time.monotonic()
    kernel = vm.ensure_kernel()
    say(f"VM kernel ready: {kernel.vmlinuz} ({time.monotonic() - t0:.1f} s)")
    vm.boot(kernel)
    finish_operator(preparing, operator_dir)
    return vm.client().call("up", [str(operator_dir)], timeout=UP_TIMEOUT_SECONDS)


def start_operator(operator_dir, routing: str):
    from lab import operator, rpc

    shutil.rmtree(paths.RPC_DIR, ignore_errors=True)
    rpc.make_dirs(paths.RPC_DIR)
    say(f"operator side: evaluating the Pulumi program (stacks/Pulumi.lab.yaml, routing.mode {routing}, emulated "
        "cloud) and rendering the gateway files, in the background")
    return operator.start(operator_dir, routing), time.monotonic()


def finish_operator(preparing, operator_dir) -> None:
    from lab import operator

    proc, t0 = preparing
    operator.wait(proc, operator_dir)
    say(f"operator side ready ({time.monotonic() - t0:.1f} s after it started)")


def down() -> int:
    backend = current_backend()
    if backend == "vm":
        from lab import vm

        vm.stop()
        say("VM stopped; runtime files removed")
    else:
        rc = local("down", [])
        if rc != 0:
            return rc
        shutil.rmtree(paths.RUNTIME_DIR / "operator", ignore_errors=True)
        shutil.rmtree(paths.RPC_DIR, ignore_errors=True)
    paths.VM_MODE_FILE.unlink(missing_ok=True)
    try:
        paths.RUNTIME_DIR.rmdir()
    except OSError:
        pass
    return 0


def forward(verb: str, args: list[str]) -> int:
    backend = current_backend()
    if backend is None:
        if verb == "status":
            print("lab: down")
            return 3
        say("the lab is not up (run `make lab` or `python -m lab up`)")
        return 3
    if backend == "host":
        return local(verb, args)
    from lab import vm

    if not vm.is_running():
        say("the lab VM is not running (it stopped or crashed): `lab down` cleans up, `lab up` starts again")
        return 3
    return vm.client().call(verb, args, timeout=None if verb in ("exec", "maintenance") else CALL_TIMEOUT_SECONDS)


def main(argv: list[str]) -> int:
    logging.basicConfig(level=os.environ.get("HYBRID_VPN_LAB_LOG", "WARNING"),
                        format="%(levelname)s %(name)s: %(message)s")
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else 2
    verb, args = argv[0], argv[1:]
    if verb == "up":
        try:
            routing = parse_up_args(args)
        except ValueError as exc:
            print(exc, file=sys.stderr)
            return 2
        return up(routing)
    if verb == "down":
        return down()
    if verb in ("status", "exec", "break", "heal", "prefer", "maintenance", "restart", "lifetimes"):
        return forward(verb, args)
    print(USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(130)
    except RuntimeError as exc:
        print(f"lab: {exc}", file=sys.stderr)
        sys.exit(1)
