"""Consistency check of a qcow2 image: recount every reference and compare with the stored refcounts.

Stored refcounts higher than the references are leaks (space lost, harmless); lower ones, or metadata
pointing outside the file or at misaligned offsets, are corruptions.
"""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kvmkit.block.formats.qcow2.cluster_map import (
    L1E_OFFSET_MASK,
    L1E_RESERVED_MASK,
    L2E_OFFSET_MASK,
    OFLAG_COMPRESSED,
    OFLAG_COPIED,
    SUBCLUSTER_ALL_ALLOCATED,
)

if TYPE_CHECKING:
    from kvmkit.block.formats.qcow2.driver import Qcow2Driver


@dataclass
class CheckResult:
    """What `img check` reports, with qemu-img's categories."""

    corruptions: int = 0
    leaks: int = 0
    check_errors: int = 0
    corruptions_fixed: int = 0
    leaks_fixed: int = 0
    image_end_offset: int = 0
    total_clusters: int = 0
    allocated_clusters: int = 0
    fragmented_clusters: int = 0
    compressed_clusters: int = 0
    messages: list[str] = field(default_factory=list)


class _Walker:
    def __init__(self, driver: Qcow2Driver, result: CheckResult) -> None:
        self.driver = driver
        self.result = result
        self.cs = driver.cluster_size
        self.file_clusters = -(-driver.file.size // self.cs)
        self.expected: Counter[int] = Counter()
        self.copied_flags: list[tuple[str, int, bool]] = []  # (what, host cluster, flag set)

    def corrupt(self, message: str) -> None:
        self.result.corruptions += 1
        self.result.messages.append(f"ERROR {message}")

    def ref(self, offset: int, length: int, what: str) -> bool:
        first, last = offset // self.cs, (offset + max(length, 1) - 1) // self.cs
        if last >= self.file_clusters:
            self.corrupt(f"{what} at {offset:#x} lies beyond the end of the file")
            return False
        for cluster in range(first, last + 1):
            self.expected[cluster] += 1
        return True

    def walk(self) -> None:
        d = self.driver
        h = d.header.fields
        self.ref(0, self.cs, "header")
        self.ref(h.l1_table_offset, h.l1_size * 8, "L1 table")
        self.ref(h.refcount_table_offset, h.refcount_table_clusters * self.cs, "refcount table")
        for offset in d.refcounts.block_offsets():
            self.ref(offset, self.cs, "refcount block")
        if h.nb_snapshots:
            self.result.check_errors += 1
            self.result.messages.append("images with internal snapshots are only partly checked")
        previous_host = -1
        for l1_index, l1_entry in enumerate(d.l1):
            l2_offset = l1_entry & L1E_OFFSET_MASK
            if not l2_offset:
                continue
            if l1_entry & L1E_RESERVED_MASK or l2_offset % self.cs:
                self.corrupt(f"L1 entry {l1_index} ({l1_entry:#x}) is misaligned or has reserved bits")
                continue
            if not self.ref(l2_offset, self.cs, f"L2 table {l1_index}"):
                continue
            self.copied_flags.append((f"L2 table at {l2_offset:#x}", l2_offset // self.cs,
                                      bool(l1_entry & OFLAG_COPIED)))
            table = d.file.read_bytes(l2_offset, self.cs)
            previous_host = self.walk_l2(l1_index, table, previous_host)

    def walk_l2(self, l1_index: int, table: bytearray, previous_host: int) -> int:
        g = self.driver.geometry
        for index in range(g.l2_entries):
            if g.extended_l2:
                entry, bitmap = struct.unpack_from(">QQ", table, index * 16)
            else:
                entry, bitmap = struct.unpack_from(">Q", table, index * 8)[0], 0
            guest_cluster = l1_index * g.l2_entries + index
            if entry & OFLAG_COMPRESSED:
                offset, length = g.compressed_location(entry)
                if self.ref(offset, length, f"compressed cluster {guest_cluster}"):
                    self.result.allocated_clusters += 1
                    self.result.compressed_clusters += 1
                continue
            host = entry & L2E_OFFSET_MASK
            if not host:
                if g.extended_l2 and bitmap & SUBCLUSTER_ALL_ALLOCATED:
                    self.corrupt(f"guest cluster {guest_cluster} has allocated subclusters but no "
                                 f"host cluster")
                continue
            if host % self.cs:
                self.corrupt(f"guest cluster {guest_cluster} maps to unaligned host offset {host:#x}")
                continue
            if host // self.cs in self.driver._metadata:
                self.corrupt(f"guest cluster {guest_cluster} maps to metadata at {host:#x}")
                continue
            if self.ref(host, self.cs, f"data cluster for guest cluster {guest_cluster}"):
                self.result.allocated_clusters += 1
                if previous_host >= 0 and host != previous_host + self.cs:
                    self.result.fragmented_clusters += 1
                previous_host = host
                self.copied_flags.append((f"data cluster at {host:#x}", host // self.cs,
                                          bool(entry & OFLAG_COPIED)))
        return previous_host


def check_qcow2(
    driver: Qcow2Driver, *, repair_leaks: bool = False, repair_errors: bool = False
) -> CheckResult:
    """Recount references; optionally fix leaked (and, with repair_errors, too low) refcounts."""
    result = CheckResult()
    with driver._lock:
        walker = _Walker(driver, result)
        walker.walk()
        refcounts = driver.refcounts
        for what, cluster, flagged in walker.copied_flags:
            if flagged != (walker.expected[cluster] == 1):
                walker.corrupt(f"OFLAG_COPIED {what}: flag {int(flagged)}, "
                               f"reference count {walker.expected[cluster]}")
        with_blocks = [i for i, entry in enumerate(refcounts.table) if entry]
        block_end = (max(with_blocks) + 1) * refcounts.entries_per_block if with_blocks else 0
        last = min(max(walker.file_clusters, refcounts.top, block_end), refcounts.covered_clusters())
        for cluster in range(last):
            stored, wanted = refcounts.get(cluster), walker.expected.get(cluster, 0)
            if stored == wanted:
                continue
            if stored > wanted:
                result.leaks += 1
                label = "Leaked cluster" if wanted == 0 else "Leaked reference on cluster"
                result.messages.append(f"{label} {cluster} refcount={stored} reference={wanted}")
                if repair_leaks:
                    refcounts.set(cluster, wanted)
                    result.leaks_fixed += 1
            else:
                result.corruptions += 1
                result.messages.append(f"ERROR cluster {cluster} refcount={stored} reference={wanted}")
                if repair_errors:
                    refcounts.set(cluster, wanted)
                    result.corruptions_fixed += 1
        for cluster in walker.expected:
            if cluster >= refcounts.covered_clusters():
                result.corruptions += 1
                result.messages.append(f"ERROR cluster {cluster} is not covered by the refcount table")
        used = [c for c, n in walker.expected.items() if n]
        result.image_end_offset = (max(used) + 1) * driver.cluster_size if used else 0
        result.total_clusters = -(-driver.size // driver.cluster_size)
        if repair_leaks or repair_errors:
            refcounts.write_back()
            driver.file.flush()
    return result
