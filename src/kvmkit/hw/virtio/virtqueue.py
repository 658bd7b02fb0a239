"""The split virtqueue (virtio 1.x, 2.7): descriptor table, available ring and used ring in guest memory.

Everything in the rings is guest-controlled: every index, length and address is checked and a
malformed ring raises `VirtqueueError`, which the transport turns into DEVICE_NEEDS_RESET.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field
from typing import Any, Protocol

from kvmkit.errors import GuestError

VIRTQ_DESC_F_NEXT = 0x1
VIRTQ_DESC_F_WRITE = 0x2
VIRTQ_DESC_F_INDIRECT = 0x4
VIRTQ_AVAIL_F_NO_INTERRUPT = 0x1
VIRTQ_USED_F_NO_NOTIFY = 0x1
MAX_QUEUE_SIZE = 32768
MAX_INDIRECT_DESCRIPTORS = 1024


class VirtqueueError(GuestError):
    """The driver put something malformed in a virtqueue."""


class DmaLike(Protocol):
    """The part of kvmkit.memory.dma.DmaSpace the virtqueue uses."""

    def views(self, addr: int, length: int) -> list[memoryview]: ...

    def read(self, addr: int, length: int) -> bytes: ...

    def ld16_le(self, addr: int) -> int: ...

    def st16_le(self, addr: int, value: int) -> None: ...

    def write(self, addr: int, data: bytes) -> None: ...


class VirtqDesc(ctypes.LittleEndianStructure):
    """One descriptor of the descriptor table (16 bytes, 16-byte aligned table)."""

    _pack_ = 1
    _fields_ = [
        ("addr", ctypes.c_uint64),
        ("len", ctypes.c_uint32),
        ("flags", ctypes.c_uint16),
        ("next", ctypes.c_uint16),
    ]


class VirtqRingHeader(ctypes.LittleEndianStructure):
    """flags/idx header shared by the available (driver) and used (device) rings."""

    _pack_ = 1
    _fields_ = [("flags", ctypes.c_uint16), ("idx", ctypes.c_uint16)]


class VirtqUsedElem(ctypes.LittleEndianStructure):
    """One used-ring entry: head descriptor index and bytes written into the chain."""

    _pack_ = 1
    _fields_ = [("id", ctypes.c_uint32), ("len", ctypes.c_uint32)]


DESC_SIZE = ctypes.sizeof(VirtqDesc)
HEADER_SIZE = ctypes.sizeof(VirtqRingHeader)
IDX_OFFSET = VirtqRingHeader.idx.offset
FLAGS_OFFSET = VirtqRingHeader.flags.offset
AVAIL_ENTRY_SIZE = 2
USED_ELEM_SIZE = ctypes.sizeof(VirtqUsedElem)


@dataclass(frozen=True)
class SplitRingLayout:
    """Byte sizes and offsets of the three areas for a queue of `size` entries."""

    size: int

    @property
    def desc_table_bytes(self) -> int:
        return DESC_SIZE * self.size

    @property
    def avail_ring_offset(self) -> int:
        return HEADER_SIZE

    @property
    def used_event_offset(self) -> int:
        return HEADER_SIZE + AVAIL_ENTRY_SIZE * self.size

    @property
    def avail_bytes(self) -> int:
        return self.used_event_offset + 2

    @property
    def used_ring_offset(self) -> int:
        return HEADER_SIZE

    @property
    def avail_event_offset(self) -> int:
        return HEADER_SIZE + USED_ELEM_SIZE * self.size

    @property
    def used_bytes(self) -> int:
        return self.avail_event_offset + 2


@dataclass
class VirtqueueElement:
    """A popped descriptor chain: guest buffers as zero-copy views, device-readable then device-writable."""

    head: int
    out_bufs: list[memoryview] = field(default_factory=list)
    in_bufs: list[memoryview] = field(default_factory=list)

    @property
    def out_len(self) -> int:
        return sum(b.nbytes for b in self.out_bufs)

    @property
    def in_len(self) -> int:
        return sum(b.nbytes for b in self.in_bufs)


def split_buffers(bufs: list[memoryview], count: int) -> tuple[list[memoryview], list[memoryview]]:
    """Split a scatter/gather list after `count` bytes (no copy)."""
    head: list[memoryview] = []
    tail: list[memoryview] = []
    remaining = count
    for buf in bufs:
        if remaining >= buf.nbytes:
            head.append(buf)
            remaining -= buf.nbytes
        elif remaining > 0:
            head.append(buf[:remaining])
            tail.append(buf[remaining:])
            remaining = 0
        else:
            tail.append(buf)
    return head, tail


class Virtqueue:
    """Device side of one split virtqueue; the transport fills in size, addresses and `ready`."""

    def __init__(self, index: int, max_size: int, dma: DmaLike) -> None:
        if not 1 <= max_size <= MAX_QUEUE_SIZE:
            raise GuestError(f"virtqueue {index}: max size {max_size} is out of range")
        self.index = index
        self.max_size = max_size
        self.dma = dma
        self.event_idx = False
        self.indirect = False
        self.reset()

    def reset(self) -> None:
        self.size = self.max_size
        self.desc_addr = 0
        self.driver_addr = 0
        self.device_addr = 0
        self.ready = False
        self.msix_vector = 0xFFFF
        self.last_avail_idx = 0
        self.used_idx = 0
        self._published_used_idx = 0
        self._signalled_used = 0
        self._signalled_valid = False
        self.in_flight = 0

    @property
    def layout(self) -> SplitRingLayout:
        return SplitRingLayout(self.size)

    def validate(self) -> None:
        """Check the rings the driver configured lie in guest RAM and are aligned (called at enable)."""
        layout = self.layout
        areas = (
            ("descriptor table", self.desc_addr, layout.desc_table_bytes, 16),
            ("available ring", self.driver_addr, layout.avail_bytes, 2),
            ("used ring", self.device_addr, layout.used_bytes, 4),
        )
        for name, addr, length, align in areas:
            if addr % align:
                raise VirtqueueError(
                    f"virtqueue {self.index}: {name} at {addr:#x} is not {align}-byte aligned"
                )
            self._views(addr, length, name)

    def _views(self, addr: int, length: int, what: str) -> list[memoryview]:
        try:
            return self.dma.views(addr, length)
        except GuestError as err:
            raise VirtqueueError(
                f"virtqueue {self.index}: {what} [{addr:#x}, +{length:#x}) is outside guest RAM"
            ) from err

    def _ld16(self, addr: int, what: str) -> int:
        try:
            return self.dma.ld16_le(addr)
        except GuestError as err:
            raise VirtqueueError(f"virtqueue {self.index}: cannot read {what} at {addr:#x}") from err

    def _st16(self, addr: int, value: int, what: str) -> None:
        try:
            self.dma.st16_le(addr, value & 0xFFFF)
        except GuestError as err:
            raise VirtqueueError(f"virtqueue {self.index}: cannot write {what} at {addr:#x}") from err

    def _read_desc(self, table: int, index: int) -> VirtqDesc:
        addr = table + DESC_SIZE * index
        try:
            return VirtqDesc.from_buffer_copy(self.dma.read(addr, DESC_SIZE))
        except GuestError as err:
            raise VirtqueueError(
                f"virtqueue {self.index}: descriptor {index} at {addr:#x} unreadable"
            ) from err

    # driver -> device ----------------------------------------------------------------------------

    def avail_idx(self) -> int:
        return self._ld16(self.driver_addr + IDX_OFFSET, "avail idx")

    def pending(self) -> int:
        """Chains the driver made available that we have not popped yet (validated)."""
        count = (self.avail_idx() - self.last_avail_idx) & 0xFFFF
        if count > self.size:
            raise VirtqueueError(
                f"virtqueue {self.index}: avail idx moved {count} entries ahead, more than size {self.size}"
            )
        return count

    def pop(self) -> VirtqueueElement | None:
        """The next available chain, or None when the ring is empty."""
        if not self.ready:
            return None
        if self.pending() == 0:
            if self.event_idx:
                self._publish_avail_event()
            return None
        slot = self.last_avail_idx % self.size
        head = self._ld16(self.driver_addr + HEADER_SIZE + AVAIL_ENTRY_SIZE * slot, "avail ring entry")
        if head >= self.size:
            raise VirtqueueError(f"virtqueue {self.index}: available head {head} >= queue size {self.size}")
        element = self._walk_chain(head)
        self.last_avail_idx = (self.last_avail_idx + 1) & 0xFFFF
        self.in_flight += 1
        if self.event_idx:
            self._publish_avail_event()
        return element

    def _publish_avail_event(self) -> None:
        self._st16(self.device_addr + self.layout.avail_event_offset, self.last_avail_idx, "avail_event")

    def _walk_chain(self, head: int) -> VirtqueueElement:
        element = VirtqueueElement(head)
        table, table_size = self.desc_addr, self.size
        index, visited, indirect = head, 0, False
        seen_writable = False
        while True:
            visited += 1
            if visited > table_size:
                raise VirtqueueError(
                    f"virtqueue {self.index}: chain at head {head} is longer than {table_size} "
                    "descriptors (a loop?)"
                )
            desc = self._read_desc(table, index)
            if desc.flags & VIRTQ_DESC_F_INDIRECT:
                table, table_size = self._enter_indirect(desc, indirect, head)
                index, visited, indirect = 0, 0, True
                continue
            if desc.flags & VIRTQ_DESC_F_WRITE:
                seen_writable = True
                element.in_bufs.extend(self._views(desc.addr, desc.len, f"buffer of descriptor {index}"))
            else:
                if seen_writable:
                    raise VirtqueueError(
                        f"virtqueue {self.index}: read-only descriptor {index} after a write-only one"
                    )
                element.out_bufs.extend(self._views(desc.addr, desc.len, f"buffer of descriptor {index}"))
            if not desc.flags & VIRTQ_DESC_F_NEXT:
                return element
            if desc.next >= table_size:
                raise VirtqueueError(
                    f"virtqueue {self.index}: descriptor {index} links to {desc.next}, "
                    f"beyond table size {table_size}"
                )
            index = desc.next

    def _enter_indirect(self, desc: VirtqDesc, already_indirect: bool, head: int) -> tuple[int, int]:
        where = f"virtqueue {self.index}: chain at head {head}"
        if not self.indirect:
            raise VirtqueueError(f"{where}: indirect descriptor but VIRTIO_F_INDIRECT_DESC not negotiated")
        if already_indirect:
            raise VirtqueueError(f"{where}: indirect descriptor inside an indirect table")
        if desc.flags & VIRTQ_DESC_F_NEXT:
            raise VirtqueueError(f"{where}: indirect descriptor with NEXT set")
        if desc.len == 0 or desc.len % DESC_SIZE:
            raise VirtqueueError(f"{where}: indirect table length {desc.len} is not a multiple of 16")
        count = desc.len // DESC_SIZE
        if count > MAX_INDIRECT_DESCRIPTORS:
            raise VirtqueueError(
                f"{where}: indirect table of {count} entries exceeds {MAX_INDIRECT_DESCRIPTORS}"
            )
        self._views(desc.addr, desc.len, "indirect table")
        return desc.addr, count

    # device -> driver ----------------------------------------------------------------------------

    def fill(self, element: VirtqueueElement, written_len: int) -> None:
        """Write a used entry without publishing it (batch several, then `flush`)."""
        slot = self.used_idx % self.size
        entry = VirtqUsedElem(element.head, written_len & 0xFFFFFFFF)
        addr = self.device_addr + HEADER_SIZE + USED_ELEM_SIZE * slot
        try:
            self.dma.write(addr, bytes(entry))
        except GuestError as err:
            raise VirtqueueError(f"virtqueue {self.index}: used ring entry at {addr:#x} unwritable") from err
        self.used_idx = (self.used_idx + 1) & 0xFFFF
        self.in_flight = max(0, self.in_flight - 1)

    def flush(self) -> None:
        """Publish every filled used entry to the driver (one idx update)."""
        if self._published_used_idx != self.used_idx:
            self._st16(self.device_addr + IDX_OFFSET, self.used_idx, "used idx")
            self._published_used_idx = self.used_idx

    def push(self, element: VirtqueueElement, written_len: int) -> None:
        """Return one chain to the driver with `written_len` bytes written into its in-buffers."""
        self.fill(element, written_len)
        self.flush()

    def notify_needed(self) -> bool:
        """Whether the driver wants an interrupt for what was published since the last one."""
        if not self.event_idx:
            flags = self._ld16(self.driver_addr + FLAGS_OFFSET, "avail flags")
            return not flags & VIRTQ_AVAIL_F_NO_INTERRUPT
        new, old, valid = self._published_used_idx, self._signalled_used, self._signalled_valid
        self._signalled_used, self._signalled_valid = new, True
        if not valid:
            return True
        used_event = self._ld16(self.driver_addr + self.layout.used_event_offset, "used_event")
        return ((new - used_event - 1) & 0xFFFF) < ((new - old) & 0xFFFF)

    def set_notification(self, enabled: bool) -> None:
        """Ask the driver (not) to kick us: VIRTQ_USED_F_NO_NOTIFY or, with EVENT_IDX, avail_event."""
        if self.event_idx:
            if enabled:
                self._publish_avail_event()
            return
        flags = 0 if enabled else VIRTQ_USED_F_NO_NOTIFY
        self._st16(self.device_addr + FLAGS_OFFSET, flags, "used flags")

    # migration -----------------------------------------------------------------------------------

    MIGRATABLE_FIELDS = (
        "size",
        "desc_addr",
        "driver_addr",
        "device_addr",
        "ready",
        "msix_vector",
        "last_avail_idx",
        "used_idx",
    )

    def migratable_state(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.MIGRATABLE_FIELDS}

    def load_state(self, state: dict[str, Any]) -> None:
        for name in self.MIGRATABLE_FIELDS:
            setattr(self, name, state[name])
        self._published_used_idx = self.used_idx
        self._signalled_valid = False
