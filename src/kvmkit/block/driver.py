"""The block driver interface every protocol and format implements.

Calls are synchronous, thread-safe and re-entrant: a worker pool may issue many requests at once.
"""

from __future__ import annotations

import abc
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from kvmkit.errors import ImageError

Buffer = memoryview | bytearray


@dataclass
class ImageInfo:
    """What `kvmkit img info` reports about an image."""

    format: str
    virtual_size: int
    actual_size: int
    cluster_size: int | None = None
    backing_file: str | None = None
    backing_format: str | None = None
    dirty: bool = False
    format_specific: dict[str, Any] = field(default_factory=dict)


_nbytes = operator.attrgetter("nbytes")


def buffers_length(bufs: Sequence[Buffer]) -> int:
    """Total byte count of a scatter/gather list."""
    try:
        return sum(map(_nbytes, bufs))  # memoryviews (guest RAM): C speed
    except AttributeError:
        return sum(memoryview(b).nbytes for b in bufs)


def flat_views(bufs: Sequence[Buffer]) -> list[memoryview]:
    """Byte-format, one-dimensional views of each buffer (no copy)."""
    out: list[memoryview] = []
    for b in bufs:
        if type(b) is memoryview and b.format == "B" and b.ndim == 1:
            out.append(b)  # the common case: a slice of guest RAM
            continue
        v = memoryview(b)
        out.append(v if v.format == "B" and v.ndim == 1 else v.cast("B"))
    return out


def slice_buffers(views: Sequence[memoryview], start: int, length: int) -> list[memoryview]:
    """Sub-views covering bytes [start, start+length) of a scatter/gather list (no copy)."""
    out: list[memoryview] = []
    pos = 0
    end = start + length
    for v in views:
        n = v.nbytes
        lo, hi = max(start, pos), min(end, pos + n)
        if lo < hi:
            out.append(v[lo - pos : hi - pos])
        pos += n
        if pos >= end:
            break
    return out


def fill_zero(views: Sequence[memoryview]) -> None:
    """Zero every byte of the given views."""
    for v in views:
        v[:] = bytes(v.nbytes)


class BlockDriver(abc.ABC):
    """A virtual disk: scatter/gather reads and writes at byte offsets, plus management calls."""

    name: str = "?"
    read_only: bool = False

    @property
    @abc.abstractmethod
    def size(self) -> int:
        """Virtual size in bytes."""

    @abc.abstractmethod
    def pread(self, offset: int, bufs: Sequence[Buffer]) -> None:
        """Fill every buffer in order with the disk bytes starting at `offset`."""

    @abc.abstractmethod
    def pwrite(self, offset: int, bufs: Sequence[Buffer]) -> None:
        """Write the buffers' bytes, in order, starting at `offset`."""

    @abc.abstractmethod
    def flush(self) -> None:
        """Make every completed write durable."""

    @abc.abstractmethod
    def discard(self, offset: int, length: int) -> None:
        """Hint that a range is unused; its content afterwards is unspecified (usually zeroes)."""

    @abc.abstractmethod
    def write_zeroes(self, offset: int, length: int) -> None:
        """Make a range read as zeroes, deallocating where the format can."""

    @abc.abstractmethod
    def truncate(self, size: int) -> None:
        """Change the virtual size."""

    @abc.abstractmethod
    def info(self) -> ImageInfo:
        """Describe the image."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release host resources (flushing first when writable)."""

    def block_status(self, offset: int, length: int) -> tuple[bool, int]:
        """(may_hold_data, run_length) for the run starting at `offset`; False means it reads as zeroes."""
        return True, length

    def __enter__(self) -> BlockDriver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # helpers for implementations -------------------------------------------------------------

    def check_request(self, offset: int, length: int, what: str, *, write: bool = False) -> None:
        """Refuse requests outside the disk (or writes to a read-only image) before touching anything."""
        if write and self.read_only:
            raise ImageError(f"{self.describe()}: {what} refused, the image is open read-only")
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ImageError(
                f"{self.describe()}: {what} of {length} bytes at offset {offset} is outside "
                f"the disk (size {self.size})"
            )

    def describe(self) -> str:
        """How error messages name this image."""
        return getattr(self, "path", self.name)
