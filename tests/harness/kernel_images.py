"""Synthetic kernel ELFs and bzImages carrying them, and a guest RAM whose views are real (for preadv)."""

from __future__ import annotations

import gzip
import lzma
import struct

from kvmkit.boot.elf import PF_R, PF_W, PF_X, build_elf_kernel

MIB = 1 << 20
TEXT_ADDR = 16 * MIB
TEXT = b"\x90" * 100 + b"KERNEL-TEXT"
DATA_ADDR = 18 * MIB
DATA = b"KERNEL-DATA" + bytes(50)
DATA_MEMSZ = 0x3000
"""The data segment's memory size: the rest beyond DATA is bss."""


def synthetic_vmlinux(entry: int = TEXT_ADDR) -> bytes:
    """A two-segment kernel ELF: text at 16 MiB (the entry), data plus bss at 18 MiB."""
    header, pieces = build_elf_kernel(entry, [(TEXT_ADDR, PF_R | PF_X, len(TEXT), TEXT),
                                              (DATA_ADDR, PF_R | PF_W, DATA_MEMSZ, DATA)])
    return header + b"".join(bytes(piece) for piece in pieces)


def compress(data: bytes, kind: str) -> bytes:
    """Compressed as the kernel build does it, including the appended 4-byte size."""
    if kind == "xz":
        body = lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32)
    elif kind == "gzip":
        body = gzip.compress(data)
    else:
        body = {"bzip2": b"BZh9", "lz4": b"\x02\x21\x4c\x18", "zstd": b"\x28\xb5\x2f\xfd"}[kind] + bytes(64)
    return body + struct.pack("<I", len(data))


def bzimage_with_payload(build_bzimage_bytes, payload: bytes, **fields) -> bytes:
    """A synthetic bzImage whose protected-mode part is a 0x100-byte stub followed by ``payload``."""
    image = bytearray(build_bzimage_bytes(payload=bytes(0x100) + payload, **fields))
    struct.pack_into("<II", image, 0x248, 0x100, len(payload))
    return bytes(image)


class ByteRam:
    """Guest RAM over (gpa, size) regions backed by bytearrays; views are writable and zero-copy."""

    def __init__(self, regions: list[tuple[int, int]]) -> None:
        self.regions = [(gpa, bytearray(size)) for gpa, size in regions]

    def view(self, gpa: int, length: int) -> memoryview:
        for start, buffer in self.regions:
            if start <= gpa and gpa + length <= start + len(buffer):
                return memoryview(buffer)[gpa - start : gpa - start + length]
        raise AssertionError(f"access 0x{gpa:x}+0x{length:x} outside guest RAM")

    def write(self, gpa: int, data: bytes) -> None:
        self.view(gpa, len(data))[:] = data
