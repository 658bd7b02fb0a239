"""The 640K-1M legacy area (VGA window and BIOS ROMs on a real PC), as zeroed read-only memory.

Linux scans this range byte by byte at boot (for SMBIOS, $PIR, the PCI BIOS, option ROMs). Left as MMIO, every
one of those reads would be a VM exit; mapped as a read-only slot it reads as zeroes at full speed, and a guest
write still exits to the (empty) MMIO bus. It is not RAM: the e820 map leaves it out.
"""

from __future__ import annotations

import ctypes
import mmap

from kvmkit.accel.kvm.vm import KvmVm
from kvmkit.memory.guest_memory import GuestMemory
from kvmkit.memory.layout import HIGH_RAM_START, LOW_RAM_END


def map_legacy_rom_area(vm: KvmVm, memory: GuestMemory, slot: int) -> mmap.mmap:
    """Map the memfd's (otherwise unused) bytes at 640K-1M read-only into the guest; returns the mapping."""
    size = HIGH_RAM_START - LOW_RAM_END
    area = mmap.mmap(memory.fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=LOW_RAM_END)
    anchor = ctypes.c_char.from_buffer(area)
    address = ctypes.addressof(anchor)
    del anchor
    vm.set_user_memory_region(slot, LOW_RAM_END, size, address, readonly=True)
    return area
