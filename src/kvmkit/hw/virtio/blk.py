"""virtio-blk (virtio 1.x, 5.2): requests served on the worker pool straight into guest memory."""

from __future__ import annotations

import ctypes
import logging
import operator
import struct
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from kvmkit.errors import KvmkitError
from kvmkit.hw.virtio.device import VIRTIO_ID_BLOCK, VirtioDevice, feature_bit
from kvmkit.hw.virtio.virtqueue import DmaLike, VirtqueueElement, VirtqueueError, split_buffers

log = logging.getLogger(__name__)

SECTOR_SIZE = 512

VIRTIO_BLK_F_SEG_MAX = 2
VIRTIO_BLK_F_RO = 5
VIRTIO_BLK_F_BLK_SIZE = 6
VIRTIO_BLK_F_FLUSH = 9
VIRTIO_BLK_F_DISCARD = 13
VIRTIO_BLK_F_WRITE_ZEROES = 14

VIRTIO_BLK_T_IN = 0
VIRTIO_BLK_T_OUT = 1
VIRTIO_BLK_T_FLUSH = 4
VIRTIO_BLK_T_GET_ID = 8
VIRTIO_BLK_T_DISCARD = 11
VIRTIO_BLK_T_WRITE_ZEROES = 13

VIRTIO_BLK_S_OK = 0
VIRTIO_BLK_S_IOERR = 1
VIRTIO_BLK_S_UNSUPP = 2

VIRTIO_BLK_ID_BYTES = 20
VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP = 0x1
MAX_DISCARD_SECTORS = (1 << 30) // SECTOR_SIZE
MAX_DISCARD_SEGMENTS = 1

OPERATION_NAMES = {
    VIRTIO_BLK_T_IN: "read",
    VIRTIO_BLK_T_OUT: "write",
    VIRTIO_BLK_T_FLUSH: "flush",
    VIRTIO_BLK_T_DISCARD: "discard",
    VIRTIO_BLK_T_WRITE_ZEROES: "write-zeroes",
    VIRTIO_BLK_T_GET_ID: "get-id",
}


class VirtioBlkConfig(ctypes.LittleEndianStructure):
    """struct virtio_blk_config, up to the write-zeroes limits."""

    _pack_ = 1
    _fields_ = [
        ("capacity", ctypes.c_uint64),
        ("size_max", ctypes.c_uint32),
        ("seg_max", ctypes.c_uint32),
        ("geometry_cylinders", ctypes.c_uint16),
        ("geometry_heads", ctypes.c_uint8),
        ("geometry_sectors", ctypes.c_uint8),
        ("blk_size", ctypes.c_uint32),
        ("physical_block_exp", ctypes.c_uint8),
        ("alignment_offset", ctypes.c_uint8),
        ("min_io_size", ctypes.c_uint16),
        ("opt_io_size", ctypes.c_uint32),
        ("writeback", ctypes.c_uint8),
        ("unused0", ctypes.c_uint8),
        ("num_queues", ctypes.c_uint16),
        ("max_discard_sectors", ctypes.c_uint32),
        ("max_discard_seg", ctypes.c_uint32),
        ("discard_sector_alignment", ctypes.c_uint32),
        ("max_write_zeroes_sectors", ctypes.c_uint32),
        ("max_write_zeroes_seg", ctypes.c_uint32),
        ("write_zeroes_may_unmap", ctypes.c_uint8),
        ("unused1", ctypes.c_uint8 * 3),
    ]


class VirtioBlkRequestHeader(ctypes.LittleEndianStructure):
    """The device-readable header opening every request."""

    _pack_ = 1
    _fields_ = [("type", ctypes.c_uint32), ("reserved", ctypes.c_uint32), ("sector", ctypes.c_uint64)]


class VirtioBlkDiscardSegment(ctypes.LittleEndianStructure):
    """One range of a DISCARD or WRITE_ZEROES request."""

    _pack_ = 1
    _fields_ = [("sector", ctypes.c_uint64), ("num_sectors", ctypes.c_uint32), ("flags", ctypes.c_uint32)]


