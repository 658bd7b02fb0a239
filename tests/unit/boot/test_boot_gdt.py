import struct

import pytest

from kvmkit.boot.cpu_state import Segment
from kvmkit.boot.gdt import (
    BOOT_CS,
    BOOT_DS,
    BOOT_TSS,
    CODE64_SEGMENT,
    DATA_SEGMENT,
    BootGdt,
    encode_descriptor,
)


def _qword(data: bytes, offset: int = 0) -> int:
    return struct.unpack_from("<Q", data, offset)[0]


def test_64bit_code_segment_encodes_to_known_value():
    assert _qword(encode_descriptor(CODE64_SEGMENT)) == 0x00AF9B000000FFFF


def test_flat_data_segment_encodes_to_known_value():
    assert _qword(encode_descriptor(DATA_SEGMENT)) == 0x00CF93000000FFFF


def test_tss_descriptor_is_sixteen_bytes_with_upper_base():
    tss = Segment(base=0x12_3456_7890, limit=0x67, selector=BOOT_TSS, type=0xB, s=False)
    encoded = encode_descriptor(tss)
    assert len(encoded) == 16
    assert _qword(encoded) == 0x34008B5678900067
    assert _qword(encoded, 8) == 0x12


def test_boot_gdt_places_descriptors_at_linux_boot_selectors():
    table = BootGdt().to_bytes()
    assert (BOOT_CS, BOOT_DS) == (0x10, 0x18)
    assert _qword(table, 0) == 0 and _qword(table, 8) == 0
    assert _qword(table, BOOT_CS) == 0x00AF9B000000FFFF
    assert _qword(table, BOOT_DS) == 0x00CF93000000FFFF
    assert (_qword(table, BOOT_TSS) >> 40) & 0xFF == 0x8B  # present, busy 64-bit TSS


def test_gdt_limit_covers_the_table():
    gdt = BootGdt()
    assert gdt.limit == len(gdt.to_bytes()) - 1


def test_granular_limit_expands_to_4g():
    assert CODE64_SEGMENT.effective_limit == 0xFFFFFFFF


def test_byte_granular_limit_is_unchanged():
    assert Segment(base=0, limit=0x67, selector=0, type=0xB, s=False).effective_limit == 0x67


def test_limit_wider_than_20_bits_is_rejected():
    with pytest.raises(ValueError, match="20 bits"):
        encode_descriptor(Segment(base=0, limit=0x100000, selector=0x10, type=0xB))
