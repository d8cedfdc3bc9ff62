"""The VM backend: a stock Debian kernel booted with virtme-ng under QEMU (TCG when KVM is unusable).

The guest sees the host's root filesystem read-only (the repo and .venv included) and runs `python -m lab.guest`, the
lab controller, which serves the file-based RPC in RPC_DIR (shared read-write). `lab up` boots the VM in the background
and returns; later `lab ...` commands are calls to that controller; `lab down` asks it to take the lab down, waits for
QEMU to exit and removes every runtime file.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from lab import paths
from lab.rpc import RpcClient, make_dirs

log = logging.getLogger(__name__)

KERNEL_META_PACKAGE = "linux-image-amd64"
BUSYBOX_PACKAGE = "busybox-static"  # virtme-ng builds an initramfs with it (the Debian kernel has 9p/virtio as modules)
BOOT_TIMEOUT_SECONDS = float(os.environ.get("HYBRID_VPN_LAB_BOOT_TIMEOUT", "420"))
SHUTDOWN_TIMEOUT_SECONDS = 180.0
VM_MEMORY = os.environ.get("HYBRID_VPN_LAB_VM_MEMORY", "2G")
VM_CPUS = os.environ.get("HYBRID_VPN_LAB_VM_CPUS", "2")


@dataclass(frozen=True)
class KernelImage:
    vmlinuz: Path
    busybox: Path


def _say(msg: str) -> None:
    print(f"lab: {msg}", flush=True)


def _run(cmd: list[str], cwd: Path | None = None) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        detail = proc.stderr.strip() or proc.stdout.strip()
        raise RuntimeError(f"{' '.join(cmd)} failed (rc {proc.returncode}): {detail}")
    return proc.stdout


def _kernel_package_name() -> str:
    """The versioned image package that the meta package depends on (e.g. linux-image-6.1.0-56-amd64)."""
    for attempt in range(2):
        out = subprocess.run(["apt-cache", "depends", KERNEL_META_PACKAGE], capture_output=True, text=True).stdout
        for line in out.splitlines():
            line = line.strip()
            if line.startswith("Depends: linux-image-"):
                return line.split(":", 1)[1].strip()
        if attempt == 0:
            _say("apt lists have no kernel package: apt-get update")
            _run(["apt-get", "update", "-q"])
    raise RuntimeError(f"cannot find the kernel package that {KERNEL_META_PACKAGE} depends on (apt-cache depends)")


def _fetch_and_extract(package: str, dest: Path) -> None:
    """apt-get download + dpkg-deb -x into dest (replaced atomically, so a half extraction is never used)."""
    CACHE = paths.CACHE_DIR
    CACHE.mkdir(parents=True, exist_ok=True)
    for old in CACHE.glob(f"{package}_*.deb"):
        old.unlink()
    _say(f"downloading {package} (apt-get download) into {CACHE}")
    t0 = time.monotonic()
    proc = subprocess.run(["apt-get", "download", "-q", package], cwd=CACHE, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"apt-get download {package} failed: {proc.stderr.strip()}")
    debs = sorted(CACHE.glob(f"{package}_*.deb"))
    if not debs:
        raise RuntimeError(f"apt-get download {package} left no .deb in {CACHE}")
    size_mb = debs[-1].stat().st_size / 1e6
    _say(f"downloaded {debs[-1].name} ({size_mb:.0f} MB) in {time.monotonic() - t0:.1f} s; extracting")
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    _run(["dpkg-deb", "-x", str(debs[-1]), str(tmp)])
    shutil.rmtree(dest, ignore_errors=True)
    os.rename(tmp, dest)
    debs[-1].unlink()  # the extracted tree is the cache; the .deb is 70 MB of duplicate
    _say(f"extracted {package} in {time.monotonic() - t0:.1f} s")


def ensure_kernel() -> KernelImage:
    """Idempotent: reuse the extracted kernel and busybox when present, else fetch them with apt."""
    CACHE = paths.CACHE_DIR
    existing = sorted(CACHE.glob("linux-image-*/boot/vmlinuz-*"))
    busybox = CACHE / BUSYBOX_PACKAGE / "bin" / "busybox"
    if existing and busybox.exists():
        return KernelImage(existing[-1], busybox)
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise RuntimeError("the lab VM needs a Debian kernel package: apt-get and dpkg-deb not found")
    if shutil.which("depmod") is None:
        raise RuntimeError("the lab VM needs kmod (depmod) to load the kernel's modules: apt-get install kmod")
    if not existing:
        package = _kernel_package_name()
        _fetch_and_extract(package, CACHE / package)
        existing = sorted(CACHE.glob("linux-image-*/boot/vmlinuz-*"))
        if not existing:
            raise RuntimeError(f"{package} has no boot/vmlinuz-*")
    if not busybox.exists():
        _fetch_and_extract(BUSYBOX_PACKAGE, CACHE / BUSYBOX_PACKAGE)
    return KernelImage(existing[-1], busybox)


def _vng() -> Path:
    vng = Path(sys.executable).parent / "vng"
    if not vng.exists():
        raise RuntimeError(f"virtme-ng not installed in the venv ({vng}): make setup installs the 'lab' extra")
    return vng


def kvm_usable() -> bool:
    """KVM works only when /dev/kvm opens; on a nested guest without it QEMU aborts, so probe rather than assume."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR)
    except OSError:
        return False
    os.close(fd)
    return True


