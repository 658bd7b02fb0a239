"""Compressed qcow2 clusters: raw deflate (zlib type) and zstd (when the `zstandard` package is present)."""

from __future__ import annotations

import zlib

from kvmkit.block.formats.qcow2.header import COMPRESSION_NAMES, COMPRESSION_ZLIB, COMPRESSION_ZSTD
from kvmkit.errors import ImageError

try:
    import zstandard
except ImportError:  # optional dependency
    zstandard = None


def zstd_available() -> bool:
    return zstandard is not None


def decompress_cluster(data: bytes, cluster_size: int, compression_type: int, where: str) -> bytes:
    """Inflate one cluster; the stored data may carry trailing bytes (sector padding, a neighbour's data)."""
    try:
        if compression_type == COMPRESSION_ZLIB:
            out = zlib.decompressobj(-15).decompress(data, cluster_size)
        elif compression_type == COMPRESSION_ZSTD:
            if zstandard is None:
                raise ImageError(f"{where}: zstd-compressed cluster, but the zstandard package is "
                                 f"not installed")
            out = zstandard.ZstdDecompressor().decompressobj().decompress(data)
        else:
            raise ImageError(f"{where}: unknown compression type {compression_type}")
    except (zlib.error, ValueError) as exc:
        raise ImageError(f"{where}: compressed cluster does not decompress: {exc}") from None
    except Exception as exc:
        if zstandard is not None and isinstance(exc, zstandard.ZstdError):
            raise ImageError(f"{where}: compressed cluster does not decompress: {exc}") from None
        raise
    if len(out) < cluster_size:
        raise ImageError(f"{where}: compressed cluster inflates to {len(out)} bytes, expected {cluster_size}")
    return out[:cluster_size]


def compress_cluster(data: bytes, compression_type: int) -> bytes:
    """Deflate one cluster with the image's compression type."""
    if compression_type == COMPRESSION_ZLIB:
        compressor = zlib.compressobj(6, zlib.DEFLATED, -12, 9)
        return compressor.compress(data) + compressor.flush()
    if compression_type == COMPRESSION_ZSTD and zstandard is not None:
        return zstandard.ZstdCompressor().compress(data)
    raise ImageError(f"cannot compress with {COMPRESSION_NAMES.get(compression_type, compression_type)}")
