"""Guest RAM: one memfd, mapped shared once per RAM range, with zero-copy views."""

from __future__ import annotations

import ctypes
import logging
import mmap
import os

from kvmkit.accel.base import AcceleratedVm
from kvmkit.errors import GuestError, HostError
from kvmkit.memory.layout import RamLayout, RamRange, pc_ram_layout

log = logging.getLogger(__name__)


class RamRegion:
    """One mapped RAM range: guest address, backing offset, the mapping and its host address."""

    def __init__(self, layout_range: RamRange, fd: int) -> None:
        self.gpa = layout_range.gpa
        self.size = layout_range.size
        self.end = layout_range.end
        self.memfd_offset = layout_range.memfd_offset
        self.mmap = mmap.mmap(
            fd, self.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=self.memfd_offset
        )
        anchor = ctypes.c_char.from_buffer(self.mmap)
        self.host_address = ctypes.addressof(anchor)
        del anchor
        self.view = memoryview(self.mmap)

    def contains(self, gpa: int, length: int) -> bool:
        return self.gpa <= gpa and gpa + length <= self.end

    def close(self) -> None:
        self.view.release()
        try:
            self.mmap.close()
        except BufferError:
            log.debug("guest RAM at %#x still has views exported; unmapped when they go", self.gpa)


class GuestMemory:
    """All guest RAM, backed by one memfd (shareable with other processes and migration)."""

    def __init__(self, size: int, layout: RamLayout | None = None) -> None:
        self.layout = layout if layout is not None else pc_ram_layout(size)
        if self.layout.ram_size != size:
            raise HostError(f"guest memory: layout is for {self.layout.ram_size:#x} bytes, not {size:#x}")
        self.size = size
        self.fd = os.memfd_create("kvmkit-guest-ram", os.MFD_CLOEXEC)
        try:
            os.ftruncate(self.fd, self.layout.backing_size)
            self.regions: tuple[RamRegion, ...] = tuple(RamRegion(r, self.fd) for r in self.layout.ranges)
        except OSError as error:
            os.close(self.fd)
            raise HostError(f"guest memory: cannot allocate {size:#x} bytes: {error.strerror}") from error
        self._last_hit = self.regions[0]

    def region_at(self, gpa: int) -> RamRegion | None:
        """The RAM region containing `gpa`, or None for a hole or MMIO."""
        last = self._last_hit
        if last.gpa <= gpa < last.end:
            return last
        for region in self.regions:
            if region.gpa <= gpa < region.end:
                self._last_hit = region
                return region
        return None

    def view(self, gpa: int, length: int) -> memoryview:
        """A zero-copy view of `length` bytes at `gpa`; GuestError unless inside one RAM region."""
        region = self._last_hit
        if not (region.gpa <= gpa and gpa + length <= region.end and length >= 0):
            region = self._find(gpa, length)
        offset = gpa - region.gpa
        return region.view[offset : offset + length]

    def _find(self, gpa: int, length: int) -> RamRegion:
        if length >= 0:
            for region in self.regions:
                if region.gpa <= gpa and gpa + length <= region.end:
                    self._last_hit = region
                    return region
        raise GuestError(f"guest memory: {length:#x} bytes at {gpa:#x} are not inside one RAM region")

    def map_into(self, vm: AcceleratedVm, first_slot: int = 0) -> int:
        """Register every region as a KVM memory slot from `first_slot`; returns the next free slot."""
        for slot, region in enumerate(self.regions, start=first_slot):
            vm.set_user_memory_region(slot, region.gpa, region.size, region.host_address)
        return first_slot + len(self.regions)

    def close(self) -> None:
        """Unmap every region and close the memfd."""
        if self.fd < 0:
            return
        for region in self.regions:
            region.close()
        os.close(self.fd)
        self.fd = -1
