"""VMDK on-disk layouts: the hosted sparse extent header (declared as data) and the text descriptor."""

from __future__ import annotations

import ctypes
import re
from dataclasses import dataclass, field

from kvmkit.errors import ImageError

SECTOR = 512
SPARSE_MAGIC = 0x564D444B  # "KDMV" read little-endian
DESCRIPTOR_SIGNATURE = b"# Disk DescriptorFile"
FLAG_VALID_NEWLINE_TEST = 1 << 0
FLAG_REDUNDANT_GT = 1 << 1
FLAG_COMPRESSED = 1 << 16
FLAG_MARKERS = 1 << 17
GTE_ZERO_GRAIN = 1  # grain table entry meaning "reads as zeroes" (no storage)


class SparseExtentHeader(ctypes.LittleEndianStructure):
    """The 512-byte header at sector 0 of a hosted sparse extent (lengths and offsets in sectors)."""

    _pack_ = 1
    _fields_ = [
        ("magic", ctypes.c_uint32),
        ("version", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("capacity", ctypes.c_uint64),
        ("grain_size", ctypes.c_uint64),
        ("descriptor_offset", ctypes.c_uint64),
        ("descriptor_size", ctypes.c_uint64),
        ("num_gtes_per_gt", ctypes.c_uint32),
        ("rgd_offset", ctypes.c_uint64),
        ("gd_offset", ctypes.c_uint64),
        ("overhead", ctypes.c_uint64),
        ("unclean_shutdown", ctypes.c_uint8),
        ("single_end_line_char", ctypes.c_char),
        ("non_end_line_char", ctypes.c_char),
        ("double_end_line_char1", ctypes.c_char),
        ("double_end_line_char2", ctypes.c_char),
        ("compress_algorithm", ctypes.c_uint16),
        ("pad", ctypes.c_uint8 * 433),
    ]


assert ctypes.sizeof(SparseExtentHeader) == SECTOR


@dataclass
class ExtentLine:
    """One line of the descriptor's extent description."""

    access: str
    sectors: int
    kind: str
    filename: str
    offset: int = 0


@dataclass
class Descriptor:
    """The parsed text descriptor of a VMDK."""

    create_type: str
    extents: list[ExtentLine]
    cid: int = 0xFFFFFFFF
    parent_cid: int = 0xFFFFFFFF
    ddb: dict[str, str] = field(default_factory=dict)


_EXTENT_RE = re.compile(r'^(RW|RDONLY|NOACCESS)\s+(\d+)\s+(\w+)(?:\s+"([^"]*)"(?:\s+(\d+))?)?\s*$')
_KEY_RE = re.compile(r'^([\w.]+)\s*=\s*"?([^"]*)"?\s*$')


def parse_descriptor(text: str, path: str) -> Descriptor:
    """Decode a descriptor; ImageError names what is malformed."""
    values: dict[str, str] = {}
    extents: list[ExtentLine] = []
    ddb: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip().rstrip("\0")
        if not line or line.startswith("#"):
            continue
        match = _EXTENT_RE.match(line)
        if match:
            access, sectors, kind, name, offset = match.groups()
            if kind.upper() != "ZERO" and not name:
                raise ImageError(f"{path}: extent line {line!r} has no file name")
            extents.append(ExtentLine(access, int(sectors), kind.upper(), name or "", int(offset or 0)))
            continue
        match = _KEY_RE.match(line)
        if not match:
            raise ImageError(f"{path}: cannot parse descriptor line {line!r}")
        key, value = match.groups()
        (ddb if key.startswith("ddb.") else values)[key] = value
    if "createType" not in values:
        raise ImageError(f"{path}: descriptor has no createType")
    if not extents:
        raise ImageError(f"{path}: descriptor lists no extents")
    try:
        cid = int(values.get("CID", "ffffffff"), 16)
        parent = int(values.get("parentCID", "ffffffff"), 16)
    except ValueError:
        raise ImageError(f"{path}: descriptor CID/parentCID are not hexadecimal") from None
    return Descriptor(values["createType"], extents, cid, parent, ddb)


def build_descriptor(desc: Descriptor) -> str:
    """Text of a descriptor, in the layout VMware and QEMU write."""
    lines = [
        "# Disk DescriptorFile",
        "version=1",
        f"CID={desc.cid:08x}",
        f"parentCID={desc.parent_cid:08x}",
        f'createType="{desc.create_type}"',
        "",
        "# Extent description",
    ]
    for e in desc.extents:
        suffix = f" {e.offset}" if e.kind == "FLAT" else ""
        lines.append(f'{e.access} {e.sectors} {e.kind} "{e.filename}"{suffix}')
    lines += ["", "# The Disk Data Base", "#DDB", ""]
    lines += [f'{key} = "{value}"' for key, value in desc.ddb.items()]
    return "\n".join(lines) + "\n"


def default_ddb(sectors: int) -> dict[str, str]:
    """Disk database entries for a new disk (IDE geometry as qemu-img writes it)."""
    cylinders = min(max(sectors // (16 * 63), 1), 16383)
    return {
        "ddb.virtualHWVersion": "4",
        "ddb.geometry.cylinders": str(cylinders),
        "ddb.geometry.heads": "16",
        "ddb.geometry.sectors": "63",
        "ddb.adapterType": "ide",
    }
