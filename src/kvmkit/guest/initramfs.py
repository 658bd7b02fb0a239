"""Assemble an initramfs from busybox, an init script and kernel modules, with our own cpio writer."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from kvmkit.errors import HostError
from kvmkit.guest.cpio import CpioEntry, write_initramfs
from kvmkit.guest.kernel_modules import ModuleTree

BUSYBOX = Path("/bin/busybox")
BASE_DIRS = ("bin", "sbin", "etc", "proc", "sys", "dev", "tmp", "run", "lib", "lib/modules", "mnt", "root",
             "usr", "usr/bin", "usr/sbin", "var")


def busybox_binary() -> bytes:
    if not BUSYBOX.exists():
        raise HostError(f"{BUSYBOX} is missing: install the busybox-static package")
    return BUSYBOX.read_bytes()


def build_initramfs(init_script: str, modules: ModuleTree, wanted: Iterable[str],
                    extra: Iterable[CpioEntry] = ()) -> bytes:
    """A gzip'd newc archive with /init, /bin/busybox and the wanted modules plus their dependencies.

    `/etc/kvmkit-modules` lists the modules in load order (dependencies first).
    """
    order = modules.load_order(list(wanted))
    entries = [CpioEntry.directory(d) for d in BASE_DIRS]
    entries.append(CpioEntry.char_device("dev/console", 5, 1))
    entries.append(CpioEntry.file("bin/busybox", busybox_binary(), 0o755))
    entries.append(CpioEntry.symlink("bin/sh", "busybox"))
    entries.append(CpioEntry.file("init", init_script.encode(), 0o755))
    entries.append(CpioEntry.file("etc/kvmkit-modules", "".join(f"{m}\n" for m in order).encode()))
    entries += [CpioEntry.file(f"lib/modules/{m}.ko", modules.paths[m].read_bytes()) for m in order]
    entries += list(extra)
    return write_initramfs(entries)
