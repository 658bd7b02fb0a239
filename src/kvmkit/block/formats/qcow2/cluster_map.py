"""The guest-to-host cluster map: L1/L2 entry layouts and decoding an L2 entry into pieces.

A guest cluster decodes into one or more `Piece`s (several only with extended L2 subclusters), each saying
how a contiguous part of the cluster reads: from a host offset, as zeroes, from the backing chain, or from
a compressed cluster.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

L1E_OFFSET_MASK = 0x00FF_FFFF_FFFF_FE00
L1E_RESERVED_MASK = 0x7F00_0000_0000_01FF
L2E_OFFSET_MASK = 0x00FF_FFFF_FFFF_FE00
L2E_RESERVED_MASK = 0x3F00_0000_0000_01FE
OFLAG_COPIED = 1 << 63
OFLAG_COMPRESSED = 1 << 62
OFLAG_ZERO = 1 << 0
SUBCLUSTERS = 32
SUBCLUSTER_ALL_ALLOCATED = (1 << SUBCLUSTERS) - 1
SUBCLUSTER_ALL_ZERO = SUBCLUSTER_ALL_ALLOCATED << SUBCLUSTERS
COMPRESSED_SECTOR = 512


class Kind(enum.Enum):
    """How part of a guest cluster reads."""

    DATA = "data"
    ZERO = "zero"
    UNALLOCATED = "unallocated"
    COMPRESSED = "compressed"


@dataclass(frozen=True)
class Piece:
    """A run [start, start+length) inside one guest cluster and where its bytes come from."""

    start: int
    length: int
    kind: Kind
    host_offset: int = 0  # DATA: host byte of `start`; COMPRESSED: host byte where compressed data begins
    compressed_length: int = 0


@dataclass(frozen=True)
class Geometry:
    """Sizes derived from cluster_bits and the L2 entry format."""

    cluster_bits: int
    extended_l2: bool

    @property
    def cluster_size(self) -> int:
        return 1 << self.cluster_bits

    @property
    def entry_size(self) -> int:
        return 16 if self.extended_l2 else 8

    @property
    def l2_entries(self) -> int:
        return self.cluster_size // self.entry_size

    @property
    def subcluster_size(self) -> int:
        return self.cluster_size // SUBCLUSTERS if self.extended_l2 else self.cluster_size

    @property
    def compressed_offset_bits(self) -> int:
        return 62 - (self.cluster_bits - 8)

    def compressed_location(self, entry: int) -> tuple[int, int]:
        """(host offset, byte length up to the end of the last sector) of a compressed cluster."""
        x = self.compressed_offset_bits
        offset = entry & ((1 << x) - 1)
        extra_sectors = (entry >> x) & ((1 << (62 - x)) - 1)
        end = (offset & ~(COMPRESSED_SECTOR - 1)) + (extra_sectors + 1) * COMPRESSED_SECTOR
        return offset, end - offset

    def compressed_entry(self, offset: int, length: int) -> int:
        x = self.compressed_offset_bits
        extra_sectors = (offset + length - 1) // COMPRESSED_SECTOR - offset // COMPRESSED_SECTOR
        return OFLAG_COMPRESSED | (extra_sectors << x) | offset


def decode_entry(geometry: Geometry, entry: int, bitmap: int) -> list[Piece]:
    """Pieces of one guest cluster from its L2 entry (and subcluster bitmap when extended)."""
    size = geometry.cluster_size
    if entry & OFLAG_COMPRESSED:
        offset, length = geometry.compressed_location(entry)
        return [Piece(0, size, Kind.COMPRESSED, offset, length)]
    host = entry & L2E_OFFSET_MASK
    if not geometry.extended_l2:
        if entry & OFLAG_ZERO:
            return [Piece(0, size, Kind.ZERO)]
        if host:
            return [Piece(0, size, Kind.DATA, host)]
        return [Piece(0, size, Kind.UNALLOCATED)]
    pieces: list[Piece] = []
    sub = geometry.subcluster_size
    for i in range(SUBCLUSTERS):
        if bitmap >> i & 1:
            kind = Kind.DATA
        elif bitmap >> (i + SUBCLUSTERS) & 1:
            kind = Kind.ZERO
        else:
            kind = Kind.UNALLOCATED
        if pieces and pieces[-1].kind == kind:
            last = pieces[-1]
            pieces[-1] = Piece(last.start, last.length + sub, kind, last.host_offset)
        else:
            pieces.append(Piece(i * sub, sub, kind, host + i * sub if kind == Kind.DATA else 0))
    return pieces


def fully_allocated(geometry: Geometry, entry: int, bitmap: int) -> bool:
    """True when every byte of the cluster reads from its own host cluster (so it can be written in place)."""
    if entry & OFLAG_COMPRESSED or not entry & OFLAG_COPIED or not entry & L2E_OFFSET_MASK:
        return False
    if geometry.extended_l2:
        return bitmap & SUBCLUSTER_ALL_ALLOCATED == SUBCLUSTER_ALL_ALLOCATED
    return not entry & OFLAG_ZERO
