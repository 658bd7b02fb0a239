"""Creating empty qcow2 images: header cluster, refcount table, refcount blocks, then the L1 table."""

from __future__ import annotations

import os

from kvmkit.block.formats.qcow2.cluster_map import Geometry
from kvmkit.block.formats.qcow2.header import (
    COMPATIBLE_LAZY_REFCOUNTS,
    COMPRESSION_ZSTD,
    MAGIC,
    HeaderV3,
    Incompatible,
    Qcow2Header,
    build_header_cluster,
)
from kvmkit.errors import ConfigError

HEADER_V3_LENGTH = 112


def create_qcow2(
    path: str,
    size: int,
    *,
    cluster_size: int = 65536,
    compat: str = "1.1",
    backing_file: str | None = None,
    backing_format: str | None = None,
    lazy_refcounts: bool = False,
    refcount_bits: int = 16,
    compression_type: str = "zlib",
) -> None:
    """Write a new, empty qcow2 image at `path` (overwriting any file there)."""
    if compat in ("0.10", "v2", "2"):
        version = 2
    elif compat in ("1.1", "v3", "3"):
        version = 3
    else:
        raise ConfigError(f"{path}: unknown compat level {compat!r} (expected 0.10 or 1.1)")
    if cluster_size < 512 or cluster_size > 2 << 20 or cluster_size & (cluster_size - 1):
        raise ConfigError(f"{path}: cluster_size {cluster_size} must be a power of two between 512 and 2M")
    if refcount_bits not in (1, 2, 4, 8, 16, 32, 64) or (version == 2 and refcount_bits != 16):
        raise ConfigError(f"{path}: refcount_bits {refcount_bits} not allowed (v2 images need 16)")
    if version == 2 and (lazy_refcounts or compression_type != "zlib"):
        raise ConfigError(f"{path}: lazy_refcounts and compression_type need compat=1.1")
    if compression_type not in ("zlib", "zstd"):
        raise ConfigError(f"{path}: unknown compression_type {compression_type!r}")
    if size < 0:
        raise ConfigError(f"{path}: negative image size {size}")
    size = -(-size // 512) * 512  # QEMU counts qcow2 sizes in whole sectors
    cluster_bits = cluster_size.bit_length() - 1
    geometry = Geometry(cluster_bits, extended_l2=False)
    order = refcount_bits.bit_length() - 1
    l1_entries = -(-size // (cluster_size * geometry.l2_entries))
    l1_clusters = max(1, -(-l1_entries * 8 // cluster_size))
    per_block = cluster_size * 8 // refcount_bits
    table_clusters, blocks = 1, 1
    while True:
        total = 1 + table_clusters + blocks + l1_clusters
        need_blocks = -(-total // per_block)
        need_table = -(-need_blocks * 8 // cluster_size)
        if (need_blocks, need_table) == (blocks, table_clusters):
            break
        blocks, table_clusters = need_blocks, need_table
    table_at = 1
    blocks_at = table_at + table_clusters
    l1_at = blocks_at + blocks

    fields = HeaderV3()
    fields.magic = MAGIC
    fields.version = version
    fields.cluster_bits = cluster_bits
    fields.size = size
    fields.l1_size = l1_entries
    fields.l1_table_offset = l1_at * cluster_size
    fields.refcount_table_offset = table_at * cluster_size
    fields.refcount_table_clusters = table_clusters
    fields.refcount_order = order
    if version == 3:
        fields.header_length = HEADER_V3_LENGTH
        fields.compatible_features = COMPATIBLE_LAZY_REFCOUNTS if lazy_refcounts else 0
        if compression_type == "zstd":
            fields.compression_type = COMPRESSION_ZSTD
            fields.incompatible_features |= Incompatible.COMPRESSION_TYPE
    header = Qcow2Header(fields=fields, header_length=HEADER_V3_LENGTH if version == 3 else 72,
                         backing_file=backing_file, backing_format=backing_format)
    image = bytearray(build_header_cluster(header, cluster_size))
    table = bytearray(table_clusters * cluster_size)
    for n in range(blocks):
        table[n * 8 : n * 8 + 8] = ((blocks_at + n) * cluster_size).to_bytes(8, "big")
    block_bytes = bytearray(blocks * cluster_size)
    used = 1 + table_clusters + blocks + l1_clusters
    for cluster in range(used):
        _set_refcount(block_bytes, cluster, refcount_bits)
    image += table + block_bytes + bytes(l1_clusters * cluster_size)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, image)
        os.fsync(fd)
    finally:
        os.close(fd)


def _set_refcount(blocks: bytearray, cluster: int, bits: int) -> None:
    """Set refcount 1 in a run of freshly built refcount blocks."""
    if bits >= 8:
        width = bits // 8
        blocks[cluster * width : (cluster + 1) * width] = (1).to_bytes(width, "big")
    else:
        per_byte = 8 // bits
        blocks[cluster // per_byte] |= 1 << ((cluster % per_byte) * bits)