def vm_pid() -> int | None:
    try:
        pid = int(paths.VM_PID_FILE.read_text())
    except (FileNotFoundError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    return pid


def client() -> RpcClient:
    return RpcClient(paths.RPC_DIR, is_server_alive=lambda: vm_pid() is not None)


def is_running() -> bool:
    return vm_pid() is not None and (paths.RPC_DIR / "ready").exists()


def boot(kernel: KernelImage) -> float:
    """Start the VM in its own session, wait until the controller inside serves RPC; returns the boot time.

    KVM is used when /dev/kvm opens AND QEMU can really use it (nested guests often expose a /dev/kvm that aborts on
    the first MSR write): a KVM boot that dies that way is retried under TCG.
    """
    verdict = paths.CACHE_DIR / "kvm-unusable"  # remembered: a failed KVM attempt costs seconds per boot
    if kvm_usable() and not verdict.exists() and os.environ.get("HYBRID_VPN_LAB_KVM", "auto") != "no":
        try:
            return _boot(kernel, use_kvm=True)
        except VmExited as exc:
            if "kvm" not in str(exc).lower():
                raise
            verdict.write_text(str(exc)[-500:])
            _say("KVM is present but unusable here; booting under QEMU TCG instead")
    return _boot(kernel, use_kvm=False)


class VmExited(RuntimeError):
    pass


def _boot(kernel: KernelImage, use_kvm: bool) -> float:
    paths.RUNTIME_DIR.mkdir(parents=True, exist_ok=True)
    make_dirs(paths.RPC_DIR)
    (paths.RPC_DIR / "ready").unlink(missing_ok=True)
    # The guest does not inherit our environment: hand it the runtime dir, so a second lab (HYBRID_VPN_LAB_RUN, e.g. a
    # CI rehearsal beside a running lab) finds its own RPC directory.
    guest_cmd = (f"cd {shlex.quote(str(paths.REPO))} && "
                 f"exec env HYBRID_VPN_LAB_RUN={shlex.quote(str(paths.RUNTIME_DIR))} {sys.executable} -m lab.guest")
    cmd = [str(_vng()), "--memory", VM_MEMORY, "--cpus", VM_CPUS, "--busybox", str(kernel.busybox),
           f"--rwdir={paths.RPC_DIR}={paths.RPC_DIR}", "--name", "hybrid-vpn-lab", "-r", str(kernel.vmlinuz),
           "--", guest_cmd]
    if not use_kvm:
        cmd.insert(1, "--disable-kvm")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}")
    env["HYBRID_VPN_LAB_IN_VM"] = "1"
    t0 = time.monotonic()
    with open(paths.VM_LOG_FILE, "wb") as logf:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, env=env,
                                cwd=paths.REPO, start_new_session=True)
    paths.VM_PID_FILE.write_text(str(proc.pid))
    mode = "KVM" if "--disable-kvm" not in cmd else "QEMU TCG, no KVM"
    _say(f"booting the lab VM ({kernel.vmlinuz.name}, {mode}, {VM_CPUS} vCPUs, {VM_MEMORY}); log: {paths.VM_LOG_FILE}")
    deadline = t0 + BOOT_TIMEOUT_SECONDS
    while not (paths.RPC_DIR / "ready").exists():
        if proc.poll() is not None:
            tail = paths.VM_LOG_FILE.read_text(errors="replace")[-3000:]
            paths.VM_PID_FILE.unlink(missing_ok=True)
            raise VmExited(f"the lab VM exited (rc {proc.returncode}) before its controller started:\n{tail}")
        if time.monotonic() > deadline:
            stop(quiet=True)
            raise RuntimeError(f"the lab VM did not start its controller within {BOOT_TIMEOUT_SECONDS:.0f} s "
                               f"(HYBRID_VPN_LAB_BOOT_TIMEOUT); see {paths.VM_LOG_FILE}")
        time.sleep(0.2)
    elapsed = time.monotonic() - t0
    _say(f"VM up in {elapsed:.1f} s")
    return elapsed


def stop(quiet: bool = False) -> None:
    """Ask the controller to take the lab down and power off; kill QEMU if it does not; remove runtime files."""
    pid = vm_pid()
    if pid is not None and (paths.RPC_DIR / "ready").exists():
        try:
            client().call("shutdown", [], timeout=SHUTDOWN_TIMEOUT_SECONDS)
        except Exception as exc:  # still stop the VM below
            if not quiet:
                _say(f"controller did not shut down cleanly ({exc}); stopping the VM")
    if pid is not None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and vm_pid() is not None:
            time.sleep(0.2)
        if vm_pid() is not None:
            try:
                os.killpg(pid, signal.SIGTERM)  # our own session: vng + the qemu it started
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and vm_pid() is not None:
                time.sleep(0.2)
            if vm_pid() is not None:
                os.killpg(pid, signal.SIGKILL)
    for path in (paths.VM_PID_FILE, paths.VM_LOG_FILE, paths.VM_MODE_FILE):
        path.unlink(missing_ok=True)
    shutil.rmtree(paths.RPC_DIR, ignore_errors=True)
