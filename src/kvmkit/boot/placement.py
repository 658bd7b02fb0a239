"""Where the kernel runs and where the initrd goes, decided from the e820 map.

The protected-mode kernel is copied to 1 MiB, but a relocatable kernel decompresses itself to
max(load address aligned up to kernel_alignment, pref_address) and needs init_size bytes there;
a non-relocatable one runs at pref_address. The kernel footprint therefore spans from 1 MiB to
the end of whichever is higher, and the initrd must stay clear of all of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from kvmkit.boot.bzimage import BzImage
from kvmkit.boot.e820 import E820Entry, E820Type
from kvmkit.boot.layout import KERNEL_LOAD_ADDR, PAGE_SIZE
from kvmkit.errors import BootError

MIB = 1 << 20
FOUR_GIB = 1 << 32
DEFAULT_INITRD_ADDR_MAX = 0x37FFFFFF
"""The protocol's value for kernels that leave initrd_addr_max zero."""


def _align_up(value: int, alignment: int) -> int:
    return -(-value // alignment) * alignment if alignment > 1 else value


def _mib(size: int) -> str:
    return f"{-(-size // MIB)} MiB"


def kernel_footprint(image: BzImage) -> tuple[int, int]:
    """Return [start, end) of the guest memory the kernel occupies until it reads the memory map."""
    if image.relocatable_kernel:
        runtime_start = max(_align_up(KERNEL_LOAD_ADDR, image.kernel_alignment), image.pref_address)
    else:
        runtime_start = image.pref_address or KERNEL_LOAD_ADDR
    end = max(KERNEL_LOAD_ADDR + len(image.protected_mode_kernel), runtime_start + image.init_size)
    return KERNEL_LOAD_ADDR, end


def check_kernel_fits(image: BzImage, e820: Sequence[E820Entry]) -> int:
    """Raise BootError unless the whole kernel footprint lies in one RAM range; return its end."""
    start, end = kernel_footprint(image)
    for entry in e820:
        if entry.type == E820Type.RAM and entry.addr <= start and end <= entry.end:
            return end
    ram_end = max(
        (entry.end for entry in e820 if entry.type == E820Type.RAM and entry.addr <= start), default=0
    )
    raise BootError(
        f"kernel {image.path} does not fit: it needs guest memory 0x{start:x}-0x{end:x} "
        f"({_mib(end - start)}, init_size 0x{image.init_size:x}) but contiguous RAM there "
        f"ends at 0x{ram_end:x}"
    )


def place_initrd(
    path: Path, size: int, e820: Sequence[E820Entry], initrd_addr_max: int, kernel_end: int
) -> int:
    """Return the page-aligned address as high as possible for an initrd of ``size`` bytes.

    The initrd ends at or below min(initrd_addr_max + 1, 4 GiB), lies inside one RAM range and
    starts at or above ``kernel_end``.
    """
    limit = min((initrd_addr_max or DEFAULT_INITRD_ADDR_MAX) + 1, FOUR_GIB)
    ram = sorted((entry for entry in e820 if entry.type == E820Type.RAM), key=lambda e: e.addr, reverse=True)
    for entry in ram:
        top = min(entry.end, limit)
        if top - size < 0:
            continue
        start = (top - size) // PAGE_SIZE * PAGE_SIZE
        if start >= max(entry.addr, kernel_end):
            return start
    raise BootError(
        f"initrd {path} ({_mib(size)}) does not fit below 0x{limit:x} in RAM above the kernel "
        f"(which ends at 0x{kernel_end:x}); give the VM more memory or use a smaller initrd"
    )
