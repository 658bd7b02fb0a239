"""The split virtqueue (virtio 1.x, 2.7): descriptor table, available ring and used ring in guest memory.

Everything in the rings is guest-controlled: every index, length and address is checked and a
malformed ring raises `VirtqueueError`, which the transport turns into DEVICE_NEEDS_RESET.
"""

from __future__ import annotations

import ctypes
import struct
import sys
import threading
from dataclasses import dataclass
from itertools import chain
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

    def view(self, addr: int, length: int) -> memoryview: ...

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

# Hot-path codecs: rings are parsed with struct on cached memoryviews, never through ctypes objects.
_U16 = struct.Struct("<H")
_DESC = struct.Struct("<QIHH")
_USED_ELEM = struct.Struct("<II")
_unpack_u16 = _U16.unpack_from
_unpack_desc = _DESC.unpack_from
_iter_desc = _DESC.iter_unpack
_pack_used = _USED_ELEM.pack_into  # only for used entries the driver cannot read yet (before the idx store)


_CHAIN_FLAGS = VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_INDIRECT  # a descriptor with neither is a whole chain
_LONE_FLAGS = _CHAIN_FLAGS | VIRTQ_DESC_F_WRITE


def _unpack_u16s(count: int, avail: memoryview, slot: int, size: int) -> tuple[int, ...]:
    """`count` available-ring entries from `slot` on, wrapping at `size`, in at most two unpacks."""
    first = min(count, size - slot)
    heads = struct.unpack_from(f"<{first}H", avail, HEADER_SIZE + AVAIL_ENTRY_SIZE * slot)
    if first < count:
        heads += struct.unpack_from(f"<{count - first}H", avail, HEADER_SIZE)
    return heads


def _store_u16(area: memoryview, offset: int, value: int) -> None:
    """Store a ring field the driver may read at any moment (used idx, avail_event, used flags) in one 2-byte write.

    Never struct.pack_into here: CPython's packer first zero-fills its target (a memset in s_pack_internal) and then
    writes the value, so a vCPU polling the used idx could read 0 in between. Linux then took `last_used != idx`
    for new entries, read a stale slot and stopped with "id N is not a head!" (or completed a live head twice).
    A native "H" item store is one memcpy of 2 bytes; native order is little-endian on the x86 hosts KVM runs on.
    """
    area[offset : offset + 2].cast("H")[0] = value


if sys.byteorder != "little":  # _store_u16's native store is the ring's little-endian layout only here
    raise ImportError("kvmkit's virtqueue needs a little-endian host")


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


