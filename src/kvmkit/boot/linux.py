"""Direct Linux boot: load a bzImage and initrd, build the zero page and the 64-bit entry state."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Sequence
from pathlib import Path

from kvmkit.boot.bzimage import BzImage
from kvmkit.boot.cpu_state import (
    CR0_ET,
    CR0_NE,
    CR0_PE,
    CR0_PG,
    CR4_PAE,
    EFER_LMA,
    EFER_LME,
    RFLAGS_RESERVED_ONE,
    BootCpuState,
)
from kvmkit.boot.e820 import E820Entry, build_e820
from kvmkit.boot.elf import HEADERS_READ, ElfKernel, parse_elf_kernel
from kvmkit.boot.gdt import BootGdt
from kvmkit.boot.guest_ram import GuestRam
from kvmkit.boot.layout import (
    BOOT_STACK_POINTER,
    CMDLINE_ADDR,
    CMDLINE_MAX,
    GDT_ADDR,
    IDT_ADDR,
    IDT_SIZE,
    KERNEL_64BIT_ENTRY_OFFSET,
    KERNEL_LOAD_ADDR,
    MPTABLE_ADDR,
    MPTABLE_SIZE,
    TSS_ADDR,
    TSS_SIZE,
    ZERO_PAGE_ADDR,
)
from kvmkit.boot.mptable import build_mptable
from kvmkit.boot.page_tables import write_identity_page_tables
from kvmkit.boot.placement import MIB, check_kernel_fits, place_initrd
from kvmkit.boot.setup_header import (
    CAN_USE_HEAP,
    E820_MAX_ENTRIES_ZEROPAGE,
    LOADER_TYPE_UNDEFINED,
    SETUP_HEADER_OFFSET,
    BootParams,
)
from kvmkit.boot.vmlinux import check_segments_fit, load_segments
from kvmkit.errors import BootError

MIN_RAM = 32 * MIB
"""Below this no distribution kernel gets far enough to print anything useful; refuse early."""
LOW_MEMORY_END = MPTABLE_ADDR + MPTABLE_SIZE
"""RAM must cover [0, 0xA0000): the GDT, zero page, stack, page tables, command line, MP table."""
HEAP_END_PTR = 0xFE00
"""Setup heap end (offset from the real-mode segment), the customary value; unused by 64-bit entry."""


def _check_ram(ram_regions: Sequence[tuple[int, int]]) -> None:
    total = sum(size for _, size in ram_regions)
    if total < MIN_RAM:
        raise BootError(
            f"guest RAM is {total // MIB} MiB; direct Linux boot needs at least {MIN_RAM // MIB} MiB"
        )
    if not any(gpa <= 0 and gpa + size >= LOW_MEMORY_END for gpa, size in ram_regions):
        raise BootError(
            f"guest RAM must cover 0x0-0x{LOW_MEMORY_END:x} for the boot structures; regions are "
            + ", ".join(f"0x{gpa:x}+0x{size:x}" for gpa, size in ram_regions)
        )


def _encode_cmdline(cmdline: str, image: BzImage) -> bytes:
    encoded = cmdline.encode()
    if b"\0" in encoded:
        raise BootError("kernel command line contains a NUL character")
    limit = min(image.cmdline_size, CMDLINE_MAX - 1)
    if len(encoded) > limit:
        raise BootError(
            f"kernel command line is {len(encoded)} bytes; kernel {image.path} accepts at most {limit}"
        )
    return encoded + b"\0"


def _read_initrd(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BootError(f"initrd {path}: cannot read: {exc.strerror or exc}") from None
    if not data:
        raise BootError(f"initrd {path}: file is empty")
    return data


def build_zero_page(
    image: BzImage, e820: Sequence[E820Entry], cmdline_addr: int, initrd_addr: int, initrd_size: int
) -> BootParams:
    """Fill ``boot_params``: the image's setup header, our loader fields and the e820 map."""
    if len(e820) > E820_MAX_ENTRIES_ZEROPAGE:
        raise BootError(
            f"memory map has {len(e820)} entries; the zero page holds {E820_MAX_ENTRIES_ZEROPAGE}"
        )
    params = BootParams()
    ctypes.memmove(
        ctypes.addressof(params) + SETUP_HEADER_OFFSET, image.header_bytes, len(image.header_bytes)
    )
    hdr = params.hdr
    hdr.type_of_loader = LOADER_TYPE_UNDEFINED
    hdr.loadflags |= CAN_USE_HEAP
    hdr.heap_end_ptr = HEAP_END_PTR
    hdr.cmd_line_ptr = cmdline_addr
    hdr.ramdisk_image = initrd_addr
    hdr.ramdisk_size = initrd_size
    params.e820_entries = len(e820)
    for slot, entry in zip(params.e820_table, e820, strict=False):
        slot.addr, slot.size, slot.type = entry.addr, entry.size, int(entry.type)
    return params


