"""Coalesced PIO/MMIO: writes KVM buffers in a shared ring instead of exiting, replayed before the next exit.

Used for write-only registers whose effect is only observed through a later access that does exit, such as the
PCI configuration address port 0xCF8: the guest's write is queued, and the data-port access that follows (an exit)
first replays the queue. This halves the exits of every PCI configuration cycle.
"""

from __future__ import annotations

import ctypes
import mmap
import struct
from collections.abc import Callable

from kvmkit.accel.kvm.ioctls import _iow
from kvmkit.accel.kvm.vcpu import KvmVcpu
from kvmkit.accel.kvm.vm import KvmVm

u8, u32, u64 = ctypes.c_uint8, ctypes.c_uint32, ctypes.c_uint64
KVM_CAP_COALESCED_MMIO = 15
KVM_CAP_COALESCED_PIO = 162


class KvmCoalescedMmioZone(ctypes.LittleEndianStructure):
    """struct kvm_coalesced_mmio_zone."""

    _fields_ = [("addr", u64), ("size", u32), ("pio", u32)]


class KvmCoalescedMmio(ctypes.LittleEndianStructure):
    """struct kvm_coalesced_mmio: one queued write."""

    _fields_ = [("phys_addr", u64), ("len", u32), ("pio", u32), ("data", u8 * 8)]


RING_ENTRIES = (mmap.PAGESIZE - 8) // ctypes.sizeof(KvmCoalescedMmio)


class KvmCoalescedMmioRing(ctypes.LittleEndianStructure):
    """struct kvm_coalesced_mmio_ring: KVM produces at `last`, we consume from `first`."""

    _fields_ = [("first", u32), ("last", u32), ("entries", KvmCoalescedMmio * RING_ENTRIES)]


KVM_REGISTER_COALESCED_MMIO = _iow(0x67, KvmCoalescedMmioZone)

WriteHandler = Callable[[int, int, int], None]  # (address, size, value)

_INDICES = struct.Struct("<II")  # ring.first, ring.last
_ENTRY = struct.Struct("<QII8s")  # phys_addr, len, pio, data
_ENTRIES_OFFSET = KvmCoalescedMmioRing.entries.offset
_ENTRY_SIZE = ctypes.sizeof(KvmCoalescedMmio)


class CoalescedWrites:
    """The VM's coalesced-write ring (mapped through any vCPU) and the zones registered in it."""

    def __init__(self, vm: KvmVm, vcpu: KvmVcpu, page_offset: int) -> None:
        self.vm = vm
        self.page = vcpu.mapped_page(page_offset)
        self.ring = KvmCoalescedMmioRing.from_buffer(self.page)

    @classmethod
    def open(cls, vm: KvmVm, vcpu: KvmVcpu, kvm_check: Callable[[int], int]) -> CoalescedWrites | None:
        """The ring, or None when this KVM cannot coalesce port I/O."""
        page_offset = kvm_check(KVM_CAP_COALESCED_MMIO)
        if not page_offset or not kvm_check(KVM_CAP_COALESCED_PIO):
            return None
        return cls(vm, vcpu, page_offset)

    def add_pio_zone(self, port: int, size: int) -> None:
        zone = KvmCoalescedMmioZone(addr=port, size=size, pio=1)
        self.vm.ioctl(KVM_REGISTER_COALESCED_MMIO, zone, "KVM_REGISTER_COALESCED_MMIO")

    def pending(self) -> bool:
        first, last = _INDICES.unpack_from(self.page, 0)
        return first != last

    def replay(self, pio_write: WriteHandler, mmio_write: WriteHandler) -> None:
        """Dispatch every queued write in order (call with the BQL held, before handling any exit).

        The ring is read with struct on the shared page (no ctypes object per entry); `first` is advanced past
        each entry before it is dispatched, and indices out of range (KVM never writes them) stop the replay.
        """
        page = self.page
        first, last = _INDICES.unpack_from(page, 0)
        while first != last and first < RING_ENTRIES:
            address, length, pio, data = _ENTRY.unpack_from(page, _ENTRIES_OFFSET + first * _ENTRY_SIZE)
            size = min(length, 8)
            first = (first + 1) % RING_ENTRIES
            struct.pack_into("<I", page, 0, first)
            (pio_write if pio else mmio_write)(address, size, int.from_bytes(data[:size], "little"))
            last = _INDICES.unpack_from(page, 0)[1]
