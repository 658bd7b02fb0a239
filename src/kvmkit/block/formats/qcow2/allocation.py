"""Cluster allocation for the qcow2 driver: copy-on-write, runs of fresh clusters, L1/L2 updates, freeing,
compressed packing.

`ClusterAllocation` is mixed into `Qcow2Driver`; every method runs with the driver's metadata lock held.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, NamedTuple

from kvmkit.block.formats.qcow2.cluster_map import (
    L2E_OFFSET_MASK,
    OFLAG_COMPRESSED,
    OFLAG_COPIED,
    OFLAG_ZERO,
    SUBCLUSTER_ALL_ALLOCATED,
    SUBCLUSTER_ALL_ZERO,
    fully_allocated,
)
from kvmkit.errors import ImageError

if TYPE_CHECKING:
    from kvmkit.block.driver import BlockDriver
    from kvmkit.block.formats.qcow2.cluster_map import Geometry, Piece
    from kvmkit.block.formats.qcow2.header import Qcow2Header
    from kvmkit.block.formats.qcow2.l2_cache import L2Cache
    from kvmkit.block.formats.qcow2.refcount import Refcounts
    from kvmkit.block.protocols.file import FileProtocol


class FreshRun(NamedTuple):
    """Guest clusters [cluster, cluster + count) getting the contiguous host clusters that start at byte `host`."""

    cluster: int
    count: int
    host: int


class ClusterAllocation:
    """Metadata-changing operations of a qcow2 image (allocation, COW, zeroing, L1 growth)."""

    # provided by Qcow2Driver
    path: str
    file: FileProtocol
    header: Qcow2Header
    geometry: Geometry
    cluster_size: int
    refcounts: Refcounts
    l1: list[int]
    l2_cache: L2Cache
    backing: BlockDriver | None
    _metadata: set[int]
    _compress_cursor: int
    _compress_end: int

    if TYPE_CHECKING:
        size: int

        def _l2_table(self, l1_index: int) -> tuple[int, bytearray] | None: ...
        def _entry(self, table: bytearray, index: int) -> tuple[int, int]: ...
        def _pieces(self, cluster: int, entry: int, bitmap: int) -> list[Piece]: ...
        def _execute_read(self, offset: int, views: list[memoryview], plan: list) -> None: ...
        def _write(self, offset: int, views: list[memoryview], length: int) -> None: ...
        def _begin_metadata_change(self) -> None: ...
        def _write_header(self) -> None: ...

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

    def _replaceable_run(self, cluster: int, limit: int) -> int:
        """How many guest clusters from `cluster` on (at most `limit`) a whole-cluster write gives fresh host
        clusters: every one the image does not own outright. Their entries are validated on the way."""
        per_l2 = self.geometry.l2_entries
        count = 0
        while count < limit:
            c = cluster + count
            loaded = self._l2_table(c // per_l2)
            if loaded is not None:
                entry, bitmap = self._entry(loaded[1], c % per_l2)
                if count and fully_allocated(self.geometry, entry, bitmap):
                    break
                self._pieces(c, entry, bitmap)
            count += 1
        return count

    def _replace_clusters(self, cluster: int, count: int, views: list[memoryview]) -> FreshRun | None:
        """Start giving whole guest clusters [cluster, cluster + count) new contiguous host clusters for `views`.

        Refcounts come first (one allocation). When every L2 table involved exists, the run is returned: the
        caller writes its data, then calls `_link_run`. A run that needs new L2 tables is finished here: they
        are allocated just before its data, written together with it in one write, and only then linked from
        the L1 table (so no L2 entry is reachable before the data it exposes)."""
        cs = self.cluster_size
        per_l2 = self.geometry.l2_entries
        self._begin_metadata_change()
        l1_indices = range(cluster // per_l2, (cluster + count - 1) // per_l2 + 1)
        new = [i for i in l1_indices if self._l2_table(i) is None]
        for i in l1_indices:
            if i not in new:
                self._l2_for_write(i)  # refuses shared tables before anything is allocated
        first = self.refcounts.allocate(len(new) + count)
        run = FreshRun(cluster, count, (first + len(new)) * cs)
        if not new:
            return run
        tables = [bytearray(cs) for _ in new]
        for i, table in zip(new, tables, strict=True):
            lo, hi = max(cluster, i * per_l2), min(cluster + count, (i + 1) * per_l2)
            start = lo % per_l2 * self.geometry.entry_size
            table[start : start + (hi - lo) * self.geometry.entry_size] = self._fresh_entries(
                run.host + (lo - cluster) * cs, hi - lo)
        try:
            self.file.write_at(first * cs, [*tables, *views])
        except BaseException:
            self._free_new(first, len(new) + count)
            raise
        for k, table in enumerate(tables):
            self._metadata.add(first + k)
            self.l2_cache.put((first + k) * cs, table)
        self._set_l1_entries({i: (first + k) * cs | OFLAG_COPIED for k, i in enumerate(new)})
        self._link_run(run, skip=set(new))
        return None

    def _link_run(self, run: FreshRun, skip: set[int] | frozenset[int] = frozenset()) -> None:
        """Point the run's L2 entries at its (written) host clusters, one write per L2 table, then release the
        old entries. Entries are read now, not when the run was planned: a concurrent request may have
        replaced them meanwhile, and whatever they hold now is what this write supersedes."""
        cs = self.cluster_size
        per_l2 = self.geometry.l2_entries
        size = self.geometry.entry_size
        self._begin_metadata_change()  # a flush since the run was planned may have marked the image clean
        old: list[int] = []
        cluster, end = run.cluster, run.cluster + run.count
        while cluster < end:
            l1_index = cluster // per_l2
            stop = min(end, (l1_index + 1) * per_l2)
            if l1_index not in skip:
                l2_offset, table = self._l2_for_write(l1_index)
                first = cluster % per_l2
                old += [self._entry(table, i)[0] for i in range(first, first + stop - cluster)]
                raw = self._fresh_entries(run.host + (cluster - run.cluster) * cs, stop - cluster)
                table[first * size : first * size + len(raw)] = raw
                self.file.write_at(l2_offset + first * size, [raw])
            cluster = stop
        for entry in old:
            self._release(entry)

    def _free_new(self, first: int, count: int) -> None:
        """Give back host clusters allocated for a write that failed before anything pointed at them."""
        for cluster in range(first, first + count):
            self.refcounts.decrement(cluster)

    def _fresh_entries(self, host: int, count: int) -> bytes:
        """L2 entries (with subcluster bitmaps when extended) for `count` owned clusters from host byte `host`."""
        entries = [(host + k * self.cluster_size) | OFLAG_COPIED for k in range(count)]
        if not self.geometry.extended_l2:
            return struct.pack(f">{count}Q", *entries)
        return struct.pack(f">{2 * count}Q", *[v for e in entries for v in (e, SUBCLUSTER_ALL_ALLOCATED)])

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
        self._set_l1_entries({index: value})

    def _set_l1_entries(self, values: dict[int, int]) -> None:
        """Store L1 entries, one write per run of consecutive indices."""
        indices = sorted(values)
        while indices:
            n = 1
            while n < len(indices) and indices[n] == indices[0] + n:
                n += 1
            run = indices[:n]
            for i in run:
                self.l1[i] = values[i]
            raw = struct.pack(f">{n}Q", *(values[i] for i in run))
            self.file.write_at(self.header.fields.l1_table_offset + run[0] * 8, [raw])
            indices = indices[n:]

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
