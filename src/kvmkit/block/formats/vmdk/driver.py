"""The VMDK block driver: a descriptor naming one or more extents laid end to end."""

from __future__ import annotations

import os
import random
from collections.abc import Sequence

from kvmkit.block.driver import BlockDriver, Buffer, ImageInfo, flat_views, slice_buffers
from kvmkit.block.formats.vmdk.extents import Extent, FlatExtent, SparseExtent, ZeroExtent
from kvmkit.block.formats.vmdk.layout import (
    DESCRIPTOR_SIGNATURE,
    FLAG_REDUNDANT_GT,
    FLAG_VALID_NEWLINE_TEST,
    SECTOR,
    SPARSE_MAGIC,
    Descriptor,
    ExtentLine,
    SparseExtentHeader,
    build_descriptor,
    default_ddb,
    parse_descriptor,
)
from kvmkit.block.protocols.file import FileProtocol
from kvmkit.errors import ConfigError, ImageError

MAX_DESCRIPTOR = 64 << 10
SUBFORMATS = ("monolithicSparse", "monolithicFlat")


class VmdkDriver(BlockDriver):
    """A VMDK image (hosted sparse and flat extents; descriptor embedded or separate)."""

    name = "vmdk"

    def __init__(self, file: FileProtocol) -> None:
        self.path = file.path
        self.read_only = file.read_only
        self._main = file
        self.extents: list[Extent] = []
        try:
            self._open(file)
        except BaseException:
            for extent in self.extents:
                extent.close()
            file.close()
            raise
        self._size = sum(e.size for e in self.extents)

    def _open(self, file: FileProtocol) -> None:
        head = file.read_bytes(0, SECTOR)
        if int.from_bytes(head[:4], "little") == SPARSE_MAGIC:
            sparse = SparseExtent(file, owns_file=False)
            h = sparse.header
            if h.descriptor_offset and h.descriptor_size:
                size = min(h.descriptor_size * SECTOR, MAX_DESCRIPTOR)
                text = bytes(file.read_bytes(h.descriptor_offset * SECTOR, size)).split(b"\0")[0]
                self.descriptor = parse_descriptor(text.decode("utf-8", "replace"), self.path)
            else:
                self.descriptor = Descriptor("monolithicSparse", [ExtentLine("RW", h.capacity, "SPARSE", "")])
            self._check_parent()
            self.extents.append(sparse)
            return
        if not bytes(head).startswith(DESCRIPTOR_SIGNATURE):
            raise ImageError(f"{self.path}: not a VMDK image")
        if file.size > MAX_DESCRIPTOR:
            raise ImageError(f"{self.path}: VMDK descriptor file is larger than {MAX_DESCRIPTOR} bytes")
        text = bytes(file.read_bytes(0, file.size)).decode("utf-8", "replace")
        self.descriptor = parse_descriptor(text, self.path)
        self._check_parent()
        folder = os.path.dirname(os.path.abspath(self.path))
        for line in self.descriptor.extents:
            self.extents.append(self._open_extent(line, folder))

    def _check_parent(self) -> None:
        if self.descriptor.parent_cid != 0xFFFFFFFF:
            raise ImageError(f"{self.path}: VMDK delta links (parentCID) are not supported")

    def _open_extent(self, line: ExtentLine, folder: str) -> Extent:
        size = line.sectors * SECTOR
        if line.kind == "ZERO":
            return ZeroExtent(size)
        extent_path = os.path.join(folder, line.filename)
        read_only = self.read_only or line.access != "RW"
        data = FileProtocol(extent_path, read_only=read_only, cache=self._main.cache)
        try:
            if line.kind in ("FLAT", "VMFS"):
                return FlatExtent(data, size, line.offset)
            if line.kind == "SPARSE":
                sparse = SparseExtent(data)
                if sparse.size < size:
                    raise ImageError(f"{extent_path}: sparse extent smaller than the descriptor says")
                sparse.size = size
                return sparse
        except BaseException:
            data.close()
            raise
        data.close()
        raise ImageError(f"{self.path}: unsupported VMDK extent type {line.kind}")

    # BlockDriver ---------------------------------------------------------------------------

    @property
    def size(self) -> int:
        return self._size

    def _each_extent(self, offset: int, length: int):  # type: ignore[no-untyped-def]
        base = 0
        for extent in self.extents:
            lo, hi = max(offset, base), min(offset + length, base + extent.size)
            if lo < hi:
                yield extent, lo - base, lo - offset, hi - lo
            base += extent.size

    def pread(self, offset: int, bufs: Sequence[Buffer]) -> None:
        views = flat_views(bufs)
        length = sum(v.nbytes for v in views)
        self.check_request(offset, length, "read")
        for extent, at, pos, n in self._each_extent(offset, length):
            extent.read(at, slice_buffers(views, pos, n))

    def pwrite(self, offset: int, bufs: Sequence[Buffer]) -> None:
        views = flat_views(bufs)
        length = sum(v.nbytes for v in views)
        self.check_request(offset, length, "write", write=True)
        for extent, at, pos, n in self._each_extent(offset, length):
            extent.write(at, slice_buffers(views, pos, n))

    def flush(self) -> None:
        if self.read_only:
            return
        self._main.flush()
        for extent in self.extents:
            if extent.file is not None:
                extent.file.flush()

    def discard(self, offset: int, length: int) -> None:
        self.check_request(offset, length, "discard", write=True)

    def write_zeroes(self, offset: int, length: int) -> None:
        self.check_request(offset, length, "write-zeroes", write=True)
        chunk = 1 << 20
        for pos in range(offset, offset + length, chunk):
            n = min(chunk, offset + length - pos)
            for extent, at, _, m in self._each_extent(pos, n):
                if extent.allocated(at) or not isinstance(extent, SparseExtent):
                    zero = bytearray(m)
                    extent.write(at, [memoryview(zero)])

    def truncate(self, size: int) -> None:
        raise ImageError(f"{self.path}: resizing VMDK images is not supported")

    def block_status(self, offset: int, length: int) -> tuple[bool, int]:
        for extent, at, _, n in self._each_extent(offset, length):
            if isinstance(extent, SparseExtent):
                grain = extent.grain_bytes
                n = min(n, grain - at % grain)
            return extent.allocated(at), n
        return True, length

    def info(self) -> ImageInfo:
        files = [e.file for e in self.extents if e.file is not None]
        actual = self._main.actual_size() + sum(f.actual_size() for f in files)
        first = self.extents[0] if self.extents else None
        cluster = first.grain_bytes if isinstance(first, SparseExtent) else None
        return ImageInfo(
            format="vmdk", virtual_size=self.size, actual_size=actual, cluster_size=cluster,
            format_specific={
                "create-type": self.descriptor.create_type,
                "cid": self.descriptor.cid,
                "parent-cid": self.descriptor.parent_cid,
                "extents": [
                    {"filename": e.filename, "type": e.kind.lower(), "virtual-size": e.sectors * SECTOR}
                    for e in self.descriptor.extents
                ],
            },
        )

    def close(self) -> None:
        try:
            self.flush()
        finally:
            for extent in self.extents:
                extent.close()
            self._main.close()



