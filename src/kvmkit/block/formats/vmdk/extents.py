"""VMDK extents: flat (a byte range of a host file), zero, and hosted sparse (grain directory + tables)."""

from __future__ import annotations

import struct
import threading
from collections.abc import Sequence

from kvmkit.block.driver import fill_zero, slice_buffers
from kvmkit.block.formats.vmdk.layout import (
    FLAG_COMPRESSED,
    FLAG_MARKERS,
    FLAG_REDUNDANT_GT,
    GTE_ZERO_GRAIN,
    SECTOR,
    SPARSE_MAGIC,
    SparseExtentHeader,
)
from kvmkit.block.protocols.file import FileProtocol
from kvmkit.errors import ImageError


class Extent:
    """A contiguous run of the virtual disk stored one way."""

    size: int
    file: FileProtocol | None = None

    def read(self, offset: int, views: Sequence[memoryview]) -> None:
        raise NotImplementedError

    def write(self, offset: int, views: Sequence[memoryview]) -> None:
        raise NotImplementedError

    def allocated(self, offset: int) -> bool:
        return True

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


class ZeroExtent(Extent):
    """Reads as zeroes; writes are refused."""

    def __init__(self, size: int) -> None:
        self.size = size

    def read(self, offset: int, views: Sequence[memoryview]) -> None:
        fill_zero(views)

    def write(self, offset: int, views: Sequence[memoryview]) -> None:
        raise ImageError("vmdk: write to a ZERO extent")

    def allocated(self, offset: int) -> bool:
        return False


class FlatExtent(Extent):
    """Bytes of a host file starting at a sector offset."""

    def __init__(self, file: FileProtocol, size: int, start_sector: int, *, owns_file: bool = True) -> None:
        self.file = file if owns_file else None
        self._data = file
        self.size = size
        self.base = start_sector * SECTOR

    def read(self, offset: int, views: Sequence[memoryview]) -> None:
        self._data.read_at(self.base + offset, views)

    def write(self, offset: int, views: Sequence[memoryview]) -> None:
        self._data.write_at(self.base + offset, views)


