"""The qcow2 header, its header extensions and its validation, declared as data.

All qcow2 numbers are big-endian. Version 2 headers stop after `snapshots_offset` (72 bytes); version 3
adds the feature bitmaps, refcount order and header length, then optional fields (compression type).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field

from kvmkit.errors import ImageError

MAGIC = 0x514649FB  # "QFI\xfb"
MIN_CLUSTER_BITS = 9
MAX_CLUSTER_BITS = 21
MAX_L1_BYTES = 32 << 20
MAX_REFTABLE_BYTES = 8 << 20
MAX_BACKING_NAME = 1023


class HeaderV2(ctypes.BigEndianStructure):
    """Bytes 0..71: the header every version has."""

    _pack_ = 1
    _fields_ = [
        ("magic", ctypes.c_uint32),
        ("version", ctypes.c_uint32),
        ("backing_file_offset", ctypes.c_uint64),
        ("backing_file_size", ctypes.c_uint32),
        ("cluster_bits", ctypes.c_uint32),
        ("size", ctypes.c_uint64),
        ("crypt_method", ctypes.c_uint32),
        ("l1_size", ctypes.c_uint32),
        ("l1_table_offset", ctypes.c_uint64),
        ("refcount_table_offset", ctypes.c_uint64),
        ("refcount_table_clusters", ctypes.c_uint32),
        ("nb_snapshots", ctypes.c_uint32),
        ("snapshots_offset", ctypes.c_uint64),
    ]


class HeaderV3(ctypes.BigEndianStructure):
    """Bytes 0..111: the version 3 header including the compression-type field and its padding."""

    _pack_ = 1
    _fields_ = [
        *HeaderV2._fields_,
        ("incompatible_features", ctypes.c_uint64),
        ("compatible_features", ctypes.c_uint64),
        ("autoclear_features", ctypes.c_uint64),
        ("refcount_order", ctypes.c_uint32),
        ("header_length", ctypes.c_uint32),
        ("compression_type", ctypes.c_uint8),
        ("padding", ctypes.c_uint8 * 7),
    ]


V3_BASE_LENGTH = 104  # header_length minimum: everything before compression_type
COMPRESSION_TYPE_OFFSET = HeaderV3.compression_type.offset


class ExtensionHeader(ctypes.BigEndianStructure):
    """Type and length preceding each header extension's data (padded to 8 bytes)."""

    _pack_ = 1
    _fields_ = [("type", ctypes.c_uint32), ("length", ctypes.c_uint32)]


class FeatureNameEntry(ctypes.BigEndianStructure):
    """One row of the feature name table extension."""

    _pack_ = 1
    _fields_ = [("type", ctypes.c_uint8), ("bit", ctypes.c_uint8), ("name", ctypes.c_char * 46)]


class Extension:
    """Header extension type numbers."""

    END = 0x00000000
    BACKING_FORMAT = 0xE2792ACA
    FEATURE_NAMES = 0x6803F857
    BITMAPS = 0x23852875
    ENCRYPTION = 0x0537BE77
    DATA_FILE = 0x44415441


class Incompatible:
    """incompatible_features bits."""

    DIRTY = 1 << 0
    CORRUPT = 1 << 1
    DATA_FILE = 1 << 2
    COMPRESSION_TYPE = 1 << 3
    EXTENDED_L2 = 1 << 4
    KNOWN = DIRTY | CORRUPT | DATA_FILE | COMPRESSION_TYPE | EXTENDED_L2


COMPATIBLE_LAZY_REFCOUNTS = 1 << 0
COMPRESSION_ZLIB = 0
COMPRESSION_ZSTD = 1
COMPRESSION_NAMES = {COMPRESSION_ZLIB: "zlib", COMPRESSION_ZSTD: "zstd"}
FEATURE_TYPE_NAMES = {0: "incompatible", 1: "compatible", 2: "autoclear"}

# Names we write into new images' feature name tables: (type, bit, name).
KNOWN_FEATURE_NAMES = [
    (0, 0, "dirty bit"),
    (0, 1, "corrupt bit"),
    (0, 2, "external data file"),
    (0, 3, "compression type"),
    (0, 4, "extended L2 entries"),
    (1, 0, "lazy refcounts"),
    (2, 0, "bitmaps"),
    (2, 1, "raw external data"),
]


@dataclass
class Qcow2Header:
    """A parsed, validated header plus what its extensions say."""

    fields: HeaderV3
    header_length: int
    backing_file: str | None = None
    backing_format: str | None = None
    feature_names: dict[tuple[int, int], str] = field(default_factory=dict)
    extra_extensions: list[tuple[int, bytes]] = field(default_factory=list)

    @property
    def version(self) -> int:
        return int(self.fields.version)

    @property
    def cluster_size(self) -> int:
        return 1 << self.fields.cluster_bits

    def fixed_bytes(self) -> bytes:
        """The fixed header as stored (72 bytes for v2, header_length bytes up to 112 for v3)."""
        raw = bytes(self.fields)
        return raw[: ctypes.sizeof(HeaderV2) if self.version == 2 else min(self.header_length, len(raw))]


