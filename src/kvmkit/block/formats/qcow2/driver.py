"""The qcow2 block driver: synchronous and re-entrant.

One metadata lock guards the L1/L2 tables, the L2 cache and the refcounts (allocation, copy-on-write, L2
updates). Data reads, writes to clusters the image already owns exclusively, and writes of whole clusters
into freshly allocated host clusters that no L2 entry points at yet run outside it, so many worker threads
proceed in parallel. Clusters freed while requests are in flight stay quarantined (not reallocated) until
the image goes idle, so a concurrent reader never sees a reused cluster.
"""

from __future__ import annotations

import contextlib
import ctypes
import struct
import threading
from collections.abc import Callable, Iterator, Sequence

from kvmkit.block.driver import (
    BlockDriver,
    Buffer,
    ImageInfo,
    buffers_length,
    fill_zero,
    flat_views,
    slice_buffers,
)
from kvmkit.block.formats.qcow2 import compressed as compression
from kvmkit.block.formats.qcow2.allocation import ClusterAllocation, FreshRun
from kvmkit.block.formats.qcow2.cluster_map import (
    L1E_OFFSET_MASK,
    L1E_RESERVED_MASK,
    L2E_OFFSET_MASK,
    OFLAG_COMPRESSED,
    OFLAG_COPIED,
    OFLAG_ZERO,
    Geometry,
    Kind,
    Piece,
    decode_entry,
    fully_allocated,
)
from kvmkit.block.formats.qcow2.header import (
    COMPATIBLE_LAZY_REFCOUNTS,
    COMPRESSION_NAMES,
    HeaderV2,
    Incompatible,
    Qcow2Header,
    parse_header,
    unknown_feature_message,
)
from kvmkit.block.formats.qcow2.l2_cache import L2Cache
from kvmkit.block.formats.qcow2.refcount import Refcounts
from kvmkit.block.protocols.file import FileProtocol
from kvmkit.errors import ImageError

BackingOpener = Callable[[str, str | None], BlockDriver]
PlanItem = tuple[int, int, Piece]  # (guest offset, length, piece it falls in)
_L2_CACHE_TABLES = 64
_STATUS_CLUSTERS = 4096
_unpack_entry = struct.Struct(">Q").unpack_from
_NOT_PLAIN_DATA = OFLAG_COMPRESSED | OFLAG_ZERO  # entries the fast path leaves to the general one


