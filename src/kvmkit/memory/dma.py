"""The DMA API: the one way devices reach guest memory.

Addresses are guest-bus addresses; an optional IOMMU translates them to guest-physical first
(identity when absent). Every access is bounds-checked and raises GuestError naming the address;
multi-byte accessors are explicitly little-endian.
"""

from __future__ import annotations

from typing import Protocol

from kvmkit.errors import GuestError
from kvmkit.memory.guest_memory import GuestMemory

ADDRESS_LIMIT = 1 << 64


class Iommu(Protocol):
    """Translates a device DMA range to a guest-physical address (GuestError if not mapped)."""

    def translate(self, addr: int, length: int, write: bool) -> int: ...


class DmaSpace:
    """Zero-copy, bounds-checked access to guest RAM for devices."""

    def __init__(self, memory: GuestMemory, iommu: Iommu | None = None) -> None:
        self.memory = memory
        self.iommu = iommu

    def _physical(self, addr: int, length: int, write: bool) -> int:
        if addr < 0 or length < 0 or addr + length > ADDRESS_LIMIT:
            raise GuestError(f"DMA: {length:#x} bytes at {addr:#x} is not a valid bus range")
        if self.iommu is None:
            return addr
        return self.iommu.translate(addr, length, write)

    def view(self, addr: int, length: int, write: bool = True) -> memoryview:
        """A writable zero-copy view of one contiguous RAM range (GuestError if not in one region)."""
        if self.iommu is None:
            return self.memory.view(addr, length)
        return self.memory.view(self._physical(addr, length, write), length)

    def views(self, addr: int, length: int, write: bool = True) -> list[memoryview]:
        """Views covering [addr, addr+length), split where RAM regions end (scatter-gather)."""
        gpa = self._physical(addr, length, write)
        pieces: list[memoryview] = []
        end = gpa + length
        while gpa < end:
            region = self.memory.region_at(gpa)
            if region is None:
                raise GuestError(f"DMA: {length:#x} bytes at {addr:#x} reach {gpa:#x}, which is not RAM")
            chunk = min(end, region.end) - gpa
            pieces.append(region.view[gpa - region.gpa : gpa - region.gpa + chunk])
            gpa += chunk
        return pieces

    def read(self, addr: int, length: int) -> bytes:
        """Copy `length` bytes out of guest memory."""
        if self.iommu is None:
            return bytes(self.memory.view(addr, length))
        return b"".join(self.views(addr, length, write=False))

    def read_into(self, addr: int, buf: bytearray | memoryview) -> None:
        """Fill `buf` from guest memory at `addr`."""
        target = memoryview(buf).cast("B")
        offset = 0
        for piece in self.views(addr, len(target), write=False):
            target[offset : offset + len(piece)] = piece
            offset += len(piece)

    def write(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        """Copy `data` into guest memory at `addr`."""
        source = memoryview(data).cast("B")
        offset = 0
        for piece in self.views(addr, len(source), write=True):
            piece[:] = source[offset : offset + len(piece)]
            offset += len(piece)

    # --- little-endian scalar accessors ---------------------------------------------------

    def ld8(self, addr: int) -> int:
        return self.view(addr, 1, write=False)[0]

    def ld16_le(self, addr: int) -> int:
        return int.from_bytes(self.view(addr, 2, write=False), "little")

    def ld32_le(self, addr: int) -> int:
        return int.from_bytes(self.view(addr, 4, write=False), "little")

    def ld64_le(self, addr: int) -> int:
        return int.from_bytes(self.view(addr, 8, write=False), "little")

    def st8(self, addr: int, value: int) -> None:
        self.view(addr, 1)[0] = value & 0xFF

    def st16_le(self, addr: int, value: int) -> None:
        self.view(addr, 2)[:] = (value & 0xFFFF).to_bytes(2, "little")

    def st32_le(self, addr: int, value: int) -> None:
        self.view(addr, 4)[:] = (value & 0xFFFF_FFFF).to_bytes(4, "little")

    def st64_le(self, addr: int, value: int) -> None:
        self.view(addr, 8)[:] = (value & 0xFFFF_FFFF_FFFF_FFFF).to_bytes(8, "little")