def parse_header(cluster0: bytes, file_size: int, path: str) -> Qcow2Header:
    """Decode and sanity-check the header in the first bytes of the file; ImageError names the bad field."""
    if len(cluster0) < ctypes.sizeof(HeaderV2):
        raise ImageError(f"{path}: too short for a qcow2 header")
    base = HeaderV2.from_buffer_copy(cluster0[: ctypes.sizeof(HeaderV2)])
    if base.magic != MAGIC:
        raise ImageError(f"{path}: not a qcow2 image (bad magic)")
    if base.version not in (2, 3):
        raise ImageError(f"{path}: unsupported qcow2 version {base.version}")
    if not MIN_CLUSTER_BITS <= base.cluster_bits <= MAX_CLUSTER_BITS:
        raise ImageError(f"{path}: cluster_bits {base.cluster_bits} outside "
                         f"{MIN_CLUSTER_BITS}..{MAX_CLUSTER_BITS}")
    cluster_size = 1 << base.cluster_bits
    fields = HeaderV3()
    if base.version == 2:
        ctypes.memmove(ctypes.addressof(fields), bytes(base), ctypes.sizeof(HeaderV2))
        fields.refcount_order = 4
        header_length = ctypes.sizeof(HeaderV2)
    else:
        if len(cluster0) < V3_BASE_LENGTH:
            raise ImageError(f"{path}: truncated version 3 header")
        raw = bytes(cluster0[: ctypes.sizeof(HeaderV3)]).ljust(ctypes.sizeof(HeaderV3), b"\0")
        fields = HeaderV3.from_buffer_copy(raw)
        header_length = fields.header_length
        if header_length < V3_BASE_LENGTH or header_length % 8 or header_length > cluster_size:
            raise ImageError(f"{path}: bad header_length {header_length}")
        if header_length <= COMPRESSION_TYPE_OFFSET:
            fields.compression_type = 0
            fields.padding[:] = bytes(7)
    _validate_fields(fields, cluster_size, file_size, path)
    header = Qcow2Header(fields=fields, header_length=header_length)
    end_of_extensions = _parse_extensions(header, cluster0, cluster_size, path)
    if fields.backing_file_offset:
        off, size = fields.backing_file_offset, fields.backing_file_size
        if size == 0 or size > MAX_BACKING_NAME or off < end_of_extensions or off + size > cluster_size:
            raise ImageError(f"{path}: backing file name (offset {off}, size {size}) is outside the "
                             f"header cluster")
        header.backing_file = bytes(cluster0[off : off + size]).decode("utf-8", "replace")
    return header


