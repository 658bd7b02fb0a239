"""The receive side of virtio-net: guest buffers popped in advance, filled by the backend, completed in batches."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from kvmkit.hw.virtio.net.header import NET_HDR_LEN, NUM_BUFFERS_OFFSET
from kvmkit.hw.virtio.virtqueue import Virtqueue, VirtqueueElement, VirtqueueError
from kvmkit.net.backend import MAX_FRAME

MAX_IOVECS = 1024  # IOV_MAX: one readv never gets more pieces than this
MAX_FRAME_WITH_HDR = NET_HDR_LEN + MAX_FRAME


@dataclass
class RxBuffer:
    """One posted receive chain: its device-writable views into guest RAM."""

    element: VirtqueueElement
    views: list[memoryview]
    capacity: int


@dataclass
class RxCounters:
    packets: int = 0
    bytes: int = 0
    dropped: int = 0  # frames the device discarded (too big for any buffer the guest gave): never the limiter
    throttled: int = 0  # times the rate limiter held frames back in the backend queue


@dataclass
class RxPool:
    """Posted RX buffers of one queue. `header_from_backend`: the backend writes the 12-byte header itself."""

    queue: Virtqueue
    on_complete: Callable[[], None]
    mergeable: bool = False
    header_from_backend: bool = False
    posted: deque[RxBuffer] = field(default_factory=deque)
    done: list[tuple[VirtqueueElement, int]] = field(default_factory=list)
    counters: RxCounters = field(default_factory=RxCounters)

    def refill(self) -> int:
        """Pop every buffer the driver made available; returns how many were added."""
        added = 0
        while True:
            element = self.queue.pop()
            if element is None:
                return added
            if element.out_bufs or element.in_len < NET_HDR_LEN:
                self.queue.fill(element, 0)
                raise VirtqueueError(f"virtqueue {self.queue.index}: receive buffer of {element.in_len} "
                                     f"writable bytes ({len(element.out_bufs)} readable) is not a valid "
                                     f"virtio-net buffer (needs >= {NET_HDR_LEN} writable bytes)")
            self.posted.append(RxBuffer(element, list(element.in_bufs), element.in_len))
            added += 1

    def forget(self) -> None:
        """Device reset: the driver no longer owns or expects any of these."""
        self.posted.clear()
        self.done.clear()

    @property
    def capacity(self) -> int:
        return sum(buffer.capacity for buffer in self.posted)

    # zero-copy path -------------------------------------------------------------------------------

    def direct_iovecs(self) -> list[memoryview] | None:
        """Views a backend can read the next frame straight into, or None if there may not be room for the
        largest frame (then the backend stages the frame and calls deliver())."""
        if not self.posted:
            return None
        skip = 0 if self.header_from_backend else NET_HDR_LEN
        buffers = list(self.posted) if self.mergeable else [self.posted[0]]
        iovecs: list[memoryview] = []
        room = 0
        for buffer in buffers:
            for view in buffer.views:
                if skip:
                    taken = min(skip, view.nbytes)
                    skip -= taken
                    view = view[taken:]
                    if not view.nbytes:
                        continue
                iovecs.append(view)
                room += view.nbytes
                if room + (0 if self.header_from_backend else NET_HDR_LEN) >= MAX_FRAME_WITH_HDR:
                    return iovecs if len(iovecs) <= MAX_IOVECS else None
        return None

    def commit(self, nbytes: int) -> None:
        """The backend read `nbytes` into the views direct_iovecs() gave."""
        total = nbytes + (0 if self.header_from_backend else NET_HDR_LEN)
        if not self.header_from_backend:
            _scatter(self.posted[0].views, 0, bytes(NET_HDR_LEN))
        self._complete_frame(total)

    # copying path ---------------------------------------------------------------------------------

    def deliver(self, frame: bytes | bytearray | memoryview) -> bool:
        """Copy one frame (with the header iff `header_from_backend`) into posted buffers. False: no room yet
        (the backend keeps the frame); a frame that can never fit is dropped and counted."""
        total = len(frame) + (0 if self.header_from_backend else NET_HDR_LEN)
        room = self.capacity if self.mergeable else (self.posted[0].capacity if self.posted else 0)
        if total > room:
            ring_full = len(self.posted) >= self.queue.size
            if (not self.mergeable and self.posted) or ring_full or total > MAX_FRAME_WITH_HDR:
                self.counters.dropped += 1
                return True
            return False
        data = bytes(frame) if self.header_from_backend else bytes(NET_HDR_LEN) + bytes(frame)
        position, remaining = 0, total
        for buffer in self.posted:
            chunk = min(buffer.capacity, remaining)
            _scatter(buffer.views, 0, data[position : position + chunk])
            position += chunk
            remaining -= chunk
            if not remaining:
                break
        self._complete_frame(total)
        return True

    def _complete_frame(self, total: int) -> None:
        used = 0
        remaining = total
        first = self.posted[0]
        while (remaining > 0 or used == 0) and self.posted:
            buffer = self.posted.popleft()
            written = min(buffer.capacity, remaining)
            self.done.append((buffer.element, written))
            remaining -= written
            used += 1
            if not self.mergeable:
                break
        _scatter(first.views, NUM_BUFFERS_OFFSET, used.to_bytes(2, "little"))
        self.counters.packets += 1
        self.counters.bytes += total - NET_HDR_LEN

    def complete(self) -> None:
        """Publish every frame received since the last call: one used-idx update, one interrupt."""
        if not self.done:
            return
        for element, written in self.done:
            self.queue.fill(element, written)
        self.done.clear()
        self.queue.flush()
        self.on_complete()


def _scatter(views: list[memoryview], offset: int, data: bytes) -> None:
    """Write `data` at byte `offset` of a scatter list (pieces may be any size the guest chose)."""
    position = 0
    for view in views:
        if offset >= view.nbytes:
            offset -= view.nbytes
            continue
        chunk = min(view.nbytes - offset, len(data) - position)
        view[offset : offset + chunk] = data[position : position + chunk]
        position += chunk
        offset = 0
        if position == len(data):
            return