class Qcow2Driver(ClusterAllocation, BlockDriver):
    """A qcow2 v2/v3 image on a host file, with an optional read-only backing image."""

    name = "qcow2"

    def __init__(self, file: FileProtocol, *, open_backing: BackingOpener | None = None,
                 l2_cache_tables: int = _L2_CACHE_TABLES) -> None:
        self.file = file
        self.path = file.path
        self.read_only = file.read_only
        self.backing: BlockDriver | None = None
        self._lock = threading.RLock()
        self._inflight = 0
        self._dirty_marked = False
        self._compress_cursor = 0
        self._compress_end = 0
        file_size = file.size
        probe = file.read_bytes(0, ctypes.sizeof(HeaderV2))
        bits = HeaderV2.from_buffer_copy(probe).cluster_bits
        first = file.read_bytes(0, 1 << min(max(bits, 9), 21))
        self.header: Qcow2Header = parse_header(first, file_size, self.path)
        self._check_features()
        h = self.header.fields
        self.geometry = Geometry(h.cluster_bits, bool(h.incompatible_features & Incompatible.EXTENDED_L2))
        self.cluster_size = self.geometry.cluster_size
        self.l2_cache = L2Cache(l2_cache_tables)
        raw_l1 = file.read_bytes(h.l1_table_offset, h.l1_size * 8)
        self.l1 = list(struct.unpack(f">{h.l1_size}Q", raw_l1))
        self.refcounts = Refcounts(
            file, h.cluster_bits, h.refcount_order, h.refcount_table_offset, h.refcount_table_clusters,
            path=self.path, on_table_moved=self._refcount_table_moved,
            lazy=bool(h.compatible_features & COMPATIBLE_LAZY_REFCOUNTS),
        )
        self._metadata = self._collect_metadata(file_size)
        self._file_clusters = -(-file_size // self.cluster_size)  # refreshed by _check_host_range; files only grow
        if self.header.backing_file and open_backing is not None:
            self.backing = open_backing(self.header.backing_file, self.header.backing_format)
        if h.incompatible_features & Incompatible.DIRTY and not self.read_only:
            self._repair_after_crash()

    # opening -------------------------------------------------------------------------------

    def _check_features(self) -> None:
        message = unknown_feature_message(self.header, self.path)
        if message:
            raise ImageError(message)
        h = self.header.fields
        if h.incompatible_features & Incompatible.DATA_FILE:
            raise ImageError(f"{self.path}: qcow2 images with an external data file are not supported")
        if not self.read_only and h.incompatible_features & Incompatible.CORRUPT:
            raise ImageError(f"{self.path}: image is marked corrupt; it can only be opened read-only")
        if not self.read_only and h.nb_snapshots:
            raise ImageError(f"{self.path}: writing images with internal snapshots is not supported")

    def _collect_metadata(self, file_size: int) -> set[int]:
        """Cluster indices holding metadata; data clusters must never point at these."""
        h = self.header.fields
        bits = h.cluster_bits
        fixed: dict[int, str] = {0: "header"}
        for cluster in self._span(h.l1_table_offset, h.l1_size * 8):
            fixed[cluster] = "L1 table"
        for cluster in self.refcounts.table_cluster_indices():
            if cluster in fixed:
                raise ImageError(f"{self.path}: refcount table overlaps the {fixed[cluster]}")
            fixed[cluster] = "refcount table"
        for offset in self.refcounts.block_offsets():
            if offset >> bits in fixed:
                raise ImageError(f"{self.path}: refcount block at {offset:#x} overlaps the "
                                 f"{fixed[offset >> bits]}")
            fixed[offset >> bits] = "refcount block"
        limit = -(-file_size // self.cluster_size)
        for index, entry in enumerate(self.l1):
            offset = entry & L1E_OFFSET_MASK
            if entry & L1E_RESERVED_MASK:
                raise ImageError(f"{self.path}: L1 entry {index} has reserved bits set ({entry:#x})")
            if not offset:
                continue
            if offset >> bits >= limit:
                raise ImageError(f"{self.path}: L2 table {index} at {offset:#x} lies beyond the end "
                                 f"of the file")
            if offset >> bits in fixed:
                raise ImageError(f"{self.path}: L2 table {index} at {offset:#x} overlaps the "
                                 f"{fixed[offset >> bits]}")
        return set(fixed) | {(e & L1E_OFFSET_MASK) >> bits for e in self.l1 if e & L1E_OFFSET_MASK}

    def _span(self, offset: int, length: int) -> range:
        first = offset // self.cluster_size
        return range(first, first + -(-length // self.cluster_size))

    def _repair_after_crash(self) -> None:
        from kvmkit.block.formats.qcow2.check import check_qcow2

        result = check_qcow2(self, repair_leaks=True, repair_errors=True)
        if result.corruptions > result.corruptions_fixed:
            raise ImageError(f"{self.path}: dirty image could not be repaired: {result.messages[0]}")
        self.refcounts.write_back()
        self.file.flush()
        self.header.fields.incompatible_features &= ~Incompatible.DIRTY
        self._write_header()
        self.file.flush()

    # BlockDriver ---------------------------------------------------------------------------

    @property
    def size(self) -> int:
        return int(self.header.fields.size)

    def pread(self, offset: int, bufs: Sequence[Buffer]) -> None:
        length = buffers_length(bufs)
        if offset < 0 or offset + length > self.header.fields.size:
            self.check_request(offset, length, "read")
        lock = self._lock
        with lock:
            self._inflight += 1
        try:
            with lock:
                runs = self._data_runs(offset, length)
                plan = self._plan(offset, length) if runs is None else None
            if runs is not None and len(runs) == 1:
                self.file.read_at(runs[0][0], bufs, length)  # one host run: straight into the caller's buffers
                return
            views = flat_views(bufs)
            if runs is None:
                self._execute_read(offset, views, plan)  # type: ignore[arg-type]
            else:
                read_at = self.file.read_at
                for host, start, n in runs:
                    read_at(host, slice_buffers(views, start, n))
        finally:
            with lock:
                self._inflight -= 1
                if not self._inflight:
                    self.refcounts.release_quarantine()

    def pwrite(self, offset: int, bufs: Sequence[Buffer]) -> None:
        length = buffers_length(bufs)
        if offset < 0 or offset + length > self.header.fields.size or self.read_only:
            self.check_request(offset, length, "write", write=True)
        lock = self._lock
        with lock:
            self._inflight += 1
        try:
            self._write(offset, bufs, length)
        finally:
            with lock:
                self._inflight -= 1
                if not self._inflight:
                    self.refcounts.release_quarantine()

    def flush(self) -> None:
        if self.read_only:
            return
        with self._lock:
            self.refcounts.write_back()
            self.file.flush()
            if self._dirty_marked:
                self.header.fields.incompatible_features &= ~Incompatible.DIRTY
                self._write_header()
                self.file.flush()
                self._dirty_marked = False

    def discard(self, offset: int, length: int) -> None:
        self.check_request(offset, length, "discard", write=True)
        with self._request():
            self._clear_clusters(offset, length, zero=False)

    def write_zeroes(self, offset: int, length: int) -> None:
        self.check_request(offset, length, "write-zeroes", write=True)
        with self._request():
            self._clear_clusters(offset, length, zero=True)

    def truncate(self, size: int) -> None:
        if self.read_only:
            raise ImageError(f"{self.path}: resize refused, the image is open read-only")
        with self._lock:
            if size < self.size:
                raise ImageError(f"{self.path}: shrinking a qcow2 image is not supported")
            self._grow_l1(-(-size // (self.cluster_size * self.geometry.l2_entries)))
            self.header.fields.size = size
            self._write_header()
            self.file.flush()

    def info(self) -> ImageInfo:
        h = self.header.fields
        return ImageInfo(
            format="qcow2",
            virtual_size=self.size,
            actual_size=self.file.actual_size(),
            cluster_size=self.cluster_size,
            backing_file=self.header.backing_file,
            backing_format=self.header.backing_format,
            dirty=bool(h.incompatible_features & Incompatible.DIRTY),
            format_specific={
                "compat": "0.10" if h.version == 2 else "1.1",
                "compression-type": COMPRESSION_NAMES.get(h.compression_type, str(h.compression_type)),
                "lazy-refcounts": bool(h.compatible_features & COMPATIBLE_LAZY_REFCOUNTS),
                "refcount-bits": 1 << h.refcount_order,
                "corrupt": bool(h.incompatible_features & Incompatible.CORRUPT),
                "extended-l2": self.geometry.extended_l2,
            },
        )

    def close(self) -> None:
        try:
            if not self.read_only:
                self.flush()
        finally:
            if self.backing is not None:
                self.backing.close()
            self.file.close()

    def block_status(self, offset: int, length: int) -> tuple[bool, int]:
        length = min(length, _STATUS_CLUSTERS * self.cluster_size)
        with self._lock:
            plan = self._plan(offset, length)
        status = None
        run = 0
        for guest, n, piece in plan:
            here = self._may_hold_data(guest, n, piece)
            if status is None:
                status = here
            elif here != status:
                break
            run += n
        return bool(status), run

    def _may_hold_data(self, guest: int, length: int, piece: Piece) -> bool:
        if piece.kind == Kind.ZERO:
            return False
        if piece.kind == Kind.UNALLOCATED:
            return self.backing is not None and guest < self.backing.size
        return True

    # extra API ------------------------------------------------------------------------------

    def write_compressed(self, offset: int, data: bytes) -> None:
        """Store one whole guest cluster compressed (used by `img convert -c`)."""
        if offset % self.cluster_size or len(data) > self.cluster_size:
            raise ImageError(f"{self.path}: compressed writes must cover one aligned cluster "
                             f"(offset {offset})")
        self.check_request(offset, len(data), "compressed write", write=True)
        cluster_data = bytes(data).ljust(self.cluster_size, b"\0")
        packed = compression.compress_cluster(cluster_data, self.header.fields.compression_type)
        if len(packed) >= self.cluster_size - 512:
            self.pwrite(offset, [bytearray(data)])
            return
        with self._request(), self._lock:
            self._begin_metadata_change()
            l2_offset, table = self._l2_for_write(offset // self.cluster_size // self.geometry.l2_entries)
            index = offset // self.cluster_size % self.geometry.l2_entries
            old_entry, _ = self._entry(table, index)
            host = self._compressed_space(len(packed))
            self.file.write_at(host, [packed])
            self._set_l2(l2_offset, table, index, self.geometry.compressed_entry(host, len(packed)), 0)
            self._release(old_entry)

    # planning and reading ------------------------------------------------------------------

    @contextlib.contextmanager
    def _request(self) -> Iterator[None]:
        with self._lock:
            self._inflight += 1
        try:
            yield
        finally:
            with self._lock:
                self._inflight -= 1
                if self._inflight == 0:
                    self.refcounts.release_quarantine()

    def _entry(self, table: bytearray, index: int) -> tuple[int, int]:
        if self.geometry.extended_l2:
            return struct.unpack_from(">QQ", table, index * 16)
        return struct.unpack_from(">Q", table, index * 8)[0], 0

    def _l2_table(self, l1_index: int) -> tuple[int, bytearray] | None:
        """The L2 table for an L1 slot, or None when unallocated (metadata lock held)."""
        if l1_index >= len(self.l1):
            raise ImageError(f"{self.path}: L1 index {l1_index} beyond the L1 table")
        offset = self.l1[l1_index] & L1E_OFFSET_MASK
        if not offset:
            return None
        table = self.l2_cache.get(offset)
        if table is None:
            table = self.file.read_bytes(offset, self.cluster_size)
            self.l2_cache.put(offset, table)
        return offset, table

    def _pieces(self, cluster: int, entry: int, bitmap: int) -> list[Piece]:
        """Decode and validate one L2 entry; ImageError when it points somewhere it must not."""
        pieces = decode_entry(self.geometry, entry, bitmap)
        for piece in pieces:
            if piece.kind == Kind.DATA:
                host = entry & L2E_OFFSET_MASK
                if host % self.cluster_size:
                    raise ImageError(f"{self.path}: L2 entry for guest cluster {cluster} points at unaligned "
                                     f"host offset {host:#x}")
                self._check_host_range(cluster, host, self.cluster_size)
            elif piece.kind == Kind.COMPRESSED:
                self._check_host_range(cluster, piece.host_offset, piece.compressed_length)
        return pieces

    def _check_host_range(self, cluster: int, host: int, length: int) -> None:
        first, last = host // self.cluster_size, (host + length - 1) // self.cluster_size
        file_clusters = self._file_clusters
        if first >= file_clusters:  # the file may have grown since the last look (it never shrinks)
            file_clusters = self._file_clusters = -(-self.file.size // self.cluster_size)
        if host == 0 or first >= file_clusters:
            raise ImageError(f"{self.path}: guest cluster {cluster} maps to host offset {host:#x}, "
                             f"outside the image file")
        for c in range(first, min(last, file_clusters - 1) + 1):
            if c in self._metadata:
                raise ImageError(f"{self.path}: guest cluster {cluster} maps to host offset {host:#x}, "
                                 f"which holds metadata")

    def _plan(self, offset: int, length: int) -> list[PlanItem]:
        cs = self.cluster_size
        per_l2 = self.geometry.l2_entries
        plan: list[PlanItem] = []
        pos, end = offset, offset + length
        while pos < end:
            cluster = pos // cs
            base = cluster * cs
            loaded = self._l2_table(cluster // per_l2)
            if loaded is None:
                span = min(end, (cluster // per_l2 + 1) * per_l2 * cs) - pos
                plan.append((pos, span, Piece(0, per_l2 * cs, Kind.UNALLOCATED)))
                pos += span
                continue
            entry, bitmap = self._entry(loaded[1], cluster % per_l2)
            for piece in self._pieces(cluster, entry, bitmap):
                lo, hi = max(pos, base + piece.start), min(end, base + piece.start + piece.length)
                if lo < hi:
                    plan.append((lo, hi - lo, piece))
            pos = base + cs
        return plan

    def _data_runs(self, offset: int, length: int, *, owned: bool = False) -> list[list[int]] | None:
        """Host runs [host, offset in request, length] when every cluster is plain data whose L2 table is cached
        (`owned`: also COPIED, so it can be written in place); None sends the caller to the general path, which
        loads tables and reports bad entries. Metadata lock held."""
        if self.geometry.extended_l2:
            return None
        bits = self.geometry.cluster_bits
        cs = self.cluster_size
        per_l2 = cs >> 3
        l1, tables = self.l1, self.l2_cache
        metadata, file_clusters = self._metadata, self._file_clusters
        runs: list[list[int]] = []
        last: list[int] | None = None
        pos, end = offset, offset + length
        while pos < end:
            cluster = pos >> bits
            l1_index = cluster // per_l2
            if l1_index >= len(l1):
                return None
            table = tables.get(l1[l1_index] & L1E_OFFSET_MASK)
            if table is None:
                return None
            entry = _unpack_entry(table, (cluster % per_l2) << 3)[0]
            host = entry & L2E_OFFSET_MASK
            if entry & _NOT_PLAIN_DATA or not host or host & (cs - 1) or (owned and not entry & OFLAG_COPIED):
                return None
            host_cluster = host >> bits
            if host_cluster >= file_clusters or host_cluster in metadata:
                return None
            within = pos & (cs - 1)
            n = min(cs - within, end - pos)
            if last is not None and last[0] + last[2] == host + within:
                last[2] += n
            else:
                last = [host + within, pos - offset, n]
                runs.append(last)
            pos += n
        return runs

    def _execute_read(self, offset: int, views: Sequence[memoryview], plan: list[PlanItem]) -> None:
        cs = self.cluster_size
        run_host = run_start = run_len = 0
        for guest, n, piece in [*plan, (offset + sum(v.nbytes for v in views), 0, Piece(0, 0, Kind.ZERO))]:
            if piece.kind == Kind.DATA:
                host = piece.host_offset + (guest % cs - piece.start)
                if run_len and run_host + run_len == host:
                    run_len += n
                    continue
                if run_len:
                    self.file.read_at(run_host, slice_buffers(views, run_start - offset, run_len))
                run_host, run_start, run_len = host, guest, n
                continue
            if run_len:
                self.file.read_at(run_host, slice_buffers(views, run_start - offset, run_len))
                run_len = 0
            if not n:
                continue
            target = slice_buffers(views, guest - offset, n)
            if piece.kind == Kind.ZERO:
                fill_zero(target)
            elif piece.kind == Kind.UNALLOCATED:
                self._read_backing(guest, target)
            else:
                data = self.file.read_bytes(piece.host_offset, piece.compressed_length)
                plain = compression.decompress_cluster(
                    bytes(data), cs, self.header.fields.compression_type,
                    f"{self.path}: guest cluster {guest // cs}")
                pos = guest % cs
                for v in target:
                    v[:] = plain[pos : pos + v.nbytes]
                    pos += v.nbytes

    def _read_backing(self, guest: int, views: list[memoryview]) -> None:
        backing_size = self.backing.size if self.backing is not None else 0
        n = sum(v.nbytes for v in views)
        covered = max(0, min(n, backing_size - guest))
        if covered and self.backing is not None:
            self.backing.pread(guest, slice_buffers(views, 0, covered))
        if covered < n:
            fill_zero(slice_buffers(views, covered, n - covered))

    # writing --------------------------------------------------------------------------------

    def _write(self, offset: int, bufs: Sequence[Buffer], length: int) -> None:
        cs = self.cluster_size
        with self._lock:
            runs = self._data_runs(offset, length, owned=True)
        if runs is not None and len(runs) == 1:  # already ours: no metadata change, write outside the lock
            self.file.write_at(runs[0][0], bufs, length)
            return
        views = flat_views(bufs)
        if runs is not None:
            for host, start, n in runs:
                self.file.write_at(host, slice_buffers(views, start, n))
            return
        direct: list[tuple[int, int, int]] = []  # (host, guest, length) for clusters we own
        fresh: list[FreshRun] = []
        try:
            with self._lock:
                self._map_write(offset, length, views, direct, fresh)
            # The fresh runs' data goes to host clusters that have refcount 1 and that no L2 entry points at
            # yet: no other request can allocate, read or write them, so the lock is not needed here, and
            # `_link_run` exposes them only after this write (reading the entries it replaces afresh).
            for run in fresh:
                self.file.write_at(run.host, slice_buffers(views, run.cluster * cs - offset, run.count * cs))
        except BaseException:
            with self._lock:
                for run in fresh:
                    self._free_new(run.host // cs, run.count)
            raise
        if fresh:
            with self._lock:
                for run in fresh:
                    self._link_run(run)
        self._write_direct(offset, views, direct)

    def _map_write(self, offset: int, length: int, views: list[memoryview], direct: list[tuple[int, int, int]],
                   fresh: list[FreshRun]) -> None:
        """Sort a write's clusters (metadata lock held): owned ones into `direct`, runs of whole clusters that
        need new host clusters into `fresh` (or done, when they needed new L2 tables), partial ones copied on
        write here."""
        cs = self.cluster_size
        per_l2 = self.geometry.l2_entries
        pos, end = offset, offset + length
        while pos < end:
            cluster, within = divmod(pos, cs)
            n = min(cs - within, end - pos)
            loaded = self._l2_table(cluster // per_l2)
            if loaded is not None:
                entry, bitmap = self._entry(loaded[1], cluster % per_l2)
                if fully_allocated(self.geometry, entry, bitmap):
                    self._pieces(cluster, entry, bitmap)
                    direct.append(((entry & L2E_OFFSET_MASK) + within, pos, n))
                    pos += n
                    continue
            if n == cs:  # whole clusters: no copy-on-write read, so a run of them is allocated at once
                count = self._replaceable_run(cluster, (end - pos) // cs)
                run = self._replace_clusters(cluster, count, slice_buffers(views, pos - offset, count * cs))
                if run is not None:
                    fresh.append(run)
                pos += count * cs
                continue
            self._cow_write(cluster, within, slice_buffers(views, pos - offset, n))
            pos += n

    def _write_direct(self, offset: int, views: list[memoryview], direct: list[tuple[int, int, int]]) -> None:
        """Write into clusters the image owns, one write per host-contiguous run."""
        run: list[int] = []
        for host, guest, n in direct:
            if run and run[0] + run[2] == host and run[1] + run[2] == guest:
                run[2] += n
                continue
            if run:
                self.file.write_at(run[0], slice_buffers(views, run[1] - offset, run[2]))
            run = [host, guest, n]
        if run:
            self.file.write_at(run[0], slice_buffers(views, run[1] - offset, run[2]))

    # header and L1 maintenance -----------------------------------------------------------------

    def _begin_metadata_change(self) -> None:
        """With lazy refcounts, mark the image dirty (durably) before the first unsynced change."""
        if self.refcounts.lazy and not self._dirty_marked and self.header.version >= 3:
            self.header.fields.incompatible_features |= Incompatible.DIRTY
            self._write_header()
            self.file.flush()
            self._dirty_marked = True

    def _write_header(self) -> None:
        self.file.write_at(0, [self.header.fixed_bytes()])

    def _refcount_table_moved(self, offset: int, clusters: int) -> None:
        old = set(self._span(self.header.fields.refcount_table_offset,
                             self.header.fields.refcount_table_clusters * self.cluster_size))
        self.header.fields.refcount_table_offset = offset
        self.header.fields.refcount_table_clusters = clusters
        self._write_header()
        self._metadata -= old
        self._metadata |= set(self._span(offset, clusters * self.cluster_size))
        self._metadata |= {o // self.cluster_size for o in self.refcounts.block_offsets()}