class VirtqueueElement:
    """A popped descriptor chain: guest buffers as zero-copy views, device-readable then device-writable."""

    __slots__ = ("head", "in_bufs", "out_bufs")

    def __init__(
        self, head: int, out_bufs: list[memoryview] | None = None, in_bufs: list[memoryview] | None = None
    ) -> None:
        self.head = head
        self.out_bufs: list[memoryview] = [] if out_bufs is None else out_bufs
        self.in_bufs: list[memoryview] = [] if in_bufs is None else in_bufs

    def __repr__(self) -> str:
        return f"VirtqueueElement(head={self.head}, out={len(self.out_bufs)} bufs, in={len(self.in_bufs)} bufs)"

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
    """Device side of one split virtqueue; the transport fills in size, addresses and `ready`.

    The three ring areas are validated when the driver enables the queue and then accessed through cached
    memoryviews (like QEMU's cached vring regions); descriptors are decoded with `struct`, indirect tables are
    snapshot in one `iter_unpack`, so a hostile driver rewriting them mid-walk cannot change what was checked.
    """

    def __init__(self, index: int, max_size: int, dma: DmaLike) -> None:
        if not 1 <= max_size <= MAX_QUEUE_SIZE:
            raise GuestError(f"virtqueue {index}: max size {max_size} is out of range")
        self.index = index
        self.max_size = max_size
        self.dma = dma
        self.event_idx = False
        self.indirect = False
        self._barrier = threading.Lock()
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
        self._rings: tuple[memoryview, memoryview, memoryview] | None = None
        self._windows: tuple[tuple[int, int, memoryview], ...] | None = None

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
        self._rings = None
        self._map_rings()

    def _map_rings(self) -> tuple[memoryview, memoryview, memoryview]:
        """Views of the descriptor table, available ring and used ring (each must lie in one RAM region)."""
        layout = self.layout
        self._windows = self._ram_windows()
        self._rings = (
            self._area(self.desc_addr, layout.desc_table_bytes, "descriptor table"),
            self._area(self.driver_addr, layout.avail_bytes, "available ring"),
            self._area(self.device_addr, layout.used_bytes, "used ring"),
        )
        return self._rings

    def _ram_windows(self) -> tuple[tuple[int, int, memoryview], ...] | None:
        """(gpa, end, view) of every RAM region, biggest first, when DMA maps guest RAM one to one (no IOMMU):
        buffers are then sliced from them inline. None: every buffer goes through `dma.view`."""
        memory = getattr(self.dma, "memory", None)
        if getattr(self.dma, "iommu", True) is not None or memory is None:
            return None
        try:
            regions = [(region.gpa, region.end, region.view) for region in memory.regions]
        except AttributeError:
            return None
        return tuple(sorted(regions, key=lambda r: r[0] - r[1]))

    def _area(self, addr: int, length: int, what: str) -> memoryview:
        try:
            return self.dma.view(addr, length)
        except GuestError:
            pieces = self._views(addr, length, what)  # VirtqueueError when outside RAM
            raise VirtqueueError(
                f"virtqueue {self.index}: {what} [{addr:#x}, +{length:#x}) spans {len(pieces)} RAM regions"
            ) from None

    def _views(self, addr: int, length: int, what: str) -> list[memoryview]:
        try:
            return self.dma.views(addr, length)
        except GuestError as err:
            raise VirtqueueError(
                f"virtqueue {self.index}: {what} [{addr:#x}, +{length:#x}) is outside guest RAM"
            ) from err

    def _memory_barrier(self) -> None:
        """A full fence (a locked instruction) between publishing an event index and re-reading the ring."""
        self._barrier.acquire()
        self._barrier.release()

    # driver -> device ----------------------------------------------------------------------------

    @property
    def published_used_idx(self) -> int:
        """The used index the driver can see (`used_idx` counts entries filled but maybe not flushed)."""
        return self._published_used_idx

    def avail_idx(self) -> int:
        rings = self._rings or self._map_rings()
        return _unpack_u16(rings[1], IDX_OFFSET)[0]

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
        rings = self._rings or self._map_rings()
        head = _unpack_u16(rings[1], HEADER_SIZE + AVAIL_ENTRY_SIZE * (self.last_avail_idx % self.size))[0]
        if head >= self.size:
            raise VirtqueueError(f"virtqueue {self.index}: available head {head} >= queue size {self.size}")
        element = self._walk_chain(head)
        self.last_avail_idx = (self.last_avail_idx + 1) & 0xFFFF
        self.in_flight += 1
        if self.event_idx:
            self._publish_avail_event()
        return element

    def pop_all(self, into: list[VirtqueueElement], rearm: bool = True) -> list[VirtqueueElement]:
        """Append every available chain to `into` (and return it), publishing avail_event once at the end.

        With EVENT_IDX the ring is re-read after avail_event is published, so a chain the driver added meanwhile
        is either popped here or announced by a kick. With `rearm=False` nothing is published: the driver is not
        asked to kick for what it adds next, so the caller must look again later (a poll) or re-arm with a
        default call. On a malformed chain VirtqueueError is raised and `into` holds the chains popped before it.
        """
        if not self.ready:
            return into
        rings = self._rings or self._map_rings()
        table, avail, size, walk = rings[0], rings[1], self.size, self._walk_chain
        # A lone descriptor inside the biggest RAM window (what network drivers post, one per buffer) is sliced
        # here; anything else (chains, indirect tables, other regions) takes the full walk.
        ram_gpa, ram_end, ram = (self._windows or ((0, 0, table),))[0]
        last = self.last_avail_idx
        while True:
            count = (_unpack_u16(avail, IDX_OFFSET)[0] - last) & 0xFFFF
            if not count:
                if not self.event_idx or not rearm:
                    return into
                _store_u16(rings[2], HEADER_SIZE + USED_ELEM_SIZE * size, last)
                self._memory_barrier()
                count = (_unpack_u16(avail, IDX_OFFSET)[0] - last) & 0xFFFF
                if not count:
                    return into
            if count > size:
                raise VirtqueueError(
                    f"virtqueue {self.index}: avail idx moved {count} entries ahead, more than size {size}"
                )
            try:
                for _ in range(count):
                    head = _unpack_u16(avail, HEADER_SIZE + AVAIL_ENTRY_SIZE * (last % size))[0]
                    if head >= size:
                        raise VirtqueueError(
                            f"virtqueue {self.index}: available head {head} >= queue size {size}"
                        )
                    addr, length, flags, _next = _unpack_desc(table, DESC_SIZE * head)
                    if not flags & _CHAIN_FLAGS and length and ram_gpa <= addr and addr + length <= ram_end:
                        view = ram[addr - ram_gpa : addr + length - ram_gpa]
                        into.append(VirtqueueElement(head, [], [view]) if flags & VIRTQ_DESC_F_WRITE
                                    else VirtqueueElement(head, [view], []))
                    else:
                        into.append(walk(head))
                    last = (last + 1) & 0xFFFF
            finally:
                self.in_flight += (last - self.last_avail_idx) & 0xFFFF
                self.last_avail_idx = last

    def pop_lone_writable(self, heads: list[int], views: list[memoryview], min_len: int) -> bool:
        """Pop the available chains that are one device-writable descriptor of at least `min_len` bytes inside
        the biggest RAM window (what a network driver posts as receive buffers), appending each head and view.

        Stops at the first other chain, returning True (the caller takes it with `pop_all`, which also checks it),
        or when the ring is empty, returning False. Publishes no avail_event (as `pop_all(rearm=False)`).
        """
        if not self.ready or not self._windows:
            return self.ready and self.pending() > 0
        rings = self._rings or self._map_rings()
        table, avail, size = rings[0], rings[1], self.size
        ram_gpa, ram_end, ram = self._windows[0]
        first = last = self.last_avail_idx
        count = (_unpack_u16(avail, IDX_OFFSET)[0] - last) & 0xFFFF
        if count > size:
            raise VirtqueueError(
                f"virtqueue {self.index}: avail idx moved {count} entries ahead, more than size {size}"
            )
        slot = last % size
        ring_heads = _unpack_u16s(count, avail, slot, size)
        append_head, append_view = heads.append, views.append
        try:
            for head in ring_heads:
                if head >= size:
                    return True
                addr, length, flags, _next = _unpack_desc(table, DESC_SIZE * head)
                if flags & _LONE_FLAGS != VIRTQ_DESC_F_WRITE or length < min_len or not (
                        ram_gpa <= addr and addr + length <= ram_end):
                    return True
                append_head(head)
                append_view(ram[addr - ram_gpa : addr + length - ram_gpa])
                last = (last + 1) & 0xFFFF
            return False
        finally:
            self.in_flight += (last - first) & 0xFFFF
            self.last_avail_idx = last

    def _publish_avail_event(self) -> None:
        rings = self._rings or self._map_rings()
        _store_u16(rings[2], HEADER_SIZE + USED_ELEM_SIZE * self.size, self.last_avail_idx)

    def _walk_chain(self, head: int) -> VirtqueueElement:
        out_bufs: list[memoryview] = []
        in_bufs: list[memoryview] = []
        rings = self._rings or self._map_rings()
        table = rings[0]
        descs: list[tuple[int, int, int, int]] | None = None
        table_size = self.size
        dma_view = self.dma.view
        windows = self._windows or ()
        # the pending buffer, [run_start, run_end) in `run_ram` (RAM from run_gpa to run_limit), is sliced and
        # appended to `run_bufs` only once the next descriptor turns out not to continue it
        run_bufs: list[memoryview] | None = None
        run_ram = table
        run_gpa = run_limit = run_start = run_end = -1
        index, visited = head, 0
        seen_writable = False
        while True:
            visited += 1
            if visited > table_size:
                raise VirtqueueError(
                    f"virtqueue {self.index}: chain at head {head} is longer than {table_size} "
                    "descriptors (a loop?)"
                )
            if descs is None:
                addr, length, flags, nxt = _unpack_desc(table, DESC_SIZE * index)
            else:
                addr, length, flags, nxt = descs[index]
            if flags & VIRTQ_DESC_F_INDIRECT:
                descs = self._indirect_table(addr, length, flags, descs is not None, head)
                table_size, index, visited = len(descs), 0, 0
                continue
            if flags & VIRTQ_DESC_F_WRITE:
                seen_writable = True
                bufs = in_bufs
            else:
                if seen_writable:
                    raise VirtqueueError(
                        f"virtqueue {self.index}: read-only descriptor {index} after a write-only one"
                    )
                bufs = out_bufs
            if length:
                if addr == run_end and bufs is run_bufs and addr + length <= run_limit:
                    run_end = addr + length  # contiguous with the pending buffer: grows it (sliced once, later)
                else:
                    if run_bufs is not None:
                        run_bufs.append(run_ram[run_start - run_gpa : run_end - run_gpa])
                        run_bufs = None
                    for gpa, end, ram in windows:
                        if gpa <= addr and addr + length <= end:
                            run_bufs, run_ram, run_gpa, run_limit = bufs, ram, gpa, end
                            run_start, run_end = addr, addr + length
                            break
                    else:
                        try:
                            bufs.append(dma_view(addr, length))
                        except GuestError:  # spans RAM regions (fine) or leaves RAM (VirtqueueError)
                            bufs.extend(self._views(addr, length, f"buffer of descriptor {index}"))
            if not flags & VIRTQ_DESC_F_NEXT:
                if run_bufs is not None:
                    run_bufs.append(run_ram[run_start - run_gpa : run_end - run_gpa])
                return VirtqueueElement(head, out_bufs, in_bufs)
            if nxt >= table_size:
                raise VirtqueueError(
                    f"virtqueue {self.index}: descriptor {index} links to {nxt}, beyond table size {table_size}"
                )
            index = nxt

    def _indirect_table(
        self, addr: int, length: int, flags: int, already_indirect: bool, head: int
    ) -> list[tuple[int, int, int, int]]:
        """Check an indirect descriptor and snapshot its table as (addr, len, flags, next) tuples."""
        where = f"virtqueue {self.index}: chain at head {head}"
        if not self.indirect:
            raise VirtqueueError(f"{where}: indirect descriptor but VIRTIO_F_INDIRECT_DESC not negotiated")
        if already_indirect:
            raise VirtqueueError(f"{where}: indirect descriptor inside an indirect table")
        if flags & VIRTQ_DESC_F_NEXT:
            raise VirtqueueError(f"{where}: indirect descriptor with NEXT set")
        if length == 0 or length % DESC_SIZE:
            raise VirtqueueError(f"{where}: indirect table length {length} is not a multiple of 16")
        count = length // DESC_SIZE
        if count > MAX_INDIRECT_DESCRIPTORS:
            raise VirtqueueError(
                f"{where}: indirect table of {count} entries exceeds {MAX_INDIRECT_DESCRIPTORS}"
            )
        try:
            raw: memoryview | bytes = self.dma.view(addr, length)
        except GuestError:
            raw = b"".join(self._views(addr, length, "indirect table"))
        return list(_iter_desc(raw))

    # device -> driver ----------------------------------------------------------------------------

    def fill(self, element: VirtqueueElement, written_len: int) -> None:
        """Write a used entry without publishing it (batch several, then `flush`)."""
        rings = self._rings or self._map_rings()
        used_idx = self.used_idx
        _pack_used(
            rings[2], HEADER_SIZE + USED_ELEM_SIZE * (used_idx % self.size), element.head, written_len & 0xFFFFFFFF
        )
        self.used_idx = (used_idx + 1) & 0xFFFF
        if self.in_flight:
            self.in_flight -= 1

    def fill_many(self, completed: list[tuple[int, int]]) -> None:
        """`fill` for a batch of (head, written_len) pairs: packed in at most two stores (the ring may wrap)."""
        used = (self._rings or self._map_rings())[2]
        used_idx, size, total = self.used_idx, self.size, len(completed)
        done = 0
        while done < total:
            slot = used_idx % size
            count = min(total - done, size - slot)
            entries = chain.from_iterable(completed[done : done + count])
            struct.pack_into(f"<{2 * count}I", used, HEADER_SIZE + USED_ELEM_SIZE * slot, *entries)
            used_idx = (used_idx + count) & 0xFFFF
            done += count
        self.used_idx = used_idx
        self.in_flight = max(0, self.in_flight - total)

    def flush(self) -> None:
        """Publish every filled used entry to the driver (one idx update)."""
        if self._published_used_idx != self.used_idx:
            rings = self._rings or self._map_rings()
            _store_u16(rings[2], IDX_OFFSET, self.used_idx)
            self._published_used_idx = self.used_idx

    def push(self, element: VirtqueueElement, written_len: int) -> None:
        """Return one chain to the driver with `written_len` bytes written into its in-buffers."""
        self.fill(element, written_len)
        self.flush()

    def notify_needed(self) -> bool:
        """Whether the driver wants an interrupt for what was published since the last one."""
        rings = self._rings or self._map_rings()
        if not self.event_idx:
            self._memory_barrier()
            return not _unpack_u16(rings[1], FLAGS_OFFSET)[0] & VIRTQ_AVAIL_F_NO_INTERRUPT
        new, old, valid = self._published_used_idx, self._signalled_used, self._signalled_valid
        self._signalled_used, self._signalled_valid = new, True
        if not valid:
            return True
        self._memory_barrier()
        used_event = _unpack_u16(rings[1], HEADER_SIZE + AVAIL_ENTRY_SIZE * self.size)[0]
        return ((new - used_event - 1) & 0xFFFF) < ((new - old) & 0xFFFF)

    def set_notification(self, enabled: bool) -> None:
        """Ask the driver (not) to kick us: VIRTQ_USED_F_NO_NOTIFY or, with EVENT_IDX, avail_event."""
        if self.event_idx:
            if enabled:
                self._publish_avail_event()
            return
        rings = self._rings or self._map_rings()
        _store_u16(rings[2], FLAGS_OFFSET, 0 if enabled else VIRTQ_USED_F_NO_NOTIFY)

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
        self._rings = None
