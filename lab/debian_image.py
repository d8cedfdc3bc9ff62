"""A real Debian 12 (bookworm) system disk for the first-boot test, built from the Debian archive once per machine.

Stand-in for Linode's `linode/debian12` image: systemd as init, udev, dbus, openssh-server, cloud-init, ifupdown
(Linode's Debian images configure the NICs with ifupdown; cloud-init renders its `eni` config for it), and the lab's
cached kernel (/var/lib/hybrid-vpn-lab/linux-image-*) with its modules copied in (VTI, ESP, nftables load from them).

How the gateway's packages arrive: the user data's own `packages:` list (read from the rendered user data, so the two
cannot drift) is installed at build time with `apt-get install` in the image, the same command cloud-init runs, with
Recommends as cloud-init would. At first boot cloud-init's package module then finds them installed and changes
nothing. Why: the test VM has no route to any mirror (the network rules of the lab), and a CI run must not depend on
the archive's state of the day; building once per machine keeps the archive out of every later run.

Cache: <cache>/debian12-<key>/ with rootfs.ext4 and initrd.img, key = hash of the package lists, the kernel and
BUILDER_VERSION. Built under an exclusive lock; a half build is never used (renamed into place when complete). The
ext4 image is made without loop devices (`mkfs.ext4 -d`).

    python -m lab.debian_image build     # build (or reuse) the image; prints where it is and how long it took
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from lab import paths
from lab.vm import ensure_kernel

log = logging.getLogger(__name__)

# Bump when the recipe below changes: a new key, a new build.
BUILDER_VERSION = 3
SUITE = "bookworm"
# The host's own mirror (deb.debian.org, as apt-get --print-uris shows), the suites a Linode Debian 12 image uses.
MIRRORS = (
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
)
# What Linode's Debian 12 image has before any user data: init, device manager, D-Bus (hostnamectl), sshd,
# cloud-init, ifupdown, the usual system tools. Nothing of the product's: that comes from the user data's list.
BASE_PACKAGES = (
    "systemd", "systemd-sysv", "udev", "dbus", "openssh-server", "cloud-init", "ifupdown", "iproute2", "kmod",
    "procps", "netbase", "initramfs-tools", "zstd", "python3", "e2fsprogs", "locales", "sudo",
)
# Only the modules needed to find and mount the root disk go into the initramfs; the rest load from the disk.
INITRAMFS_MODULES = ("virtio_pci", "virtio_blk", "virtio_net", "ext4")
# Linode's image config, as far as the test needs it: root logs in with the keys Linode writes at disk build, and the
# only datasource is the NoCloud seed the test attaches (Linode's own is not here).
CLOUD_CFG_NAME = "90-hybrid-vpn-lab.cfg"
CLOUD_CFG = """# hybrid-vpn lab image (lab/debian_image.py): what Linode's Debian 12 image configures
datasource_list: [NoCloud]
disable_root: false
"""
FSTAB = "/dev/vda / ext4 defaults,errors=remount-ro 0 1\n"
SLACK_MB = 768  # free space in the root filesystem beyond what the build uses (logs, the pushed files)
LOCK_TIMEOUT_SECONDS = 1800.0


@dataclass(frozen=True)
class DebianImage:
    rootfs: Path  # raw ext4 image of the whole root filesystem (copy it per VM: the cache stays pristine)
    vmlinuz: Path
    initrd: Path
    kernel_version: str
    packages: tuple[str, ...]  # the user data's packages, installed in the image


def packages_of_user_data(user_data: str) -> tuple[str, ...]:
    """The `packages:` list of a #cloud-config user data (names only; cloud-init also allows [name, version])."""
    doc = yaml.safe_load(user_data) or {}
    names = []
    for item in doc.get("packages") or ():
        names.append(item if isinstance(item, str) else str(item[0]))
    return tuple(names)


def cache_key(packages: tuple[str, ...], kernel_version: str) -> str:
    blob = json.dumps({"builder": BUILDER_VERSION, "suite": SUITE, "mirrors": MIRRORS, "base": BASE_PACKAGES,
                       "packages": sorted(packages), "kernel": kernel_version, "initramfs": INITRAMFS_MODULES,
                       "cloud_cfg": CLOUD_CFG}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _image_dir(key: str) -> Path:
    return paths.CACHE_DIR / f"debian12-{key}"


def _say(msg: str) -> None:
    print(f"debian-image: {msg}", flush=True)


def _run(cmd: list[str], timeout: float, log_file: Path) -> None:
    with open(log_file, "ab") as out:
        out.write(f"\n$ {shlex.join(cmd)}\n".encode())
        out.flush()
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, timeout=timeout)
    if proc.returncode != 0:
        tail = log_file.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{cmd[0]} failed (rc {proc.returncode}); log {log_file}:\n{tail}")


