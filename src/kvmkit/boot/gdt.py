"""The boot GDT: descriptors encoded from :class:`Segment` data.

Slots follow the Linux boot protocol's selector expectations: __BOOT_CS = 0x10, __BOOT_DS = 0x18;
slot 1 is left null, and the 64-bit TSS (a 16-byte system descriptor) sits at 0x20.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

from kvmkit.boot.cpu_state import (
    SEG_TYPE_CODE_XR_ACCESSED,
    SEG_TYPE_DATA_RW_ACCESSED,
    SEG_TYPE_TSS64_BUSY,
    Segment,
)
from kvmkit.boot.layout import TSS_ADDR, TSS_SIZE

BOOT_CS = 0x10
BOOT_DS = 0x18
BOOT_TSS = 0x20
GDT_SLOT_COUNT = 6
"""null, null, code, data, and the two slots of the 64-bit TSS descriptor."""

MAX_LIMIT = 0xFFFFF


class SegmentDescriptor(ctypes.LittleEndianStructure):
    """An 8-byte code/data descriptor, or the low half of a 64-bit system descriptor."""

    _pack_ = 1
    _fields_ = [
        ("limit_low", ctypes.c_uint64, 16),
        ("base_low", ctypes.c_uint64, 24),
        ("type", ctypes.c_uint64, 4),
        ("s", ctypes.c_uint64, 1),
        ("dpl", ctypes.c_uint64, 2),
        ("present", ctypes.c_uint64, 1),
        ("limit_high", ctypes.c_uint64, 4),
        ("avl", ctypes.c_uint64, 1),
        ("l", ctypes.c_uint64, 1),
        ("db", ctypes.c_uint64, 1),
        ("g", ctypes.c_uint64, 1),
        ("base_high", ctypes.c_uint64, 8),
    ]


class SystemDescriptorUpper(ctypes.LittleEndianStructure):
    """The high 8 bytes of a 16-byte long-mode system descriptor (TSS, LDT)."""

    _pack_ = 1
    _fields_ = [("base_upper", ctypes.c_uint32), ("reserved", ctypes.c_uint32)]


CODE64_SEGMENT = Segment(
    base=0, limit=MAX_LIMIT, selector=BOOT_CS, type=SEG_TYPE_CODE_XR_ACCESSED, l=True, g=True
)
DATA_SEGMENT = Segment(
    base=0, limit=MAX_LIMIT, selector=BOOT_DS, type=SEG_TYPE_DATA_RW_ACCESSED, db=True, g=True
)
TSS_SEGMENT = Segment(base=TSS_ADDR, limit=TSS_SIZE - 1, selector=BOOT_TSS, type=SEG_TYPE_TSS64_BUSY, s=False)


def encode_descriptor(segment: Segment) -> bytes:
    """Encode ``segment`` as a GDT descriptor: 8 bytes for code/data, 16 for a system segment."""
    if not 0 <= segment.limit <= MAX_LIMIT:
        raise ValueError(f"segment limit 0x{segment.limit:x} does not fit 20 bits")
    low = SegmentDescriptor(
        limit_low=segment.limit & 0xFFFF,
        base_low=segment.base & 0xFFFFFF,
        type=segment.type,
        s=int(segment.s),
        dpl=segment.dpl,
        present=int(segment.present),
        limit_high=segment.limit >> 16,
        avl=int(segment.avl),
        l=int(segment.l),
        db=int(segment.db),
        g=int(segment.g),
        base_high=(segment.base >> 24) & 0xFF,
    )
    if segment.s:
        if segment.base >> 32:
            raise ValueError(f"code/data segment base 0x{segment.base:x} does not fit 32 bits")
        return bytes(low)
    return bytes(low) + bytes(SystemDescriptorUpper(base_upper=segment.base >> 32))


@dataclass(frozen=True)
class BootGdt:
    """The boot GDT image and the segments its selectors refer to."""

    code: Segment = CODE64_SEGMENT
    data: Segment = DATA_SEGMENT
    tss: Segment = TSS_SEGMENT

    def to_bytes(self) -> bytes:
        table = bytearray(GDT_SLOT_COUNT * 8)
        for segment in (self.code, self.data, self.tss):
            encoded = encode_descriptor(segment)
            table[segment.selector : segment.selector + len(encoded)] = encoded
        return bytes(table)

    @property
    def limit(self) -> int:
        """The GDTR limit: table size minus one."""
        return GDT_SLOT_COUNT * 8 - 1