def _validate_fields(h: HeaderV3, cluster_size: int, file_size: int, path: str) -> None:
    if h.crypt_method != 0:
        raise ImageError(f"{path}: encrypted qcow2 images (crypt_method {h.crypt_method}) are not supported")
    if h.refcount_order > 6:
        raise ImageError(f"{path}: refcount_order {h.refcount_order} exceeds 6")
    unknown = h.incompatible_features & ~Incompatible.KNOWN
    if h.compression_type not in COMPRESSION_NAMES:
        raise ImageError(f"{path}: unknown compression type {h.compression_type}")
    type_bit = bool(h.incompatible_features & Incompatible.COMPRESSION_TYPE)
    if bool(h.compression_type) != type_bit and not unknown:
        raise ImageError(f"{path}: compression_type field and its incompatible feature bit disagree")
    if h.incompatible_features & Incompatible.EXTENDED_L2 and cluster_size < 16384:
        raise ImageError(f"{path}: extended L2 entries need clusters of at least 16 KiB")
    for name, offset in (("l1_table_offset", h.l1_table_offset),
                         ("refcount_table_offset", h.refcount_table_offset)):
        if offset % cluster_size or offset == 0:
            raise ImageError(f"{path}: {name} {offset:#x} is not a non-zero multiple of the cluster size")
    if h.l1_size * 8 > MAX_L1_BYTES:
        raise ImageError(f"{path}: l1_size {h.l1_size} exceeds the 32 MiB L1 table limit")
    if h.refcount_table_clusters == 0 or h.refcount_table_clusters * cluster_size > MAX_REFTABLE_BYTES:
        raise ImageError(f"{path}: refcount_table_clusters {h.refcount_table_clusters} is out of range")
    l2_entries = cluster_size // (16 if h.incompatible_features & Incompatible.EXTENDED_L2 else 8)
    needed_l1 = -(-h.size // (cluster_size * l2_entries))
    if h.l1_size < needed_l1:
        raise ImageError(f"{path}: l1_size {h.l1_size} too small for virtual size {h.size} (needs "
                         f"{needed_l1})")
    for name, offset, length in (
        ("L1 table", h.l1_table_offset, h.l1_size * 8),
        ("refcount table", h.refcount_table_offset, h.refcount_table_clusters * cluster_size),
    ):
        if offset + length > max(file_size, 0) + (cluster_size if length == 0 else 0):
            raise ImageError(f"{path}: {name} at {offset:#x} (+{length} bytes) lies beyond the end "
                             f"of the file")
    l1_range = (h.l1_table_offset, h.l1_table_offset + max(h.l1_size * 8, 1))
    rt_range = (h.refcount_table_offset, h.refcount_table_offset + h.refcount_table_clusters * cluster_size)
    if l1_range[0] < rt_range[1] and rt_range[0] < l1_range[1]:
        raise ImageError(f"{path}: the L1 table and the refcount table overlap")


def _parse_extensions(header: Qcow2Header, cluster0: bytes, cluster_size: int, path: str) -> int:
    """Read header extensions after the fixed header; returns the offset where they end."""
    pos = header.header_length
    limit = min(len(cluster0), cluster_size)
    seen: set[int] = set()
    while True:
        if pos + ctypes.sizeof(ExtensionHeader) > limit:
            if header.version == 2 and pos == header.header_length:
                return pos  # v2 images may have no extension area at all
            raise ImageError(f"{path}: header extensions run past the first cluster")
        ext = ExtensionHeader.from_buffer_copy(cluster0[pos : pos + 8])
        pos += 8
        if ext.type == Extension.END:
            return pos
        end = pos + ext.length
        if end > limit:
            raise ImageError(f"{path}: header extension {ext.type:#010x} runs past the first cluster")
        data = bytes(cluster0[pos:end])
        if ext.type in seen and ext.type != 0:
            raise ImageError(f"{path}: header extension {ext.type:#010x} appears twice")
        seen.add(ext.type)
        if ext.type == Extension.BACKING_FORMAT:
            header.backing_format = data.decode("ascii", "replace")
        elif ext.type == Extension.FEATURE_NAMES:
            size = ctypes.sizeof(FeatureNameEntry)
            for off in range(0, len(data) - size + 1, size):
                entry = FeatureNameEntry.from_buffer_copy(data[off : off + size])
                header.feature_names[(entry.type, entry.bit)] = entry.name.decode("utf-8", "replace")
        else:
            header.extra_extensions.append((ext.type, data))
        pos = end + (-ext.length % 8)


def build_header_cluster(header: Qcow2Header, cluster_size: int) -> bytearray:
    """Serialise header, extensions (backing format, feature names, kept unknown ones) and backing name."""
    out = bytearray(cluster_size)
    fixed = header.fixed_bytes()
    out[: len(fixed)] = fixed
    pos = header.header_length

    def put(ext_type: int, data: bytes) -> None:
        nonlocal pos
        record = bytes(ExtensionHeader(ext_type, len(data))) + data + bytes(-len(data) % 8)
        if pos + len(record) + 8 > cluster_size:
            raise ImageError(f"header extensions do not fit in a {cluster_size}-byte cluster")
        out[pos : pos + len(record)] = record
        pos += len(record)

    if header.backing_format:
        put(Extension.BACKING_FORMAT, header.backing_format.encode())
    if header.version >= 3:
        table = b"".join(bytes(FeatureNameEntry(t, b, n.encode())) for t, b, n in KNOWN_FEATURE_NAMES)
        if pos + len(table) + 16 + 2 * MAX_BACKING_NAME <= cluster_size or cluster_size >= 4096:
            put(Extension.FEATURE_NAMES, table)
    for ext_type, data in header.extra_extensions:
        put(ext_type, data)
    pos += 8  # end-of-extensions marker (zeroes)
    if header.backing_file:
        name = header.backing_file.encode()
        if len(name) > MAX_BACKING_NAME or pos + len(name) > cluster_size:
            raise ImageError(f"backing file name {header.backing_file!r} does not fit in the header cluster")
        out[pos : pos + len(name)] = name
        header.fields.backing_file_offset = pos
        header.fields.backing_file_size = len(name)
        fixed = header.fixed_bytes()
        out[: len(fixed)] = fixed
    return out


def unknown_feature_message(header: Qcow2Header, path: str) -> str | None:
    """A clear refusal naming unknown incompatible features, or None when all are known."""
    unknown = header.fields.incompatible_features & ~Incompatible.KNOWN
    if not unknown:
        return None
    names = []
    for bit in range(64):
        if unknown >> bit & 1:
            names.append(header.feature_names.get((0, bit), f"bit {bit}"))
    return f"{path}: unsupported qcow2 incompatible feature(s): {', '.join(names)}"
