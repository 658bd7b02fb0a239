"""The 640K-1M legacy area (VGA window and BIOS ROMs on a real PC), as zeroed read-only memory.

Linux scans this range byte by byte at boot (for SMBIOS, $PIR, the PCI BIOS, option ROMs). Left as MMIO, every
one of those reads would be a VM exit; mapped as a read-only slot it reads as zeroes at full speed, and a guest
write still exits to the (empty) MMIO bus. It is not RAM: the e820 map leaves it out.
"""

from __future__ import annotations

from kvmkit.accel.kvm.vm import KvmVm
from kvmkit.memory.guest_memory import GuestMemory, RamRegion
from kvmkit.memory.layout import HIGH_RAM_START, LOW_RAM_END, RamRange


def map_legacy_rom_area(vm: KvmVm, memory: GuestMemory, slot: int) -> RamRegion:
    """Map the RAM backing's (otherwise unused) bytes at 640K-1M read-only into the guest; returns the region."""
    area = memory.backing_region(RamRange(LOW_RAM_END, HIGH_RAM_START - LOW_RAM_END, LOW_RAM_END))
    vm.set_user_memory_region(slot, area.gpa, area.size, area.host_address, readonly=True)
    return area
