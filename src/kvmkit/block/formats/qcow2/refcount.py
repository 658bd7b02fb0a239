"""qcow2 refcounts: the refcount table, refcount blocks, and host cluster allocation.

The caller holds the image's metadata lock around every call. With lazy refcounts, block updates stay in
memory until `write_back()`; otherwise each change is written through before the caller uses the cluster.
"""

from __future__ import annotations

from collections.abc import Callable

from kvmkit.block.protocols.file import FileProtocol
from kvmkit.errors import ImageError

OFFSET_MASK = 0xFFFF_FFFF_FFFF_FE00
_MAX_HOLES = 16  # free stretches too short for a run before allocate() goes to the end of the used clusters


class Refcounts:
    """Reference counts of every host cluster, and the allocator built on them."""

    def __init__(
        self,
        file: FileProtocol,
        cluster_bits: int,
        order: int,
        table_offset: int,
        table_clusters: int,
        *,
        path: str,
        on_table_moved: Callable[[int, int], None],
        lazy: bool = False,
    ) -> None:
        self.file = file
        self.path = path
        self.cluster_bits = cluster_bits
        self.cluster_size = 1 << cluster_bits
        self.bits = 1 << order
        self.max_refcount = (1 << self.bits) - 1
        self.entries_per_block = self.cluster_size * 8 // self.bits
        self.lazy = lazy
        self._on_table_moved = on_table_moved
        self.table_offset = table_offset
        self.table_clusters = table_clusters
        raw = file.read_bytes(table_offset, table_clusters * self.cluster_size)
        self.table = [int.from_bytes(raw[i : i + 8], "big") for i in range(0, len(raw), 8)]
        file_clusters = -(-file.size // self.cluster_size)
        for index, entry in enumerate(self.table):
            if entry & ~OFFSET_MASK:
                raise ImageError(f"{path}: refcount block {index} at {entry:#x} is not cluster aligned")
            if entry and (entry >> cluster_bits) >= file_clusters:
                raise ImageError(f"{path}: refcount block {index} at {entry:#x} lies beyond the end "
                                 f"of the file")
        self._blocks: dict[int, bytearray] = {}
        self._dirty_blocks: set[int] = set()
        self._free_hint = 0
        self.quarantine: set[int] = set()
        self.top = max(file_clusters, 1)

    # reading -------------------------------------------------------------------------------

    def block_offsets(self) -> list[int]:
        """Host offsets of every refcount block in use."""
        return [entry & OFFSET_MASK for entry in self.table if entry & OFFSET_MASK]

    def table_cluster_indices(self) -> range:
        first = self.table_offset >> self.cluster_bits
        return range(first, first + self.table_clusters)

    def covered_clusters(self) -> int:
        """How many cluster indices the current table can describe."""
        return len(self.table) * self.entries_per_block

    def get(self, cluster: int) -> int:
        block = self._block(cluster // self.entries_per_block)
        return 0 if block is None else self._entry(block, cluster % self.entries_per_block)

    def _block(self, index: int) -> bytearray | None:
        if index >= len(self.table):
            return None
        cached = self._blocks.get(index)
        if cached is not None:
            return cached
        offset = self.table[index] & OFFSET_MASK
        if not offset:
            return None
        block = self.file.read_bytes(offset, self.cluster_size)
        self._blocks[index] = block
        return block

    def _entry(self, block: bytearray, i: int) -> int:
        if self.bits >= 8:
            width = self.bits // 8
            return int.from_bytes(block[i * width : (i + 1) * width], "big")
        per_byte = 8 // self.bits
        return (block[i // per_byte] >> ((i % per_byte) * self.bits)) & self.max_refcount

    # writing -------------------------------------------------------------------------------

    def set(self, cluster: int, value: int) -> None:
        """Store a refcount, creating the refcount block that holds it when needed."""
        if not 0 <= value <= self.max_refcount:
            raise ImageError(f"{self.path}: refcount of cluster {cluster} would overflow {self.bits} bits")
        index = cluster // self.entries_per_block
        block = self._block(index)
        if block is None:
            if value == 0:
                return
            self._create_block_elsewhere(index)
            block = self._block(index)
            assert block is not None
        i = cluster % self.entries_per_block
        start, end = self._store(block, i, i + 1, value)
        if value:
            self.top = max(self.top, cluster + 1)
        self._write_block_bytes(index, start, end)

    def _store(self, block: bytearray, first: int, stop: int, value: int) -> tuple[int, int]:
        """Set entries [first, stop) of a block in memory; returns the byte range that changed."""
        if self.bits >= 8:
            width = self.bits // 8
            block[first * width : stop * width] = value.to_bytes(width, "big") * (stop - first)
            return first * width, stop * width
        per_byte = 8 // self.bits
        for i in range(first, stop):
            shift = (i % per_byte) * self.bits
            at = i // per_byte
            block[at] = (block[at] & ~(self.max_refcount << shift)) | (value << shift)
        return first // per_byte, (stop - 1) // per_byte + 1

    def _write_block_bytes(self, index: int, start: int, end: int) -> None:
        """Write changed bytes of a block through (or, with lazy refcounts, remember the block as dirty)."""
        if self.lazy:
            self._dirty_blocks.add(index)
        else:
            self.file.write_at((self.table[index] & OFFSET_MASK) + start, [memoryview(self._blocks[index])[start:end]])

    def increment(self, cluster: int) -> None:
        self.set(cluster, self.get(cluster) + 1)

    def decrement(self, cluster: int) -> None:
        """Drop one reference; a cluster reaching zero stays unused until `release_quarantine()`."""
        current = self.get(cluster)
        if current == 0:
            raise ImageError(f"{self.path}: refcount of cluster {cluster} would drop below zero")
        self.set(cluster, current - 1)
        if current == 1:
            self.quarantine.add(cluster)
            self._free_hint = min(self._free_hint, cluster)

    def release_quarantine(self) -> None:
        """Freed clusters become allocatable once no request that might still use them is in flight."""
        if self.quarantine:
            self._free_hint = min(self._free_hint, min(self.quarantine))
            self.quarantine.clear()

    def write_back(self) -> None:
        """Write every block changed in lazy mode."""
        for index in sorted(self._dirty_blocks):
            self.file.write_at(self.table[index] & OFFSET_MASK, [self._blocks[index]])
        self._dirty_blocks.clear()

    def forget_cache(self) -> None:
        self._blocks.clear()
        self._dirty_blocks.clear()

    # allocation ----------------------------------------------------------------------------

    def allocate(self, count: int = 1) -> int:
        """Give `count` contiguous free clusters refcount 1 (one write per refcount block) and return the first.

        First fit from the free hint; after _MAX_HOLES free stretches too short for the run, the search moves to
        the end of the used clusters. Only clusters whose refcount is 0 (and not quarantined) are ever taken."""
        candidate = self._free_hint = self._next_free(self._free_hint)
        holes = 0
        while (blocker := self._first_unusable(candidate, count)) is not None:
            holes += 1
            candidate = self._next_free(blocker + 1 if holes < _MAX_HOLES else max(blocker + 1, self.top))
        self._set_run(candidate, count, 1)
        if candidate == self._free_hint:
            self._free_hint = candidate + count
        return candidate

    def _next_free(self, cluster: int) -> int:
        """The first allocatable cluster from `cluster` on (creating missing refcount blocks on the way)."""
        cluster = max(cluster, 1)
        while True:
            index = cluster // self.entries_per_block
            block = self._block(index)
            if block is None:
                self._cover(cluster)
                continue
            if not self._entry(block, cluster % self.entries_per_block) and cluster not in self.quarantine:
                return cluster
            cluster += 1

    def _first_unusable(self, first: int, count: int) -> int | None:
        """The first cluster of [first, first + count) that cannot be allocated, or None when all can."""
        end = first + count
        quarantined = min((c for c in self.quarantine if first <= c < end), default=None)
        cluster = first
        while cluster < end:
            index = cluster // self.entries_per_block
            block = self._block(index)
            if block is None:
                if index >= len(self.table):
                    self._grow_table(index + 1)  # the table may land inside the run: look again
                    return self._first_unusable(first, count)
                self._place_block(index, first)  # in the run's (free) first cluster: the run then starts after it
                return first
            stop = min(end, (index + 1) * self.entries_per_block)
            used = self._first_used(block, cluster % self.entries_per_block, stop - index * self.entries_per_block)
            if used is not None:
                cluster = index * self.entries_per_block + used
                return cluster if quarantined is None else min(cluster, quarantined)
            cluster = stop
        return quarantined

    def _first_used(self, block: bytearray, first: int, stop: int) -> int | None:
        """Index of the first nonzero entry in [first, stop) of a block (whole zero byte ranges checked at once)."""
        if self.bits >= 8:
            width = self.bits // 8
            raw = block[first * width : stop * width]
            zeros = len(raw) - len(raw.lstrip(b"\0"))
            return None if zeros == len(raw) else first + zeros // width
        return next((i for i in range(first, stop) if self._entry(block, i)), None)

    def _cover(self, cluster: int) -> None:
        """Make a refcount block describe `cluster`: grow the table, or put the block in `cluster` itself."""
        index = cluster // self.entries_per_block
        if index >= len(self.table):
            self._grow_table(index + 1)
        else:
            self._create_block_at(cluster)

    def _set_run(self, first: int, count: int, value: int) -> None:
        """Set the refcounts of clusters [first, first + count), whose blocks exist: one write per block."""
        cluster, end = first, first + count
        while cluster < end:
            index = cluster // self.entries_per_block
            base = index * self.entries_per_block
            stop = min(end, base + self.entries_per_block)
            block = self._block(index)
            assert block is not None
            start, stop_byte = self._store(block, cluster - base, stop - base, value)
            self._write_block_bytes(index, start, stop_byte)
            cluster = stop
        if value and count:
            self.top = max(self.top, end)

    def _create_block_at(self, cluster: int) -> None:
        """Put the missing refcount block covering `cluster` into `cluster` itself (it counts itself)."""
        self._place_block(cluster // self.entries_per_block, cluster)

    def _place_block(self, index: int, cluster: int) -> None:
        """Put missing refcount block `index` into free `cluster`, whose own block exists or is this one."""
        block = bytearray(self.cluster_size)
        self._blocks[index] = block
        offset = cluster << self.cluster_bits
        self.file.write_at(offset, [block])
        self._set_table_entry(index, offset)
        self.set(cluster, 1)

    def _create_block_elsewhere(self, index: int) -> None:
        if index >= len(self.table):
            self._grow_table(index + 1)
            if self._block(index) is not None:
                return
        first = index * self.entries_per_block
        if first >= self.top:
            self._create_block_at(max(first, 1))
            return
        cluster = self.allocate(1)
        if self._block(index) is not None:  # allocating created it (self-referencing block)
            self.decrement(cluster)
            return
        self._blocks[index] = bytearray(self.cluster_size)
        self.file.write_at(cluster << self.cluster_bits, [self._blocks[index]])
        self._set_table_entry(index, cluster << self.cluster_bits)

    def _set_table_entry(self, index: int, offset: int) -> None:
        self.table[index] = offset
        self.file.write_at(self.table_offset + index * 8, [offset.to_bytes(8, "big")])

    def _grow_table(self, min_entries: int) -> None:
        """Move the refcount table to a larger place past every used cluster, with blocks covering it."""
        per_cluster = self.cluster_size // 8
        entries = max(min_entries, 2 * len(self.table))
        start = self.top
        while True:
            table_clusters = -(-entries // per_cluster)
            new_blocks = 0
            while True:
                last = start + new_blocks + table_clusters - 1
                missing = [
                    i for i in range(start // self.entries_per_block, last // self.entries_per_block + 1)
                    if i >= len(self.table) or not self.table[i] & OFFSET_MASK
                ]
                if len(missing) == new_blocks:
                    break
                new_blocks = len(missing)
            if last // self.entries_per_block < table_clusters * per_cluster:
                break
            entries = last // self.entries_per_block + 1
        new_table = self.table + [0] * (table_clusters * per_cluster - len(self.table))
        for n, index in enumerate(missing):
            new_table[index] = (start + n) << self.cluster_bits
            self._blocks[index] = bytearray(self.cluster_size)
        old_table = (self.table_offset, self.table_clusters)
        self.table = new_table
        table_start = start + new_blocks
        for cluster in range(start, table_start + table_clusters):
            self._store_without_write(cluster, 1)
        for n, index in enumerate(missing):
            self.file.write_at((start + n) << self.cluster_bits, [self._blocks[index]])
        raw = b"".join(e.to_bytes(8, "big") for e in new_table)
        self.file.write_at(table_start << self.cluster_bits, [raw])
        self.file.flush()
        self.table_offset = table_start << self.cluster_bits
        self.table_clusters = table_clusters
        self.top = max(self.top, table_start + table_clusters)
        self._on_table_moved(self.table_offset, table_clusters)
        first_old = old_table[0] >> self.cluster_bits
        for cluster in range(first_old, first_old + old_table[1]):
            self.decrement(cluster)

    def _store_without_write(self, cluster: int, value: int) -> None:
        """Set a refcount in a block that is about to be (or already was) written in full."""
        lazy, self.lazy = self.lazy, True
        try:
            self.set(cluster, value)
        finally:
            self.lazy = lazy
        if not lazy:
            index = cluster // self.entries_per_block
            self.file.write_at(self.table[index] & OFFSET_MASK, [self._blocks[index]])
            self._dirty_blocks.discard(index)
