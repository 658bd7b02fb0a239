"""The DMA API: bounds, scatter-gather splits, little-endian accessors, zero copy and the IOMMU hook."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kvmkit.errors import GuestError
from kvmkit.memory.dma import DmaSpace
from kvmkit.memory.guest_memory import GuestMemory
from kvmkit.memory.layout import RamLayout, RamRange

MiB = 1 << 20


@pytest.fixture
def dma() -> Iterator[DmaSpace]:
    memory = GuestMemory(4 * MiB)
    yield DmaSpace(memory)
    memory.close()


def test_a_write_through_a_view_is_seen_by_a_read(dma: DmaSpace) -> None:
    dma.view(0x2000, 4)[:] = b"\x01\x02\x03\x04"
    assert dma.read(0x2000, 4) == b"\x01\x02\x03\x04"


def test_a_write_is_seen_through_an_earlier_view(dma: DmaSpace) -> None:
    view = dma.view(0x3000, 2)
    dma.write(0x3000, b"hi")
    assert bytes(view) == b"hi"


def test_scalar_stores_are_little_endian(dma: DmaSpace) -> None:
    dma.st32_le(0x100, 0x11223344)
    dma.st64_le(0x108, 0x0102030405060708)
    dma.st16_le(0x110, 0xBEEF)
    assert dma.read(0x100, 4) == bytes([0x44, 0x33, 0x22, 0x11])
    assert dma.read(0x108, 8) == bytes([8, 7, 6, 5, 4, 3, 2, 1])
    assert dma.read(0x110, 2) == bytes([0xEF, 0xBE])


def test_scalar_loads_are_little_endian(dma: DmaSpace) -> None:
    dma.write(0x200, bytes(range(1, 9)))
    assert dma.ld8(0x200) == 1
    assert dma.ld16_le(0x200) == 0x0201
    assert dma.ld32_le(0x200) == 0x04030201
    assert dma.ld64_le(0x200) == 0x0807060504030201


def test_stores_truncate_values_to_their_width(dma: DmaSpace) -> None:
    dma.st8(0x300, 0x1FF)
    assert dma.ld8(0x300) == 0xFF
    assert dma.ld16_le(0x301) == 0


def test_read_into_fills_a_buffer(dma: DmaSpace) -> None:
    dma.write(MiB, b"abcdef")
    buffer = bytearray(6)
    dma.read_into(MiB, buffer)
    assert buffer == b"abcdef"


def test_last_bytes_of_conventional_memory_are_accessible(dma: DmaSpace) -> None:
    dma.st32_le(0xA0000 - 4, 0xCAFEF00D)
    assert dma.ld32_le(0xA0000 - 4) == 0xCAFEF00D


def test_load_straddling_640k_is_a_guest_error(dma: DmaSpace) -> None:
    with pytest.raises(GuestError, match="0x9fffe"):
        dma.ld32_le(0x9FFFE)


def test_access_inside_the_legacy_hole_is_a_guest_error(dma: DmaSpace) -> None:
    with pytest.raises(GuestError):
        dma.st8(0xC0000, 1)
    with pytest.raises(GuestError, match="not RAM"):
        dma.write(0xB0000, b"x")


def test_read_past_the_end_of_ram_is_a_guest_error(dma: DmaSpace) -> None:
    with pytest.raises(GuestError):
        dma.read(4 * MiB - 4, 8)


def test_huge_or_negative_bus_addresses_are_guest_errors(dma: DmaSpace) -> None:
    with pytest.raises(GuestError):
        dma.views((1 << 64) - 2, 4)
    with pytest.raises(GuestError):
        dma.ld64_le(-8)


def test_views_split_at_adjacent_region_boundaries() -> None:
    layout = RamLayout(0x4000, (RamRange(0, 0x2000, 0), RamRange(0x2000, 0x2000, 0x2000)))
    memory = GuestMemory(0x4000, layout)
    try:
        dma = DmaSpace(memory)
        dma.write(0x1FFE, b"ABCD")
        assert [bytes(v) for v in dma.views(0x1FFE, 4)] == [b"AB", b"CD"]
        with pytest.raises(GuestError):
            dma.view(0x1FFE, 4)
    finally:
        memory.close()


class OffsetIommu:
    """Maps bus address X to guest-physical X + 1 MiB; refuses writes below 0x100."""

    def translate(self, addr: int, length: int, write: bool) -> int:
        if write and addr < 0x100:
            raise GuestError(f"iommu: write to {addr:#x} not permitted")
        return addr + MiB


def test_the_iommu_translates_before_ram_is_reached(dma: DmaSpace) -> None:
    dma.write(MiB + 0x200, b"zz")
    translated = DmaSpace(dma.memory, iommu=OffsetIommu())
    assert translated.read(0x200, 2) == b"zz"
    translated.st16_le(0x400, 0x4142)
    assert dma.read(MiB + 0x400, 2) == b"BA"


def test_the_iommu_can_refuse_an_access(dma: DmaSpace) -> None:
    translated = DmaSpace(dma.memory, iommu=OffsetIommu())
    with pytest.raises(GuestError, match="not permitted"):
        translated.st8(0x10, 1)