class SparseExtent(Extent):
    """A hosted sparse extent: grains found through a grain directory and grain tables, allocated on write."""

    def __init__(self, file: FileProtocol, *, owns_file: bool = True) -> None:
        self.file = file if owns_file else None
        self._data = file
        self.path = file.path
        self._lock = threading.Lock()
        raw = file.read_bytes(0, SECTOR)
        h = SparseExtentHeader.from_buffer_copy(raw)
        self.header = h
        file_size = file.size
        if h.magic != SPARSE_MAGIC:
            raise ImageError(f"{self.path}: not a VMDK sparse extent (bad magic)")
        if h.version not in (1, 2, 3):
            raise ImageError(f"{self.path}: unsupported sparse extent version {h.version}")
        if h.flags & (FLAG_COMPRESSED | FLAG_MARKERS):
            raise ImageError(f"{self.path}: compressed (streamOptimized) VMDK extents are not supported")
        grain = h.grain_size
        if grain < 1 or grain & (grain - 1) or grain > 2048:
            raise ImageError(f"{self.path}: bad grain size {grain} sectors")
        if not 1 <= h.num_gtes_per_gt <= 65536:
            raise ImageError(f"{self.path}: bad numGTEsPerGT {h.num_gtes_per_gt}")
        self.grain_bytes = grain * SECTOR
        self.size = h.capacity * SECTOR
        self.gtes = h.num_gtes_per_gt
        self.gt_bytes = -(-self.gtes * 4 // SECTOR) * SECTOR
        gd_entries = -(-h.capacity // (grain * self.gtes))
        self.gd = self._load_directory(h.gd_offset, gd_entries, file_size, "grain directory")
        self.rgd: list[int] | None = None
        if h.flags & FLAG_REDUNDANT_GT and h.rgd_offset:
            self.rgd = self._load_directory(h.rgd_offset, gd_entries, file_size, "redundant grain directory")
        self.metadata_end = h.overhead * SECTOR
        self._tables: dict[int, list[int]] = {}

    def _load_directory(self, sector: int, entries: int, file_size: int, what: str) -> list[int]:
        if sector == 0 or (sector * SECTOR + entries * 4) > file_size:
            raise ImageError(f"{self.path}: {what} at sector {sector} lies outside the file")
        raw = self._data.read_bytes(sector * SECTOR, entries * 4)
        gd = list(struct.unpack(f"<{entries}I", raw))
        for index, gt in enumerate(gd):
            if gt and gt * SECTOR + self.gt_bytes > file_size:
                raise ImageError(f"{self.path}: grain table {index} at sector {gt} lies outside the file")
        return gd

    def _table(self, gd_index: int) -> list[int] | None:
        gt_sector = self.gd[gd_index]
        if not gt_sector:
            return None
        table = self._tables.get(gt_sector)
        if table is None:
            raw = self._data.read_bytes(gt_sector * SECTOR, self.gtes * 4)
            table = list(struct.unpack(f"<{self.gtes}I", raw))
            self._tables[gt_sector] = table
        return table

    def _grain_sector(self, grain: int) -> int:
        table = self._table(grain // self.gtes)
        return 0 if table is None else table[grain % self.gtes]

    def _checked_grain(self, grain: int, sector: int) -> int:
        offset = sector * SECTOR
        if offset < max(self.metadata_end, SECTOR) or offset >= self._data.size:
            raise ImageError(f"{self.path}: grain {grain} points at sector {sector}, outside the data area")
        return offset

    def allocated(self, offset: int) -> bool:
        with self._lock:
            return self._grain_sector(offset // self.grain_bytes) > GTE_ZERO_GRAIN

    def read(self, offset: int, views: Sequence[memoryview]) -> None:
        pos, done = offset, 0
        total = sum(v.nbytes for v in views)
        while done < total:
            grain, within = divmod(pos, self.grain_bytes)
            n = min(self.grain_bytes - within, total - done)
            target = slice_buffers(views, done, n)
            with self._lock:
                sector = self._grain_sector(grain)
            if sector <= GTE_ZERO_GRAIN:
                fill_zero(target)
            else:
                self._data.read_at(self._checked_grain(grain, sector) + within, target)
            pos += n
            done += n

    def write(self, offset: int, views: Sequence[memoryview]) -> None:
        pos, done = offset, 0
        total = sum(v.nbytes for v in views)
        while done < total:
            grain, within = divmod(pos, self.grain_bytes)
            n = min(self.grain_bytes - within, total - done)
            source = slice_buffers(views, done, n)
            with self._lock:
                sector = self._grain_sector(grain)
                if sector <= GTE_ZERO_GRAIN:
                    self._allocate_grain(grain, within, source)
                    source = []
            if source:
                self._data.write_at(self._checked_grain(grain, sector) + within, source)
            pos += n
            done += n

    def _allocate_grain(self, grain: int, within: int, source: list[memoryview]) -> None:
        """Append a new grain at the end of the file holding `source` at `within` (rest zeroes)."""
        content = bytearray(self.grain_bytes)
        pos = within
        for v in source:
            content[pos : pos + v.nbytes] = v
            pos += v.nbytes
        end = -(-self._data.size // SECTOR) * SECTOR
        self._data.write_at(end, [content])
        gd_index = grain // self.gtes
        if self._table(gd_index) is None:
            self._allocate_table(gd_index)
        self._set_gte(self.gd, gd_index, grain % self.gtes, end // SECTOR)
        if self.rgd is not None:
            self._set_gte(self.rgd, gd_index, grain % self.gtes, end // SECTOR)

    def _allocate_table(self, gd_index: int) -> None:
        for directory, offset in ((self.gd, self.header.gd_offset), (self.rgd, self.header.rgd_offset)):
            if directory is None:
                continue
            end = -(-self._data.size // SECTOR) * SECTOR
            self._data.write_at(end, [bytes(self.gt_bytes)])
            directory[gd_index] = end // SECTOR
            self._data.write_at(offset * SECTOR + gd_index * 4, [struct.pack("<I", end // SECTOR)])

    def _set_gte(self, directory: list[int], gd_index: int, index: int, sector: int) -> None:
        gt_sector = directory[gd_index]
        table = self._tables.get(gt_sector)
        if table is not None:
            table[index] = sector
        self._data.write_at(gt_sector * SECTOR + index * 4, [struct.pack("<I", sector)])