def create_vmdk(path: str, size: int, *, subformat: str = "monolithicSparse") -> None:
    """Write a new, empty VMDK (size rounded up to whole sectors)."""
    if subformat not in SUBFORMATS:
        raise ConfigError(f"{path}: unsupported vmdk subformat {subformat!r} (expected one of "
                          f"{', '.join(SUBFORMATS)})")
    sectors = -(-size // SECTOR)
    cid = random.getrandbits(32) & 0xFFFFFFFE
    name = os.path.basename(path)
    if subformat == "monolithicFlat":
        stem = name[:-5] if name.endswith(".vmdk") else name
        flat_name = f"{stem}-flat.vmdk"
        flat_path = os.path.join(os.path.dirname(path), flat_name)
        with open(flat_path, "wb") as flat:
            flat.truncate(sectors * SECTOR)
        desc = Descriptor(subformat, [ExtentLine("RW", sectors, "FLAT", flat_name, 0)], cid, 0xFFFFFFFF,
                          default_ddb(sectors))
        with open(path, "w", encoding="utf-8") as out:
            out.write(build_descriptor(desc))
        return
    grain, gtes = 128, 512
    gt_count = max(1, -(-sectors // (grain * gtes)))
    gd_sectors = -(-gt_count * 4 // SECTOR)
    gt_sectors = -(-gtes * 4 // SECTOR)
    desc_offset, desc_size = 1, 20
    rgd_at = desc_offset + desc_size
    rgts_at = rgd_at + gd_sectors
    gd_at = rgts_at + gt_count * gt_sectors
    gts_at = gd_at + gd_sectors
    overhead = -(-(gts_at + gt_count * gt_sectors) // grain) * grain
    header = SparseExtentHeader(
        magic=SPARSE_MAGIC, version=1, flags=FLAG_VALID_NEWLINE_TEST | FLAG_REDUNDANT_GT,
        capacity=sectors, grain_size=grain, descriptor_offset=desc_offset, descriptor_size=desc_size,
        num_gtes_per_gt=gtes, rgd_offset=rgd_at, gd_offset=gd_at, overhead=overhead,
        single_end_line_char=b"\n", non_end_line_char=b" ", double_end_line_char1=b"\r",
        double_end_line_char2=b"\n",
    )
    image = bytearray(overhead * SECTOR)
    image[:SECTOR] = bytes(header)
    desc = Descriptor(subformat, [ExtentLine("RW", sectors, "SPARSE", name)], cid, 0xFFFFFFFF,
                      default_ddb(sectors))
    text = build_descriptor(desc).encode()
    if len(text) > desc_size * SECTOR:
        raise ConfigError(f"{path}: vmdk descriptor too long")
    image[desc_offset * SECTOR : desc_offset * SECTOR + len(text)] = text
    for directory, tables in ((rgd_at, rgts_at), (gd_at, gts_at)):
        for n in range(gt_count):
            at = directory * SECTOR + n * 4
            image[at : at + 4] = (tables + n * gt_sectors).to_bytes(4, "little")
    with open(path, "wb") as out:
        out.write(image)
