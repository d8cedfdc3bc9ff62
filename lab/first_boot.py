"""The gateway's first boot, for real: the Debian 12 image (lab/debian_image.py) booted under QEMU with the program's
user data as a NoCloud seed, reachable only from network namespaces this module creates.

What stands for what on Linode:
- the disk: a per-VM copy of the cached image; root's authorized_keys (the stack's `linode.authorized_keys`) written
  into it before the first boot, as Linode does when it builds a disk from an image (debugfs: no loop device);
- the metadata service: a NoCloud seed (`cloud-localds`, an ISO9660 'cidata' volume) with the program's user data
  unchanged, meta-data (instance id, host name) and network-config (Linode's addressing: eth0 in the VPC subnet with
  its first address as the gateway, eth1 on the VLAN); the kernel cmdline `ds=nocloud` alternative would need the
  seed inside the cached image, i.e. one image per run;
- the 1:1 NAT and the operator: namespace `<prefix>wan`, where QEMU runs (so its taps are born there). It holds the
  subnet's gateway address, the operator's address, and DNATs the public IP to the private one; the SSH push and
  every command of the test come from there. `eth0`'s tap is "the outside link" the leak capture listens on;
- the VLAN: namespace `<prefix>vlan`, one host, its tap moved there once QEMU holds it.
No QEMU user networking, no route out of the namespaces: the guest reaches only these two namespaces.

    python -m lab.first_boot prepare DIR [static|bgp]  # the operator side (the program, emulated cloud), own process
    python -m lab.first_boot push DIR      # the real delivery (GatewayConfig provider's create), in the wan netns
"""

from __future__ import annotations

import base64
import ipaddress
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from lab import paths
from lab.debian_image import DebianImage
from lab.keys import ed25519_keypair
from lab.vm import kvm_usable

log = logging.getLogger(__name__)

NS_PREFIX = "hvboot-"  # not the lab's hvlab-: `lab down` must not take this VM's namespaces
RUN_DIR = paths.RUNTIME_DIR / "first-boot"
OPERATOR_FILE = "operator.json"
INSTANCE_TYPE = "linode:index/instance:Instance"
GATEWAY_CONFIG_TYPE = "pulumi-python:dynamic/hybrid-vpn:GatewayConfig"
WAN_TAP, VLAN_TAP = "hvb-wan", "hvb-vlan"
WAN_MAC, VLAN_MAC = "52:54:00:0a:08:02", "52:54:00:ac:10:01"
VM_MEMORY = os.environ.get("HYBRID_VPN_LAB_VM_MEMORY", "1G")
VM_CPUS = os.environ.get("HYBRID_VPN_LAB_VM_CPUS", "2")
SSH_OPTIONS = ("-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=10",
               "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=6", "-o", "LogLevel=ERROR")


def _say(msg: str) -> None:
    print(f"first-boot: {msg}", flush=True)


def _run(cmd: list[str], check: bool = True, timeout: float = 120, input: str | None = None
         ) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])} failed (rc {proc.returncode}): {(proc.stderr or proc.stdout)[-2000:]}")
    return proc