HEADER_SIZE = ctypes.sizeof(VirtioBlkRequestHeader)
SEGMENT_SIZE = ctypes.sizeof(VirtioBlkDiscardSegment)
_unpack_header = struct.Struct("<IIQ").unpack_from
_nbytes = operator.attrgetter("nbytes")
# Requests of one kick are served together; a new pool task starts once a task carries this many bytes, so small
# requests share one task (one wakeup, one completion, one interrupt) while big ones overlap their copies.
TASK_BYTES = 256 << 10


class BlockDriverLike(Protocol):
    """The part of kvmkit.block.driver.BlockDriver virtio-blk uses."""

    read_only: bool

    @property
    def size(self) -> int: ...

    def pread(self, offset: int, bufs: Sequence[memoryview]) -> None: ...

    def pwrite(self, offset: int, bufs: Sequence[memoryview]) -> None: ...

    def flush(self) -> None: ...

    def discard(self, offset: int, length: int) -> None: ...

    def write_zeroes(self, offset: int, length: int) -> None: ...


class WorkerPoolLike(Protocol):
    def submit(self, fn: Callable[..., Any], *args: Any, needs_bql: bool = True) -> Future[Any]: ...

    def submit_nowait(self, fn: Callable[..., Any], *args: Any) -> None: ...


IoErrorHook = Callable[["VirtioBlk", str, str], None]  # (device, operation, reason)


@dataclass
class BlockStats:
    """Counters reported by `query-blockstats` (QMP field names)."""

    rd_bytes: int = 0
    wr_bytes: int = 0
    rd_operations: int = 0
    wr_operations: int = 0
    flush_operations: int = 0
    unmap_operations: int = 0
    unmap_bytes: int = 0
    failed_rd_operations: int = 0
    failed_wr_operations: int = 0
    failed_flush_operations: int = 0
    failed_unmap_operations: int = 0
    invalid_rd_operations: int = 0
    invalid_wr_operations: int = 0


class _RequestFailed(Exception):
    def __init__(self, status: int, reason: str, invalid: bool = False) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.invalid = invalid


class _Request:
    """One parsed request: the chain, its header fields and its data and status views."""

    __slots__ = ("data_in", "data_out", "element", "generation", "length", "queue", "sector", "status_view", "type")

    def __init__(
        self,
        element: VirtqueueElement,
        queue: int,
        type: int,
        sector: int,
        data_out: list[memoryview],
        data_in: list[memoryview],
        status_view: memoryview,
        generation: int,
    ) -> None:
        self.element = element
        self.queue = queue
        self.type = type
        self.sector = sector
        self.data_out = data_out
        self.data_in = data_in
        self.status_view = status_view
        self.generation = generation
        data = data_in if type == VIRTIO_BLK_T_IN else data_out
        self.length = data[0].nbytes if len(data) == 1 else sum(map(_nbytes, data))


