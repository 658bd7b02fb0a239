"""Fixtures for boot tests: synthetic bzImages and a bytearray-backed guest RAM."""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from pathlib import Path

import pytest

from kvmkit.boot.setup_header import (
    BOOT_FLAG_MAGIC,
    HEADER_MAGIC,
    LOADED_HIGH,
    SETUP_HEADER_END,
    SETUP_HEADER_OFFSET,
    XLF_CAN_BE_LOADED_ABOVE_4G,
    XLF_KERNEL_64,
    SetupHeader,
)

PAGE = 4096
PAYLOAD_MARKER = b"KVMKIT-TEST-KERNEL"


class FakeRam:
    """Sparse guest RAM over the given (gpa, size) regions; writes outside them fail the test."""

    def __init__(self, regions: list[tuple[int, int]]) -> None:
        self.regions = regions
        self.pages: dict[int, bytearray] = {}

    def _check(self, gpa: int, length: int) -> None:
        if not any(start <= gpa and gpa + length <= start + size for start, size in self.regions):
            raise AssertionError(f"access 0x{gpa:x}+0x{length:x} outside guest RAM")

    def write(self, gpa: int, data: bytes) -> None:
        self._check(gpa, len(data))
        offset = 0
        while offset < len(data):
            addr = gpa + offset
            page = self.pages.setdefault(addr // PAGE, bytearray(PAGE))
            chunk = min(PAGE - addr % PAGE, len(data) - offset)
            page[addr % PAGE : addr % PAGE + chunk] = data[offset : offset + chunk]
            offset += chunk

    def view(self, gpa: int, length: int) -> memoryview:
        self._check(gpa, length)
        out = bytearray(length)
        offset = 0
        while offset < length:
            addr = gpa + offset
            chunk = min(PAGE - addr % PAGE, length - offset)
            page = self.pages.get(addr // PAGE)
            if page is not None:
                out[offset : offset + chunk] = page[addr % PAGE : addr % PAGE + chunk]
            offset += chunk
        return memoryview(out)


def build_bzimage_bytes(
    *,
    setup_sects: int = 4,
    version: int = 0x020F,
    xloadflags: int = XLF_KERNEL_64 | XLF_CAN_BE_LOADED_ABOVE_4G,
    init_size: int = 0x800000,
    pref_address: int = 0x1000000,
    initrd_addr_max: int = 0x7FFFFFFF,
    cmdline_size: int = 2047,
    relocatable: bool = True,
    payload: bytes = PAYLOAD_MARKER + bytes(4096),
    boot_flag: int = BOOT_FLAG_MAGIC,
    header_magic: int = HEADER_MAGIC,
) -> bytes:
    """A minimal bzImage: boot sector + setup sectors carrying a setup header, then the payload."""
    setup = bytearray((setup_sects + 1) * 512)
    hdr = SetupHeader(
        setup_sects=setup_sects,
        syssize=(len(payload) + 15) // 16,
        boot_flag=boot_flag,
        jump=0xEB | ((SETUP_HEADER_END - 0x202) << 8),
        header=header_magic,
        version=version,
        loadflags=LOADED_HIGH,
        initrd_addr_max=initrd_addr_max,
        kernel_alignment=0x200000,
        relocatable_kernel=int(relocatable),
        xloadflags=xloadflags,
        cmdline_size=cmdline_size,
        pref_address=pref_address,
        init_size=init_size,
    )
    setup[SETUP_HEADER_OFFSET : SETUP_HEADER_OFFSET + ctypes.sizeof(hdr)] = bytes(hdr)
    return bytes(setup) + payload


@pytest.fixture
def make_bzimage(tmp_path: Path) -> Callable[..., Path]:
    """Write a synthetic bzImage (keyword arguments as build_bzimage_bytes) and return its path."""
    counter = iter(range(1000))

    def make(**fields: object) -> Path:
        path = tmp_path / f"vmlinuz-{next(counter)}"
        path.write_bytes(build_bzimage_bytes(**fields))  # type: ignore[arg-type]
        return path

    return make


@pytest.fixture
def bzimage_bytes() -> Callable[..., bytes]:
    """The builder itself, for tests that need to corrupt the bytes."""
    return build_bzimage_bytes


@pytest.fixture
def fake_ram_factory() -> Callable[[list[tuple[int, int]]], FakeRam]:
    return FakeRam