def _write_secret(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


# --- the operator side: `python -m lab.first_boot prepare DIR` ------------------------------------------------------

def prepare(out_dir: Path, routing_mode: str = "static") -> None:
    """Evaluate the program (stacks/Pulumi.lab.yaml, plus an operator key as `linode.authorized_keys` and
    `delivery.ssh_private_key`, in ``routing_mode``: bgp adds FRR, which cloud-init installs and starts and the
    delivery activates through systemd) and keep what a real `pulumi up` hands on: the instance's user data and
    authorized keys, and the GatewayConfig resource's inputs (what its provider's create receives)."""
    from lab import cloud, host_config_source
    from lab.addresses import LAB_PLAN

    out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    ops_private, ops_public = ed25519_keypair("hybrid-vpn-first-boot-operator")
    _write_secret(out_dir / "id_ed25519", ops_private)
    config = host_config_source.stack_config(routing_mode)  # a fresh copy of the file's
    config["hybrid-vpn:linode"]["authorized_keys"] = [ops_public]
    config["hybrid-vpn:delivery"] = {"ssh_private_key": ops_private, "timeout_seconds": 300}
    run = cloud.run_program(config, stack="lab", address_plan=LAB_PLAN, secret_keys=("delivery",))
    instance = run.one(INSTANCE_TYPE)
    delivery = run.one(GATEWAY_CONFIG_TYPE)
    user_data = base64.b64decode(instance.inputs["metadatas"][0]["userData"]).decode()
    result = {
        "host_config": run.outputs["host_config"],
        "user_data": user_data,
        "instance_id": instance.id,
        "label": instance.inputs["label"],
        "authorized_keys": instance.inputs.get("authorizedKeys") or [],
        "gateway_config": {k: v for k, v in delivery.inputs.items() if not k.startswith("__")},
    }
    _write_secret(out_dir / OPERATOR_FILE, json.dumps(result))


@dataclass(frozen=True)
class OperatorOutput:
    host_config: dict
    user_data: str
    instance_id: str
    label: str
    authorized_keys: list[str]
    gateway_config: dict  # the GatewayConfig resource's inputs (secret: files, private_key, scrub)

    @classmethod
    def load(cls, out_dir: Path) -> OperatorOutput:
        return cls(**json.loads((out_dir / OPERATOR_FILE).read_text()))

    @property
    def psks(self) -> list[str]:
        return [t["psk"] for t in self.host_config["tunnels"]]

    @property
    def bootstrap_host_key(self) -> str:
        return self.host_config["gateway"]["ssh_host_public_key"]

    @property
    def delivered_host_key(self) -> str:
        return self.gateway_config["host_public_key"]


def run_operator(out_dir: Path, routing_mode: str = "static", timeout: float = 900) -> OperatorOutput:
    """`prepare` in a child process: the Pulumi runtime wants its own main thread (as lab/operator.py)."""
    out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    proc = subprocess.run([sys.executable, "-m", "lab.first_boot", "prepare", str(out_dir), routing_mode],
                          cwd=paths.REPO,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"program evaluation failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    return OperatorOutput.load(out_dir)


def push(out_dir: Path) -> dict:
    """The real delivery: the GatewayConfig provider's create with the inputs the program gave it."""
    from hostconfig.deliver.provider import GatewayConfigProvider

    op = OperatorOutput.load(out_dir)
    result = GatewayConfigProvider().create(dict(op.gateway_config))
    return {"id": result.id, "changed_paths": result.outs["changed_paths"]}


# --- the NoCloud seed ------------------------------------------------------------------------------------------------

def network_config(host_config: dict) -> dict:
    """Linode's addressing as cloud-init network config v1: eth0 in the VPC subnet (its first address routes), eth1
    on the VLAN, matched by the MACs this module gives the NICs."""
    gw, linode = host_config["gateway"], host_config["linode"]
    subnet = ipaddress.ip_network(linode["subnet_cidr"])
    return {"version": 1, "config": [
        {"type": "physical", "name": gw["public_interface"], "mac_address": WAN_MAC,
         "subnets": [{"type": "static", "address": f"{gw['private_ip']}/{subnet.prefixlen}",
                      "gateway": str(subnet.network_address + 1)}]},
        {"type": "physical", "name": gw["vlan_interface"], "mac_address": VLAN_MAC,
         "subnets": [{"type": "static", "address": gw["vlan_address"]}]},
    ]}


def build_seed(op: OperatorOutput, out: Path) -> Path:
    seed_dir = out / "seed"
    seed_dir.mkdir(exist_ok=True)
    (seed_dir / "user-data").write_text(op.user_data)
    (seed_dir / "meta-data").write_text(yaml.safe_dump({"instance-id": f"linode-{op.instance_id}",
                                                        "local-hostname": op.label}))
    (seed_dir / "network-config").write_text(yaml.safe_dump(network_config(op.host_config)))
    seed = out / "seed.iso"
    _run(["cloud-localds", f"--network-config={seed_dir / 'network-config'}", str(seed),
          str(seed_dir / "user-data"), str(seed_dir / "meta-data")])
    return seed


def instance_disk(image: DebianImage, authorized_keys: list[str], out: Path) -> Path:
    """The instance's disk: a copy of the image with root's authorized_keys, as Linode builds a disk from an image."""
    disk = out / "disk.ext4"
    t0 = time.monotonic()
    _run(["cp", "--sparse=always", str(image.rootfs), str(disk)], timeout=600)
    keys = out / "authorized_keys"
    keys.write_text("".join(k.strip() + "\n" for k in authorized_keys))
    script = "\n".join(["mkdir /root/.ssh", "sif /root/.ssh mode 040700", f"write {keys} /root/.ssh/authorized_keys",
                        "sif /root/.ssh/authorized_keys mode 0100600", "sif /root/.ssh/authorized_keys uid 0",
                        "sif /root/.ssh/authorized_keys gid 0", ""])
    _run(["debugfs", "-w", "-f", "-", str(disk)], input=script)
    check = _run(["debugfs", "-R", "cat /root/.ssh/authorized_keys", str(disk)])
    if check.stdout != keys.read_text():
        raise RuntimeError(f"debugfs did not write /root/.ssh/authorized_keys into {disk}:\n{check.stderr}")
    log.info("instance disk %s in %.1f s", disk, time.monotonic() - t0)
    return disk


# --- the namespaces and QEMU ---------------------------------------------------------------------------------------

def netns(name: str) -> str:
    return f"{NS_PREFIX}{name}"


def in_ns(name: str, cmd: list[str]) -> list[str]:
    return ["ip", "netns", "exec", netns(name), *cmd]


@dataclass
class GatewayVm:
    """One booted gateway VM and its two namespaces."""

    op: OperatorOutput
    out: Path
    qemu: subprocess.Popen | None = None
    known_hosts: Path = field(init=False)

    def __post_init__(self) -> None:
        self.known_hosts = self.out / "known_hosts"
        host = self.public_ip
        # Both keys the gateway may present: the bootstrap one from user data, the delivered one after the first push.
        self.known_hosts.write_text(f"{host} {self.op.bootstrap_host_key}\n{host} {self.op.delivered_host_key}\n")

    @property
    def public_ip(self) -> str:
        return self.op.host_config["gateway"]["public_ip"]

    @property
    def console_log(self) -> Path:
        return self.out / "console.log"

    def ssh(self, command: str, timeout: float = 300, input: str | None = None) -> subprocess.CompletedProcess:
        cmd = in_ns("wan", ["ssh", *SSH_OPTIONS, "-o", f"UserKnownHostsFile={self.known_hosts}",
                            "-i", str(self.out / "id_ed25519"), f"root@{self.public_ip}", command])
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input)

    def presented_host_key(self) -> str | None:
        """The ed25519 key sshd presents now ("ssh-ed25519 AAAA..."), or None when nothing answers on port 22."""
        proc = subprocess.run(in_ns("wan", ["ssh-keyscan", "-T", "5", "-t", "ed25519", self.public_ip]),
                              capture_output=True, text=True, timeout=60)
        for line in proc.stdout.splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[1] == "ssh-ed25519":
                return f"{parts[1]} {parts[2]}"
        return None

    def presents(self, public_key_line: str) -> bool:
        """True when sshd presents this key now (type and key; the comment is not part of the key)."""
        return self.presented_host_key() == " ".join(public_key_line.split()[:2])

    def boot_id(self) -> str | None:
        proc = self.ssh("cat /proc/sys/kernel/random/boot_id", timeout=60)
        return proc.stdout.strip() if proc.returncode == 0 else None

    def wait(self, predicate: Callable[[], object], timeout: float, what: str, interval: float = 2.0) -> object:
        deadline = time.monotonic() + timeout
        while True:
            if self.qemu is not None and self.qemu.poll() is not None:
                raise RuntimeError(f"QEMU exited (rc {self.qemu.returncode}) while waiting for {what}; console:\n"
                                   f"{self.console_tail()}")
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: not within {timeout:.0f} s; console:\n{self.console_tail()}")
            time.sleep(interval)

    def console_tail(self, chars: int = 3000) -> str:
        try:
            return self.console_log.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return "(no console log)"


def _setup_namespaces(host_config: dict) -> None:
    teardown_namespaces()
    gw, linode = host_config["gateway"], host_config["linode"]
    subnet = ipaddress.ip_network(linode["subnet_cidr"])
    from lab.addresses import LAB_PLAN

    for name in ("wan", "vlan"):
        _run(["ip", "netns", "add", netns(name)])
        _run(["ip", "-n", netns(name), "link", "set", "lo", "up"])
    wan = ["ip", "-n", netns("wan")]
    _run([*wan, "tuntap", "add", "dev", WAN_TAP, "mode", "tap"])
    _run([*wan, "tuntap", "add", "dev", VLAN_TAP, "mode", "tap"])
    _run([*wan, "addr", "add", f"{subnet.network_address + 1}/{subnet.prefixlen}", "dev", WAN_TAP])
    _run([*wan, "addr", "add", f"{LAB_PLAN.operator_ip}/32", "dev", "lo"])
    _run([*wan, "link", "set", WAN_TAP, "up"])
    # The operator reaches the public IP; Linode's 1:1 NAT turns it into the private one (and back, by conntrack).
    _run([*wan, "route", "add", f"{gw['public_ip']}/32", "dev", WAN_TAP, "src", LAB_PLAN.operator_ip])
    nat = (f"table ip hvboot_nat {{\n chain out {{\n  type nat hook output priority -100;\n"
           f"  ip daddr {gw['public_ip']} dnat to {gw['private_ip']}\n }}\n}}\n")
    _run(in_ns("wan", ["nft", "-f", "-"]), input=nat)


def _setup_vlan(host_config: dict) -> None:
    """Once QEMU holds the VLAN tap: move it to the VLAN namespace, give that host its address and route."""
    from lab.addresses import LAB_PLAN

    _run(["ip", "-n", netns("wan"), "link", "set", VLAN_TAP, "netns", netns("vlan")])
    vlan = ["ip", "-n", netns("vlan")]
    _run([*vlan, "addr", "add", LAB_PLAN.vlan_host_cidr, "dev", VLAN_TAP])
    _run([*vlan, "link", "set", VLAN_TAP, "up"])
    gateway_vlan_ip = host_config["gateway"]["vlan_address"].split("/")[0]
    for cidr in host_config["aws"]["cidrs"]:
        _run([*vlan, "route", "add", cidr, "via", gateway_vlan_ip])


def teardown_namespaces() -> None:
    for name in ("wan", "vlan"):
        if Path(f"/run/netns/{netns(name)}").exists():
            _run(["ip", "netns", "del", netns(name)], check=False)


def qemu_command(image: DebianImage, disk: Path, seed: Path, out: Path, use_kvm: bool) -> list[str]:
    return [
        "qemu-system-x86_64", "-nodefaults", "-no-user-config", "-display", "none",
        "-machine", "pc,accel=kvm" if use_kvm else "pc,accel=tcg", "-cpu", "host" if use_kvm else "max",
        "-m", VM_MEMORY, "-smp", VM_CPUS,
        "-kernel", str(image.vmlinuz), "-initrd", str(image.initrd),
        "-append", "root=/dev/vda rw console=ttyS0 net.ifnames=0 panic=-1",
        "-drive", f"file={disk},format=raw,if=virtio,cache=unsafe",
        "-drive", f"file={seed},format=raw,if=virtio,readonly=on",
        # Entropy at boot: sshd, charon and Python's getrandom() would otherwise wait for it under TCG.
        "-object", "rng-random,filename=/dev/urandom,id=rng0", "-device", "virtio-rng-pci,rng=rng0",
        "-netdev", f"tap,id=wan,ifname={WAN_TAP},script=no,downscript=no",
        "-device", f"virtio-net-pci,netdev=wan,mac={WAN_MAC}",
        "-netdev", f"tap,id=vlan,ifname={VLAN_TAP},script=no,downscript=no",
        "-device", f"virtio-net-pci,netdev=vlan,mac={VLAN_MAC}",
        "-serial", f"file:{out / 'console.log'}", "-monitor", "none", "-pidfile", str(out / "qemu.pid"),
    ]


def start(image: DebianImage, op: OperatorOutput, out: Path) -> GatewayVm:
    """Disk, seed, namespaces, QEMU started; returns at once (wait for SSH with GatewayVm.wait)."""
    disk = instance_disk(image, op.authorized_keys, out)
    seed = build_seed(op, out)
    _setup_namespaces(op.host_config)
    use_kvm = kvm_usable() and not (paths.CACHE_DIR / "kvm-unusable").exists()
    cmd = in_ns("wan", qemu_command(image, disk, seed, out, use_kvm))
    with open(out / "qemu.log", "wb") as qlog:
        qemu = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=qlog, stderr=subprocess.STDOUT,
                                start_new_session=True)
    vm = GatewayVm(op, out, qemu)
    vm.wait(lambda: (out / "qemu.pid").exists(), 60, "QEMU to start", interval=0.2)
    _setup_vlan(op.host_config)
    _say(f"QEMU ({'KVM' if use_kvm else 'TCG'}, {VM_CPUS} vCPUs, {VM_MEMORY}) booting {image.kernel_version}; "
         f"console {vm.console_log}")
    return vm


def stop(vm: GatewayVm) -> None:
    if vm.qemu is not None and vm.qemu.poll() is None:
        os.killpg(vm.qemu.pid, signal.SIGTERM)
        try:
            vm.qemu.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(vm.qemu.pid, signal.SIGKILL)
            vm.qemu.wait(timeout=30)
    teardown_namespaces()
    # The disk and the secrets go (the operator's output holds the PSKs and keys); logs and captures stay for a look.
    for name in ("disk.ext4", "seed.iso", OPERATOR_FILE, "id_ed25519"):
        (vm.out / name).unlink(missing_ok=True)
    shutil.rmtree(vm.out / "seed", ignore_errors=True)


def reset_run_dir() -> Path:
    shutil.rmtree(RUN_DIR, ignore_errors=True)
    RUN_DIR.mkdir(parents=True, mode=0o700)
    return RUN_DIR


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if len(argv) in (2, 3) and argv[0] == "prepare":
        prepare(Path(argv[1]), *argv[2:])
        return 0
    if len(argv) == 2 and argv[0] == "push":
        print(json.dumps(push(Path(argv[1]))))
        return 0
    print("usage: python -m lab.first_boot prepare DIR [static|bgp] | push DIR", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