def load_linux(
    ram: GuestRam,
    ram_regions: Sequence[tuple[int, int]],
    kernel_path: str | Path,
    initrd_path: str | Path | None,
    cmdline: str,
    ncpus: int,
    *,
    image: BzImage | None = None,
    vmlinux: str | Path | None = None,
) -> BootCpuState:
    """Load a bzImage (and optional initrd) into guest RAM and return the BSP's 64-bit entry state.

    ``ram_regions`` are the (gpa, size) RAM ranges; the first must cover 0-0xA0000. ``image`` is the already
    parsed bzImage, if the caller has it. With ``vmlinux`` (an ELF extracted from this bzImage, see
    :mod:`kvmkit.boot.kernel_cache`) its segments are loaded at their physical addresses and the vCPU enters at
    the ELF entry point, skipping the bzImage's decompressor (and its KASLR); the zero page still comes from the
    bzImage's setup header. Raises BootError for anything that keeps the kernel from booting.
    """
    _check_ram(ram_regions)
    if image is None:
        image = BzImage.parse(kernel_path)
    e820 = build_e820(ram_regions)
    elf_fd, kernel = -1, None
    try:
        if vmlinux is not None:
            elf_fd, kernel = _open_vmlinux(Path(vmlinux))
            kernel_end = check_segments_fit(kernel, e820, f"kernel {vmlinux}")
            entry = kernel.entry
        else:
            kernel_end = check_kernel_fits(image, e820)
            entry = KERNEL_LOAD_ADDR + KERNEL_64BIT_ENTRY_OFFSET
        _load_images(ram, image, e820, kernel_end, initrd_path, cmdline, ncpus, elf_fd, kernel)
    finally:
        if elf_fd >= 0:
            os.close(elf_fd)
    return _entry_state(entry, ram)


def _open_vmlinux(path: Path) -> tuple[int, ElfKernel]:
    """Open a kernel ELF and validate its headers (from the same open file the segments are read from)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise BootError(f"kernel {path}: cannot open: {exc.strerror or exc}") from None
    try:
        kernel = parse_elf_kernel(os.pread(fd, HEADERS_READ, 0), os.fstat(fd).st_size, f"kernel {path}")
    except BaseException:
        os.close(fd)
        raise
    return fd, kernel


def _load_images(ram: GuestRam, image: BzImage, e820: Sequence[E820Entry], kernel_end: int,
                 initrd_path: str | Path | None, cmdline: str, ncpus: int, elf_fd: int,
                 kernel: ElfKernel | None) -> None:
    cmdline_bytes = _encode_cmdline(cmdline, image)
    mptable = build_mptable(ncpus, MPTABLE_ADDR)

    initrd_addr = initrd_size = 0
    initrd = b""
    if initrd_path is not None:
        initrd_path = Path(initrd_path)
        initrd = _read_initrd(initrd_path)
        initrd_size = len(initrd)
        initrd_addr = place_initrd(initrd_path, initrd_size, e820, image.initrd_addr_max, kernel_end)

    if kernel is not None:
        load_segments(ram, elf_fd, kernel, f"kernel ELF for {image.path}")
    else:
        ram.write(KERNEL_LOAD_ADDR, image.protected_mode_kernel)
    if initrd:
        ram.write(initrd_addr, initrd)
    ram.write(CMDLINE_ADDR, cmdline_bytes)
    zero_page = build_zero_page(image, e820, CMDLINE_ADDR, initrd_addr, initrd_size)
    ram.write(ZERO_PAGE_ADDR, bytes(zero_page))
    ram.write(MPTABLE_ADDR, mptable)


def _entry_state(entry: int, ram: GuestRam) -> BootCpuState:
    gdt = BootGdt()
    ram.write(GDT_ADDR, gdt.to_bytes())
    ram.write(IDT_ADDR, bytes(IDT_SIZE))
    ram.write(TSS_ADDR, bytes(TSS_SIZE))
    cr3 = write_identity_page_tables(ram)
    return BootCpuState(
        rip=entry,
        rsp=BOOT_STACK_POINTER,
        rsi=ZERO_PAGE_ADDR,
        rflags=RFLAGS_RESERVED_ONE,
        cr0=CR0_PE | CR0_ET | CR0_NE | CR0_PG,
        cr3=cr3,
        cr4=CR4_PAE,
        efer=EFER_LME | EFER_LMA,
        gdt_base=GDT_ADDR,
        gdt_limit=gdt.limit,
        idt_base=IDT_ADDR,
        idt_limit=IDT_SIZE - 1,
        code=gdt.code,
        data=gdt.data,
        tss=gdt.tss,
    )
