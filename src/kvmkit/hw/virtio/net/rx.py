"""The receive side of virtio-net: guest buffers popped in advance, filled by the backend, completed in batches.

Posted buffers are kept in flat parallel lists (chain, first view, capacity, running end offset) consumed from
`_start`. A frame's buffers are then found with one bisect and a backend reads a frame straight into a slice of
those views, so the per-frame cost does not grow with the number of buffers a frame spans (a 64 KiB GSO frame
fills ~16-44 mergeable buffers).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass
from itertools import accumulate

from kvmkit.hw.virtio.net.header import NET_HDR_LEN, NUM_BUFFERS_OFFSET
from kvmkit.hw.virtio.virtqueue import Virtqueue, VirtqueueElement, VirtqueueError
from kvmkit.net.backend import MAX_FRAME

MAX_IOVECS = 1024  # IOV_MAX: one readv never gets more pieces than this
MAX_FRAME_WITH_HDR = NET_HDR_LEN + MAX_FRAME
COMPACT_AT = 1024  # consumed entries kept at the front of the lists before they are dropped
# Frames are published (used idx + the interrupt EVENT_IDX allows) once this much arrived, not only at the end of
# a backend's batch: the guest starts on a large frame while the next is still being read, as with QEMU, which
# publishes every frame. While the guest polls (its used_event stays behind) this costs no interrupts.
PUBLISH_BYTES = 32 * 1024


@dataclass
class RxCounters:
    packets: int = 0
    bytes: int = 0
    dropped: int = 0  # frames the device discarded (too big for any buffer the guest gave): never the limiter
    throttled: int = 0  # times the rate limiter held frames back in the backend queue


class RxPool:
    """Posted RX buffers of one queue. `header_from_backend`: the backend writes the 12-byte header itself."""

    def __init__(self, queue: Virtqueue, on_complete: Callable[[], None], mergeable: bool = False,
                 header_from_backend: bool = False) -> None:
        self.queue = queue
        self.on_complete = on_complete
        self.mergeable = mergeable
        self.header_from_backend = header_from_backend
        self.counters = RxCounters()
        self.forget()

    def forget(self) -> None:
        """Device reset: the driver no longer owns or expects any of these."""
        self._heads: list[int] = []  # descriptor chain head of each posted buffer
        self._views: list[memoryview] = []  # first (usually only) view of each posted buffer
        self._caps: list[int] = []  # writable bytes of each posted buffer
        self._ends: list[int] = []  # running total of capacities, from an origin that only grows
        self._split: dict[int, list[memoryview]] = {}  # sequence number -> every view, for multi-piece buffers
        self._seq_base = 0  # sequence number of list position 0
        self._start = 0  # first posted (not yet consumed) position
        self._consumed_end = 0  # running end offset of the last consumed buffer
        self._total = 0  # running end offset of the last posted buffer
        self.done: list[tuple[int, int]] = []  # (head, bytes written) of filled buffers not yet published
        self._unpublished = 0  # bytes in `done`

    @property
    def posted(self) -> int:
        """How many buffers are posted and not yet filled."""
        return len(self._heads) - self._start

    @property
    def capacity(self) -> int:
        return self._total - self._consumed_end

    def refill(self, rearm: bool = True) -> int:
        """Pop every buffer the driver made available; returns how many were added. With `rearm=False` the
        driver is not asked to kick for the buffers it posts next (see VirtioNet.complete)."""
        if self._start >= COMPACT_AT:
            self._compact()
        queue = self.queue
        before = len(self._heads)
        popped: list[VirtqueueElement] = []
        while True:
            # the common buffer (one writable descriptor) goes straight into the lists; any other through _post
            new_views: list[memoryview] = []
            more = queue.pop_lone_writable(self._heads, new_views, NET_HDR_LEN)
            self._post_views(new_views)
            if not more and not rearm:
                break
            popped.clear()
            try:
                queue.pop_all(popped, rearm=rearm)
            finally:
                self._post(popped)
            if not popped:
                break
        return len(self._heads) - before

    def _post_views(self, new_views: list[memoryview]) -> None:
        """Account buffers whose heads pop_lone_writable already appended."""
        if not new_views:
            return
        caps = [len(view) for view in new_views]
        self._views += new_views
        self._caps += caps
        ends = list(accumulate(caps, initial=self._total))[1:]  # running ends continue from the last posted one
        self._ends += ends
        self._total = ends[-1]

    def _post(self, popped: list[VirtqueueElement]) -> None:
        heads, views, caps, ends = self._heads, self._views, self._caps, self._ends
        total = self._total
        try:
            for element in popped:
                in_bufs = element.in_bufs
                if len(in_bufs) == 1 and not element.out_bufs:  # what Linux posts: one writable descriptor
                    view = in_bufs[0]
                    in_len = len(view)
                    if in_len >= NET_HDR_LEN:
                        heads.append(element.head)
                        views.append(view)
                        caps.append(in_len)
                        total += in_len
                        ends.append(total)
                        continue
                in_len = sum(map(len, in_bufs))
                if element.out_bufs or in_len < NET_HDR_LEN:
                    self.queue.fill(element, 0)
                    raise VirtqueueError(f"virtqueue {self.queue.index}: receive buffer of {in_len} writable "
                                         f"bytes ({len(element.out_bufs)} readable) is not a valid virtio-net "
                                         f"buffer (needs >= {NET_HDR_LEN} writable bytes)")
                if len(in_bufs) > 1:
                    self._split[self._seq_base + len(heads)] = list(in_bufs)
                heads.append(element.head)
                views.append(in_bufs[0])
                caps.append(in_len)
                total += in_len
                ends.append(total)
        finally:
            self._total = total

    def _compact(self) -> None:
        start = self._start
        del self._heads[:start], self._views[:start], self._caps[:start], self._ends[:start]
        self._seq_base += start
        self._start = 0

    def _buffer_views(self, position: int) -> list[memoryview]:
        return self._split.get(self._seq_base + position) or [self._views[position]]

    # zero-copy path -------------------------------------------------------------------------------

    def direct_iovecs(self) -> list[memoryview] | None:
        """Views a backend that writes the header itself can read the next frame straight into, or None if
        there may not be room for the largest frame (then it stages the frame and calls deliver())."""
        start = self._start
        if start == len(self._heads) or not self.header_from_backend:
            return None
        if not self.mergeable:
            if self._caps[start] < MAX_FRAME_WITH_HDR:
                return None
            views = self._buffer_views(start)
            return list(views) if len(views) <= MAX_IOVECS else None
        if self._split:
            return None  # a multi-piece buffer is posted: the copying path handles it
        last = bisect_left(self._ends, self._consumed_end + MAX_FRAME_WITH_HDR, start)
        if last == len(self._ends) or last - start >= MAX_IOVECS:
            return None
        return self._views[start : last + 1]

    def commit(self, nbytes: int) -> None:
        """The backend read `nbytes` (header included) into the views direct_iovecs() gave."""
        if nbytes < NET_HDR_LEN:
            return  # not a frame: nothing consumed, the buffers stay posted
        self._consume(nbytes)

    # copying path ---------------------------------------------------------------------------------

    def deliver(self, frame: bytes | bytearray | memoryview) -> bool:
        """Copy one frame (with the header iff `header_from_backend`) into posted buffers. False: no room yet
        (the backend keeps the frame); a frame that can never fit is dropped and counted."""
        header = 0 if self.header_from_backend else NET_HDR_LEN
        total = len(frame) + header
        start = self._start
        posted = len(self._heads) - start
        room = self._total - self._consumed_end if self.mergeable else (self._caps[start] if posted else 0)
        if total > room:
            ring_full = posted >= self.queue.size
            if (not self.mergeable and posted) or ring_full or total > MAX_FRAME_WITH_HDR:
                self.counters.dropped += 1
                return True
            return False
        data = memoryview(frame).cast("B") if header == 0 else memoryview(bytes(NET_HDR_LEN) + bytes(frame))
        position, position_end = 0, total
        caps = self._caps
        index = start
        while position < position_end:
            chunk = min(caps[index], position_end - position)
            views = self._split.get(self._seq_base + index)
            if views is None:
                self._views[index][:chunk] = data[position : position + chunk]
            else:
                _scatter(views, 0, data[position : position + chunk])
            position += chunk
            index += 1
        self._consume(total)
        return True

    def _consume(self, total: int) -> None:
        """Account a frame of `total` bytes (header included) written from the first posted buffer on."""
        start = self._start
        consumed = self._consumed_end
        last = bisect_left(self._ends, consumed + total, start) if self.mergeable else start
        heads = self._heads
        done = self.done
        if last > start:
            done.extend(zip(heads[start:last], self._caps[start:last], strict=True))  # (islice would walk from 0)
            done.append((heads[last], consumed + total - self._ends[last - 1]))
        else:
            done.append((heads[start], total))
        count = last - start + 1
        first = self._views[start]
        if len(first) >= NET_HDR_LEN:
            first[NUM_BUFFERS_OFFSET] = count & 0xFF
            first[NUM_BUFFERS_OFFSET + 1] = count >> 8
        else:
            _scatter(self._buffer_views(start), NUM_BUFFERS_OFFSET, count.to_bytes(2, "little"))
        if self._split:
            for position in range(start, last + 1):
                self._split.pop(self._seq_base + position, None)
        self._start = last + 1
        self._consumed_end = self._ends[last]
        counters = self.counters
        counters.packets += 1
        counters.bytes += total - NET_HDR_LEN
        self._unpublished += total
        if self._unpublished >= PUBLISH_BYTES:
            self.complete()

    def complete(self) -> None:
        """Publish every frame received since the last call: one used-idx update, one interrupt."""
        if not self.done:
            return
        self.queue.fill_many(self.done)
        self.done.clear()
        self._unpublished = 0
        self.queue.flush()
        self.on_complete()


def _scatter(views: list[memoryview], offset: int, data: bytes | memoryview) -> None:
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