class VirtioBlk(VirtioDevice):
    """A virtio block device backed by a block driver.

    `bql` is the big lock (completions are pushed under it); with no `pool`, requests are served
    synchronously (tests). `on_io_error(device, operation, reason)` is called for failed I/O.
    """

    device_type = VIRTIO_ID_BLOCK
    config_type = VirtioBlkConfig

    def __init__(
        self,
        name: str,
        driver: BlockDriverLike,
        dma: DmaLike,
        bql: AbstractContextManager[Any] | None = None,
        pool: WorkerPoolLike | None = None,
        serial: str = "",
        read_only: bool | None = None,
        queue_size: int = 256,
        on_io_error: IoErrorHook | None = None,
    ) -> None:
        super().__init__(name, dma, num_queues=1, queue_max_size=queue_size)
        self.driver = driver
        self.bql: AbstractContextManager[Any] = bql if bql is not None else threading.RLock()
        self._bql_lock: AbstractContextManager[Any] = getattr(self.bql, "lock", self.bql)  # raw RLock: no frame
        self.pool = pool
        self.serial = serial.encode()[:VIRTIO_BLK_ID_BYTES]
        self.read_only = driver.read_only if read_only is None else (read_only or driver.read_only)
        self.on_io_error = on_io_error
        self.stats = BlockStats()
        self._generation = 0
        # Served requests wait here for the BQL; whoever gets it publishes all of them with one used-idx update
        # and at most one interrupt per queue (deque append/popleft are atomic: no lock needed to enqueue).
        self._finished: deque[tuple[_Request, int, int]] = deque()
        self._fill_config()

    def _fill_config(self) -> None:
        cfg = self.config
        cfg.capacity = self.driver.size // SECTOR_SIZE
        cfg.seg_max = max(1, self.queues[0].max_size - 2)
        cfg.blk_size = SECTOR_SIZE
        cfg.num_queues = len(self.queues)
        cfg.max_discard_sectors = MAX_DISCARD_SECTORS
        cfg.max_discard_seg = MAX_DISCARD_SEGMENTS
        cfg.discard_sector_alignment = 1
        cfg.max_write_zeroes_sectors = MAX_DISCARD_SECTORS
        cfg.max_write_zeroes_seg = MAX_DISCARD_SEGMENTS
        cfg.write_zeroes_may_unmap = 1

    def device_features(self) -> int:
        features = super().device_features()
        for bit in (VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH):
            features |= feature_bit(bit)
        if self.read_only:
            features |= feature_bit(VIRTIO_BLK_F_RO)
        else:
            features |= feature_bit(VIRTIO_BLK_F_DISCARD) | feature_bit(VIRTIO_BLK_F_WRITE_ZEROES)
        return features

    def reset(self) -> None:
        self._generation += 1  # completions of requests still in flight are dropped
        super().reset()

    def resize(self) -> None:
        """The backing image changed size: update capacity and raise a config interrupt."""
        self.config.capacity = self.driver.size // SECTOR_SIZE
        changed = getattr(self.transport, "config_changed", None)
        if changed is not None:
            changed()

    def blockstats(self) -> dict[str, int]:
        with self.bql:
            return asdict(self.stats)

    # request intake (main loop, BQL held) --------------------------------------------------------

    def handle_queue(self, index: int) -> None:
        """Pop every available request, then hand them to the pool in a few batches (or serve them inline)."""
        elements: list[VirtqueueElement] = []
        error: VirtqueueError | None = None
        try:
            self.queues[index].pop_all(elements)
        except VirtqueueError as err:
            error = err  # serve what came before the malformed chain, then report it
        requests: list[_Request] = []
        parse, generation = self._parse, self._generation
        for element in elements:
            try:
                requests.append(parse(index, element, generation))
            except VirtqueueError as err:
                error = err
                break
        if requests:
            if self.pool is None:
                self._serve_batch(requests)
            else:
                self._submit(requests)
        if error is not None:
            raise error

    def _submit(self, requests: list[_Request]) -> None:
        submit_nowait = self.pool.submit_nowait  # type: ignore[union-attr]
        batch: list[_Request] = []
        size = 0
        for request in requests:
            batch.append(request)
            size += request.length
            if size >= TASK_BYTES:
                submit_nowait(self._serve_batch, batch)
                batch, size = [], 0
        if batch:
            submit_nowait(self._serve_batch, batch)

    def _parse(self, queue: int, element: VirtqueueElement, generation: int | None = None) -> _Request:
        out_bufs, in_bufs = element.out_bufs, element.in_bufs
        generation = self._generation if generation is None else generation
        if out_bufs and in_bufs and out_bufs[0].nbytes == HEADER_SIZE and in_bufs[-1].nbytes == 1:
            # the layout every driver uses: a 16-byte header descriptor first, a 1-byte status descriptor last
            kind, _, sector = _unpack_header(out_bufs[0])
            return _Request(element, queue, kind, sector, out_bufs[1:], in_bufs[:-1], in_bufs[-1], generation)
        if element.out_len < HEADER_SIZE or element.in_len < 1:
            raise VirtqueueError(
                f"virtio-blk {self.name}: request at head {element.head} lacks a header or status byte"
            )
        header_views, data_out = split_buffers(out_bufs, HEADER_SIZE)
        kind, _, sector = _unpack_header(b"".join(header_views))
        data_in, status_views = split_buffers(in_bufs, element.in_len - 1)
        return _Request(element, queue, kind, sector, data_out, data_in, status_views[-1], generation)

    # serving (worker thread, no BQL) -------------------------------------------------------------

    def _serve_batch(self, requests: list[_Request]) -> None:
        """Serve requests in order, then complete them all at once (one used-idx update, one interrupt)."""
        results: list[tuple[_Request, int, int]] = []
        driver = self.driver
        capacity = self.config.capacity * SECTOR_SIZE
        read_only = self.read_only
        for request in requests:
            kind = request.type
            try:
                if kind == VIRTIO_BLK_T_IN or (kind == VIRTIO_BLK_T_OUT and not read_only):
                    length = request.length
                    offset = request.sector * SECTOR_SIZE
                    if length % SECTOR_SIZE or offset + length > capacity:
                        offset = self._check_range(request, request.sector, length)  # raises with the reason
                    if kind == VIRTIO_BLK_T_IN:
                        driver.pread(offset, request.data_in)
                        results.append((request, VIRTIO_BLK_S_OK, length))
                    else:
                        driver.pwrite(offset, request.data_out)
                        results.append((request, VIRTIO_BLK_S_OK, 0))
                    continue
                written = self._execute(request)
                results.append((request, VIRTIO_BLK_S_OK, written))
            except _RequestFailed as failure:
                self._report_failure(request, failure)
                results.append((request, failure.status, 0))
            except (KvmkitError, OSError) as err:
                self._report_failure(request, _RequestFailed(VIRTIO_BLK_S_IOERR, str(err)))
                results.append((request, VIRTIO_BLK_S_IOERR, 0))
        self._finished.extend(results)
        with self._bql_lock:
            self._publish_finished()

    def _check_range(self, request: _Request, sector: int, length: int) -> int:
        operation = OPERATION_NAMES.get(request.type, "?")
        if length % SECTOR_SIZE:
            raise _RequestFailed(
                VIRTIO_BLK_S_IOERR, f"{operation} length {length} is not sector aligned", True
            )
        offset = sector * SECTOR_SIZE
        if offset + length > self.config.capacity * SECTOR_SIZE:
            raise _RequestFailed(
                VIRTIO_BLK_S_IOERR,
                f"{operation} of sectors [{sector}, +{length // SECTOR_SIZE}) beyond capacity "
                f"{self.config.capacity}",
                True,
            )
        return offset

    def _execute(self, request: _Request) -> int:
        kind = request.type
        if kind == VIRTIO_BLK_T_IN:
            length = sum(v.nbytes for v in request.data_in)
            offset = self._check_range(request, request.sector, length)
            self.driver.pread(offset, request.data_in)
            return length
        if kind == VIRTIO_BLK_T_GET_ID:
            ident = self.serial.ljust(VIRTIO_BLK_ID_BYTES, b"\0")
            written = 0
            for view in request.data_in:
                chunk = ident[written : written + view.nbytes]
                view[: len(chunk)] = chunk
                written += len(chunk)
            return written
        if kind == VIRTIO_BLK_T_FLUSH:
            self.driver.flush()
            return 0
        if kind not in (VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES):
            raise _RequestFailed(VIRTIO_BLK_S_UNSUPP, f"request type {kind} is not supported")
        if self.read_only:
            raise _RequestFailed(VIRTIO_BLK_S_IOERR, f"{OPERATION_NAMES[kind]} on a read-only drive", True)
        if kind == VIRTIO_BLK_T_OUT:
            length = sum(v.nbytes for v in request.data_out)
            offset = self._check_range(request, request.sector, length)
            self.driver.pwrite(offset, request.data_out)
            return 0
        for segment in self._segments(request):
            offset = self._check_range(request, segment.sector, segment.num_sectors * SECTOR_SIZE)
            length = segment.num_sectors * SECTOR_SIZE
            if kind == VIRTIO_BLK_T_DISCARD:
                self.driver.discard(offset, length)
            else:
                self.driver.write_zeroes(offset, length)
        return 0

    def _segments(self, request: _Request) -> list[VirtioBlkDiscardSegment]:
        raw = b"".join(bytes(v) for v in request.data_out)
        if not raw or len(raw) % SEGMENT_SIZE or len(raw) // SEGMENT_SIZE > MAX_DISCARD_SEGMENTS:
            raise _RequestFailed(VIRTIO_BLK_S_UNSUPP, f"{len(raw)} bytes of discard segments", True)
        segments = [
            VirtioBlkDiscardSegment.from_buffer_copy(raw, at) for at in range(0, len(raw), SEGMENT_SIZE)
        ]
        for segment in segments:
            allowed = VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP if request.type == VIRTIO_BLK_T_WRITE_ZEROES else 0
            if segment.flags & ~allowed:
                raise _RequestFailed(VIRTIO_BLK_S_UNSUPP, f"segment flags {segment.flags:#x}", True)
            if segment.num_sectors > MAX_DISCARD_SECTORS:
                raise _RequestFailed(VIRTIO_BLK_S_IOERR, f"segment of {segment.num_sectors} sectors", True)
        return segments

    def _report_failure(self, request: _Request, failure: _RequestFailed) -> None:
        operation = OPERATION_NAMES.get(request.type, f"type-{request.type}")
        log.warning("virtio-blk %s: %s failed: %s", self.name, operation, failure.reason)
        if self.on_io_error is not None and failure.status == VIRTIO_BLK_S_IOERR and not failure.invalid:
            try:
                self.on_io_error(self, operation, failure.reason)
            except Exception:
                log.exception("virtio-blk %s: on_io_error hook failed", self.name)

    # completion (BQL) ----------------------------------------------------------------------------

    def _publish_finished(self) -> None:
        """Return every served request to the driver: one used-idx update and one notification per queue."""
        finished, generation, stats = self._finished, self._generation, self.stats
        filled: dict[int, list[tuple[int, int]]] = {}
        while finished:
            request, status, written = finished.popleft()
            if request.generation != generation:
                continue  # the driver reset the device while this request was in flight
            kind = request.type
            if status == VIRTIO_BLK_S_OK and kind == VIRTIO_BLK_T_IN:
                stats.rd_operations += 1
                stats.rd_bytes += written
            elif status == VIRTIO_BLK_S_OK and kind == VIRTIO_BLK_T_OUT:
                stats.wr_operations += 1
                stats.wr_bytes += request.length
            else:
                self._count(request, status, written)
            request.status_view[0] = status
            entries = filled.get(request.queue)
            if entries is None:
                entries = filled[request.queue] = []
            entries.append((request.element.head, written + 1))
        for index, entries in filled.items():
            queue = self.queues[index]
            try:
                queue.fill_many(entries)
                queue.flush()
            except VirtqueueError as err:
                self.fail(str(err))
                return
            self.notify_queue(index)

    def _count(self, request: _Request, status: int, written: int) -> None:
        stats, ok, kind = self.stats, status == VIRTIO_BLK_S_OK, request.type
        if kind == VIRTIO_BLK_T_IN:
            stats.rd_operations += ok
            stats.rd_bytes += written if ok else 0
            stats.failed_rd_operations += not ok
        elif kind == VIRTIO_BLK_T_OUT:
            stats.wr_operations += ok
            stats.wr_bytes += request.length if ok else 0
            stats.failed_wr_operations += not ok
        elif kind == VIRTIO_BLK_T_FLUSH:
            stats.flush_operations += ok
            stats.failed_flush_operations += not ok
        elif kind in (VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES):
            stats.unmap_operations += ok
            stats.failed_unmap_operations += not ok

    def migratable_state(self) -> dict[str, Any]:
        state = super().migratable_state()
        state["read_only"] = self.read_only
        return state
