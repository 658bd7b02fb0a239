"""`kvmkit guest build`: a guest kernel and initramfs from Debian's packages, cached by content."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from kvmkit.guest.debian_kernel import cache_root, fetch_kernel
from kvmkit.guest.host_programs import program_entries, program_files
from kvmkit.guest.initramfs import BASE_DIRS, BUSYBOX, build_initramfs
from kvmkit.guest.kernel_modules import ModuleTree

# crc32c_generic: ext4 asks for it at every mount, ext2 included (built in on the cloud kernel)
GUEST_MODULES = ("virtio_pci", "virtio_blk", "virtio_net", "virtio_console", "virtio_rng", "crc32c_generic", "ext4")
BUILDER_VERSION = "1"


@dataclass(frozen=True)
class GuestAssets:
    """A bootable guest: kernel, initramfs and what they were built from."""

    flavor: str
    kernel: Path
    initrd: Path
    kernel_package: str
    kernel_version: str

    def as_json(self) -> dict[str, str]:
        return {"flavor": self.flavor, "kernel": str(self.kernel), "initrd": str(self.initrd),
                "kernel_package": self.kernel_package, "kernel_version": self.kernel_version}


def guest_init_script() -> str:
    return resources.files("kvmkit.guest").joinpath("init.sh").read_text()


def content_key(*parts: bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(hashlib.sha256(part).digest())
    return digest.hexdigest()[:16]


def build_guest(flavor: str = "generic", tools: tuple[str, ...] = ()) -> GuestAssets:
    """Build (or reuse from the cache) the flavour's guest kernel and initramfs.

    `tools` names host programs (e.g. "fio", "iperf3") carried into the guest's /usr/bin with their libraries.
    """
    kernel = fetch_kernel(flavor)
    init = guest_init_script()
    tool_files = program_files(tuple(sorted(tools)))
    tool_digest = b"".join(str(g).encode() + hashlib.sha256(h.resolve().read_bytes()).digest()
                           for g, h in sorted(tool_files.items()))
    key = content_key(BUILDER_VERSION.encode(), kernel.package.encode(), kernel.version.encode(), init.encode(),
                      ",".join(GUEST_MODULES).encode(), hashlib.sha256(BUSYBOX.read_bytes()).digest(), tool_digest)
    label = "-".join((flavor, *sorted(tools)))
    initrd = cache_root() / "guests" / f"{label}-{key}" / "initrd.img"
    if not initrd.exists():
        initrd.parent.mkdir(parents=True, exist_ok=True)
        extra = program_entries(tuple(sorted(tools)), set(BASE_DIRS))
        image = build_initramfs(init, ModuleTree(kernel.modules), GUEST_MODULES, extra)
        partial = initrd.with_suffix(".partial")
        partial.write_bytes(image)
        os.replace(partial, initrd)
    _cache_vmlinux(kernel.vmlinuz)
    return GuestAssets(flavor, kernel.vmlinuz, initrd, kernel.package, kernel.version)


def _cache_vmlinux(vmlinuz: Path) -> None:
    """Put the kernel's extracted vmlinux in the kernel cache now (the lab sees the cache read-only)."""
    from kvmkit.boot.bzimage import BzImage
    from kvmkit.boot.kernel_cache import KernelCache, cached_vmlinux

    cache = KernelCache()
    if cache.writable():
        cached_vmlinux(BzImage.parse(vmlinuz), cache)
