"""The qcow2 block driver: synchronous and re-entrant.

One metadata lock guards the L1/L2 tables, the L2 cache and the refcounts (allocation, copy-on-write, L2
updates). Data reads, and writes to clusters the image already owns exclusively, run outside it, so many
worker threads proceed in parallel. Clusters freed while requests are in flight stay quarantined (not
reallocated) until the image goes idle, so a concurrent reader never sees a reused cluster.
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
    fill_zero,
    flat_views,
    slice_buffers,
)
from kvmkit.block.formats.qcow2 import compressed as compression
from kvmkit.block.formats.qcow2.cluster_map import (
    L1E_OFFSET_MASK,
    L1E_RESERVED_MASK,
    L2E_OFFSET_MASK,
    OFLAG_COMPRESSED,
    OFLAG_COPIED,
    OFLAG_ZERO,
    SUBCLUSTER_ALL_ALLOCATED,
    SUBCLUSTER_ALL_ZERO,
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


class Qcow2Driver(BlockDriver):
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
        if h.compression_type and not compression.zstd_available():
            pass  # readable except for compressed clusters; reading one reports the missing package
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
        views = flat_views(bufs)
        length = sum(v.nbytes for v in views)
        self.check_request(offset, length, "read")
        with self._request():
            with self._lock:
                plan = self._plan(offset, length)
            self._execute_read(offset, views, plan)

    def pwrite(self, offset: int, bufs: Sequence[Buffer]) -> None:
        views = flat_views(bufs)
        length = sum(v.nbytes for v in views)
        self.check_request(offset, length, "write", write=True)
        with self._request():
            self._write(offset, views, length)

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
        file_clusters = -(-self.file.size // self.cluster_size)
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

    def _write(self, offset: int, views: list[memoryview], length: int) -> None:
        cs = self.cluster_size
        per_l2 = self.geometry.l2_entries
        direct: list[tuple[int, int, int]] = []  # (host, guest, length) for clusters we own
        with self._lock:
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
                self._cow_write(cluster, within, slice_buffers(views, pos - offset, n))
                pos += n
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

    def _cow_write(self, cluster: int, within: int, views: list[memoryview]) -> None:
        """Give a guest cluster a fresh host cluster holding its old content overlaid with `views`."""
        cs = self.cluster_size
        per_l2 = self.geometry.l2_entries
        self._begin_metadata_change()
        l2_offset, table = self._l2_for_write(cluster // per_l2)
        index = cluster % per_l2
        entry, bitmap = self._entry(table, index)
        pieces = self._pieces(cluster, entry, bitmap)
        content = bytearray(cs)
        n = sum(v.nbytes for v in views)
        if within or n != cs:
            base = cluster * cs
            self._execute_read(base, [memoryview(content)], [(base + p.start, p.length, p) for p in pieces])
        pos = within
        for v in views:
            content[pos : pos + v.nbytes] = v
            pos += v.nbytes
        host = self.refcounts.allocate(1) * cs
        self.file.write_at(host, [content])
        self._set_l2(l2_offset, table, index, host | OFLAG_COPIED,
                     SUBCLUSTER_ALL_ALLOCATED if self.geometry.extended_l2 else 0)
        self._release(entry)

    def _l2_for_write(self, l1_index: int) -> tuple[int, bytearray]:
        """The L2 table for an L1 slot, allocated (zeroed) when missing."""
        loaded = self._l2_table(l1_index)
        if loaded is not None:
            offset, table = loaded
            if not self.l1[l1_index] & OFLAG_COPIED:
                if self.refcounts.get(offset // self.cluster_size) != 1:
                    raise ImageError(f"{self.path}: L2 table at {offset:#x} is shared; not "
                                     f"supported for writing")
                self._set_l1(l1_index, offset | OFLAG_COPIED)
            return offset, table
        self._begin_metadata_change()
        cluster = self.refcounts.allocate(1)
        offset = cluster * self.cluster_size
        table = bytearray(self.cluster_size)
        self.file.write_at(offset, [table])
        self._metadata.add(cluster)
        self.l2_cache.put(offset, table)
        self._set_l1(l1_index, offset | OFLAG_COPIED)
        return offset, table

    def _set_l1(self, index: int, value: int) -> None:
        self.l1[index] = value
        self.file.write_at(self.header.fields.l1_table_offset + index * 8, [value.to_bytes(8, "big")])

    def _set_l2(self, l2_offset: int, table: bytearray, index: int, entry: int, bitmap: int) -> None:
        raw = struct.pack(">QQ", entry, bitmap) if self.geometry.extended_l2 else struct.pack(">Q", entry)
        at = index * len(raw)
        table[at : at + len(raw)] = raw
        self.file.write_at(l2_offset + at, [raw])

    def _release(self, entry: int) -> None:
        """Drop the references an old L2 entry held."""
        if entry & OFLAG_COMPRESSED:
            offset, length = self.geometry.compressed_location(entry)
            for cluster in range(offset // self.cluster_size, (offset + length - 1) // self.cluster_size + 1):
                self.refcounts.decrement(cluster)
        elif entry & L2E_OFFSET_MASK:
            self.refcounts.decrement((entry & L2E_OFFSET_MASK) // self.cluster_size)

    def _compressed_space(self, length: int) -> int:
        """Host bytes for compressed data, packed after the previous compressed cluster when it fits."""
        cs = self.cluster_size
        start = self._compress_cursor
        if start and start + length <= self._compress_end:
            for cluster in range(start // cs, (start + length - 1) // cs + 1):
                self.refcounts.increment(cluster)
        else:
            clusters = -(-length // cs)
            start = self.refcounts.allocate(clusters) * cs
            self._compress_end = start + clusters * cs
        self._compress_cursor = start + length
        return start

    def _clear_clusters(self, offset: int, length: int, *, zero: bool) -> None:
        cs = self.cluster_size
        end = offset + length
        first = -(-offset // cs)
        stop = -(-end // cs) if end == self.size else end // cs
        has_zero_flag = self.header.version >= 3
        if first >= stop or (zero and not has_zero_flag and self.backing is not None):
            first = stop = 0
            partial = [(offset, end)]
        else:
            partial = [(offset, first * cs), (min(stop * cs, end), end)]
        if zero:
            for lo, hi in partial:
                if lo < hi:
                    self._write(lo, [memoryview(bytes(hi - lo))], hi - lo)
        per_l2 = self.geometry.l2_entries
        with self._lock:
            for cluster in range(first, stop):
                if self.backing is not None and has_zero_flag:
                    entry, bitmap = (0, SUBCLUSTER_ALL_ZERO) if self.geometry.extended_l2 else (OFLAG_ZERO, 0)
                else:
                    entry, bitmap = 0, 0
                loaded = self._l2_table(cluster // per_l2)
                if loaded is None and entry == 0 and bitmap == 0:
                    continue
                self._begin_metadata_change()
                l2_offset, table = self._l2_for_write(cluster // per_l2)
                old, _ = self._entry(table, cluster % per_l2)
                self._pieces(cluster, *self._entry(table, cluster % per_l2))
                self._set_l2(l2_offset, table, cluster % per_l2, entry, bitmap)
                self._release(old)

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

    def _grow_l1(self, entries: int) -> None:
        h = self.header.fields
        if entries <= len(self.l1):
            return
        old_clusters = -(-len(self.l1) * 8 // self.cluster_size)
        added = [0] * (entries - len(self.l1))
        if entries * 8 <= old_clusters * self.cluster_size:
            self.file.write_at(h.l1_table_offset + len(self.l1) * 8, [bytes(len(added) * 8)])
            self.l1 += added
        else:
            new_l1 = self.l1 + added
            clusters = -(-entries * 8 // self.cluster_size)
            first = self.refcounts.allocate(clusters)
            self.file.write_at(first * self.cluster_size, [struct.pack(f">{entries}Q", *new_l1)])
            self.file.flush()
            old_offset = h.l1_table_offset
            h.l1_table_offset = first * self.cluster_size
            self.l1 = new_l1
            self._metadata |= set(range(first, first + clusters))
            h.l1_size = entries
            self._write_header()
            self.file.flush()
            old_first = old_offset // self.cluster_size
            for cluster in range(old_first, old_first + old_clusters):
                self._metadata.discard(cluster)
                self.refcounts.decrement(cluster)
        h.l1_size = entries
