"""The lab's own kernel and initramfs: Debian's generic kernel with KVM, 9p and the networking modules."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from kvmkit.guest.build import content_key
from kvmkit.guest.debian_kernel import cache_root, fetch_kernel
from kvmkit.guest.initramfs import BUSYBOX, build_initramfs
from kvmkit.guest.kernel_modules import ModuleTree

# 9p to see the host, kvm_amd for a nested /dev/kvm, what network tests need inside the lab, and ext4 for a
# loop-mounted filesystem that takes O_DIRECT (the lab's tmpfs refuses it; block tests need cache=none), with
# crc32c_generic, which ext4 asks for at every mount.
LAB_MODULES = (
    "virtio_pci", "9pnet_virtio", "9p", "kvm_amd", "tun", "bridge", "veth", "vhost_net", "loop", "dummy",
    "crc32c_generic", "ext4",
)
LAB_BUILDER_VERSION = "1"


@dataclass(frozen=True)
class LabAssets:
    kernel: Path
    initrd: Path


def build_lab_assets() -> LabAssets:
    """The lab kernel (generic flavour: the cloud one has no 9p) and its initramfs, cached by content."""
    kernel = fetch_kernel("generic")
    init = resources.files("kvmkit.lab").joinpath("init.sh").read_text()
    key = content_key(LAB_BUILDER_VERSION.encode(), kernel.package.encode(), kernel.version.encode(),
                      init.encode(), ",".join(LAB_MODULES).encode(),
                      hashlib.sha256(BUSYBOX.read_bytes()).digest())
    initrd = cache_root() / "lab" / key / "initrd.img"
    if not initrd.exists():
        initrd.parent.mkdir(parents=True, exist_ok=True)
        partial = initrd.with_suffix(".partial")
        partial.write_bytes(build_initramfs(init, ModuleTree(kernel.modules), LAB_MODULES))
        os.replace(partial, initrd)
    return LabAssets(kernel.vmlinuz, initrd)