def _hooks(kernel_tree: Path, version: str, packages: tuple[str, ...]) -> list[str]:
    """mmdebstrap customize hooks ("$1" is the new root): the product's packages, the kernel, the image config."""
    q = shlex.quote
    modules = "\n".join(INITRAMFS_MODULES)
    return [
        # The user data's packages, installed as cloud-init's package module installs them (Recommends included).
        f'chroot "$1" apt-get install -y -q -o APT::Install-Recommends=true {" ".join(q(p) for p in packages)}',
        f'mkdir -p "$1/lib/modules" && cp -a {q(str(kernel_tree / "lib" / "modules" / version))} "$1/lib/modules/"',
        f'cp {q(str(kernel_tree / "boot" / f"config-{version}"))} "$1/boot/"',
        f'chroot "$1" depmod {q(version)}',
        f'printf %s {q(modules + chr(10))} >> "$1/etc/initramfs-tools/modules"',
        'sed -i "s/^MODULES=.*/MODULES=list/" "$1/etc/initramfs-tools/initramfs.conf"',
        f'chroot "$1" mkinitramfs -o /boot/initrd.img-{q(version)} {q(version)}',
        f'printf %s {q(CLOUD_CFG)} > "$1/etc/cloud/cloud.cfg.d/{CLOUD_CFG_NAME}"',
        f'printf %s {q(FSTAB)} > "$1/etc/fstab"',
        # A cloud image has its default locale generated: cloud-init 22.4 runs update-locale LANG=en_US.UTF-8 before
        # locale-gen, which fails (and fails cloud-init) when the locale does not exist yet.
        'sed -i "s/^# *en_US.UTF-8 UTF-8/en_US.UTF-8 UTF-8/" "$1/etc/locale.gen" && chroot "$1" locale-gen',
        # An empty machine-id, as in cloud images: systemd makes one at the instance's first boot.
        'truncate -s 0 "$1/etc/machine-id"',
        'rm -f "$1/etc/ssh/ssh_host_"*',  # every instance gets its own keys: here, the pinned one from user data
        # mmdebstrap leaves the build host's resolver: the VM has none (no packet to a resolver it cannot reach).
        'rm -f "$1/etc/resolv.conf"',
    ]


def _build(target: Path, packages: tuple[str, ...], log_file: Path) -> None:
    kernel = ensure_kernel()
    kernel_tree = kernel.vmlinuz.parent.parent
    version = kernel.vmlinuz.name.removeprefix("vmlinuz-")
    root = target / "root"
    cmd = ["mmdebstrap", "--variant=apt", "--mode=root", "--format=directory",
           "--include=" + ",".join(BASE_PACKAGES),
           "--aptopt=Acquire::Check-Valid-Until \"false\"", "--aptopt=Acquire::Retries \"3\"",
           # The image keeps the lists of its build: cloud-init's apt-get update cannot refresh them in the VM.
           "--skip=cleanup/apt/lists",
           *[f"--customize-hook={h}" for h in _hooks(kernel_tree, version, packages)],
           SUITE, str(root), *MIRRORS]
    t0 = time.monotonic()
    _run(cmd, timeout=3600, log_file=log_file)
    _say(f"mmdebstrap done in {time.monotonic() - t0:.0f} s")
    shutil.copy2(root / "boot" / f"initrd.img-{version}", target / "initrd.img")
    used_mb = int(subprocess.run(["du", "-sm", str(root)], capture_output=True, text=True, check=True)
                  .stdout.split()[0])
    t1 = time.monotonic()
    _run(["mkfs.ext4", "-q", "-F", "-L", "rootfs", "-d", str(root), str(target / "rootfs.ext4"),
          f"{used_mb + SLACK_MB}M"], timeout=1800, log_file=log_file)
    _say(f"mkfs.ext4 -d ({used_mb + SLACK_MB} MB) in {time.monotonic() - t1:.0f} s")
    shutil.rmtree(root)
    (target / "image.json").write_text(json.dumps({"kernel_version": version, "vmlinuz": str(kernel.vmlinuz),
                                                   "packages": list(packages), "builder": BUILDER_VERSION}))


def ensure_image(packages: tuple[str, ...]) -> DebianImage:
    """The cached image for this package list, built first when missing (one builder at a time on the machine)."""
    if not packages:
        raise ValueError("packages: the user data lists no packages; expected its `packages:` list, e.g. "
                         "('strongswan-charon', 'nftables')")
    for tool in ("mmdebstrap", "mkfs.ext4"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"the first-boot image needs {tool}: apt-get install mmdebstrap e2fsprogs")
    kernel = ensure_kernel()
    version = kernel.vmlinuz.name.removeprefix("vmlinuz-")
    key = cache_key(packages, version)
    final = _image_dir(key)
    paths.CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(paths.CACHE_DIR / "debian12.lock", "w") as lock:
        deadline = time.monotonic() + LOCK_TIMEOUT_SECONDS
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"another build of the Debian image holds {lock.name} for "
                                       f"{LOCK_TIMEOUT_SECONDS:.0f} s") from None
                time.sleep(2)
        if not (final / "image.json").exists():
            partial = final.with_name(final.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
            log_file = paths.CACHE_DIR / f"{final.name}.build.log"
            log_file.unlink(missing_ok=True)
            _say(f"building {final} (packages: {' '.join(packages)}); log {log_file}")
            t0 = time.monotonic()
            try:
                _build(partial, packages, log_file)
            except BaseException:
                shutil.rmtree(partial, ignore_errors=True)
                raise
            os.rename(partial, final)
            _say(f"built in {time.monotonic() - t0:.0f} s")
    return DebianImage(rootfs=final / "rootfs.ext4", vmlinuz=kernel.vmlinuz, initrd=final / "initrd.img",
                       kernel_version=version, packages=packages)


def product_packages() -> tuple[str, ...]:
    """The packages of the user data the program renders (any host key will do: the list does not depend on it), in
    routing.mode bgp as the first-boot test boots it: a static stack's list plus FRR's."""
    from hostconfig.cloudinit import render_user_data
    from lab.keys import ed25519_keypair

    private, public = ed25519_keypair("throwaway")
    return packages_of_user_data(render_user_data(hostname="hybrid-vpn-lab-gw", ssh_host_ed25519_private=private,
                                                  ssh_host_ed25519_public=public, bgp=True))


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if argv[:1] != ["build"]:
        print("usage: python -m lab.debian_image build", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    image = ensure_image(product_packages())
    _say(f"image {image.rootfs} ({image.kernel_version}) ready in {time.monotonic() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
