"""Guest RAM: one mapping (anonymous with transparent huge pages, or a shareable memfd), with zero-copy views."""

from __future__ import annotations

import ctypes
import logging
import mmap
import os

from kvmkit.accel.base import AcceleratedVm
from kvmkit.errors import ConfigError, GuestError, HostError
from kvmkit.memory.layout import RAM_BACKENDS, RamLayout, RamRange, pc_ram_layout

log = logging.getLogger(__name__)

HUGE_PAGE_SIZE = 2 << 20


class RamRegion:
    """One RAM range of the backing mapping: guest address, backing offset, its view and host address."""

    def __init__(self, layout_range: RamRange, backing: memoryview, backing_address: int) -> None:
        self.gpa = layout_range.gpa
        self.size = layout_range.size
        self.end = layout_range.end
        self.memfd_offset = layout_range.memfd_offset
        self.view = backing[self.memfd_offset : self.memfd_offset + self.size]
        self.host_address = backing_address + self.memfd_offset

    def contains(self, gpa: int, length: int) -> bool:
        return self.gpa <= gpa and gpa + length <= self.end

    def close(self) -> None:
        self.view.release()


class GuestMemory:
    """All guest RAM in one mapping, laid out by `RamLayout` (backing offset = guest address below 4 GiB).

    backend "anonymous" (the default, as QEMU's): private anonymous memory aligned to 2 MiB and advised for
    transparent huge pages, so that KVM maps the guest with huge pages (far fewer EPT faults and TLB misses).
    backend "memfd": a memfd (`fd`), shareable with other processes; huge pages only as the host's shmem allows.
    """

    def __init__(self, size: int, layout: RamLayout | None = None, backend: str = "anonymous") -> None:
        self.layout = layout if layout is not None else pc_ram_layout(size)
        if self.layout.ram_size != size:
            raise HostError(f"guest memory: layout is for {self.layout.ram_size:#x} bytes, not {size:#x}")
        if backend not in RAM_BACKENDS:
            raise ConfigError(f"guest memory: unknown RAM backend {backend!r} (choose from {', '.join(RAM_BACKENDS)})")
        self.size = size
        self.backend = backend
        self.fd = -1
        backing_size = self.layout.backing_size
        try:
            if backend == "memfd":
                self.fd = os.memfd_create("kvmkit-guest-ram", os.MFD_CLOEXEC)
                os.ftruncate(self.fd, backing_size)
                self._mapping = mmap.mmap(self.fd, backing_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
                skip = 0
            else:
                self._mapping = mmap.mmap(-1, backing_size + HUGE_PAGE_SIZE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                                          mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as error:
            if self.fd >= 0:
                os.close(self.fd)
            raise HostError(f"guest memory: cannot allocate {size:#x} bytes: {error.strerror}") from error
        anchor = ctypes.c_char.from_buffer(self._mapping)
        mapping_address = ctypes.addressof(anchor)
        del anchor
        if backend == "anonymous":
            # start on a 2 MiB boundary, so every range's host address is congruent with its guest address
            skip = -mapping_address % HUGE_PAGE_SIZE
            self._advise_huge_pages()
        self._backing = memoryview(self._mapping)[skip : skip + backing_size]
        self._backing_address = mapping_address + skip
        self.regions: tuple[RamRegion, ...] = tuple(self.backing_region(r) for r in self.layout.ranges)
        self._last_hit = self.regions[0]
        self._closed = False

    def _advise_huge_pages(self) -> None:
        """MADV_HUGEPAGE. (Not MADV_DONTFORK, though QEMU sets it: both lab runs with it ended in a vCPU failure.)"""
        advice = getattr(mmap, "MADV_HUGEPAGE", None)
        if advice is None:
            return
        try:
            self._mapping.madvise(advice)
        except OSError as error:  # e.g. no transparent huge pages: small pages work, only slower
            log.info("guest memory: MADV_HUGEPAGE refused (%s)", error.strerror)

    def backing_region(self, layout_range: RamRange) -> RamRegion:
        """A region over `layout_range`'s bytes of the backing (also the otherwise unused 640K-1M)."""
        if layout_range.memfd_offset < 0 or layout_range.memfd_offset + layout_range.size > self._backing.nbytes:
            raise HostError(f"guest memory: {layout_range} is outside the RAM backing")
        return RamRegion(layout_range, self._backing, self._backing_address)

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
        """Release every region, unmap the backing and close the memfd (if any)."""
        if self._closed:
            return
        self._closed = True
        for region in self.regions:
            region.close()
        self._backing.release()
        try:
            self._mapping.close()
        except BufferError:
            log.debug("guest RAM still has views exported; unmapped when they go")
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
