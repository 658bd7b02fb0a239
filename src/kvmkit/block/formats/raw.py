"""The raw format: the virtual disk is the protocol's bytes, one to one."""

from __future__ import annotations

from collections.abc import Sequence

from kvmkit.block.driver import BlockDriver, Buffer, ImageInfo, buffers_length
from kvmkit.block.protocols.file import FileProtocol


class RawFormat(BlockDriver):
    """A raw image: reads and writes go straight to the file (one preadv/pwritev, caller's buffers)."""

    name = "raw"

    def __init__(self, file: FileProtocol) -> None:
        self.file = file
        self.path = file.path
        self.read_only = file.read_only
        self._size = file.size

    @property
    def size(self) -> int:
        return self._size

    def pread(self, offset: int, bufs: Sequence[Buffer]) -> None:
        length = buffers_length(bufs)
        if offset < 0 or offset + length > self._size:
            self.check_request(offset, length, "read")
        self.file.read_at(offset, bufs, length)

    def pwrite(self, offset: int, bufs: Sequence[Buffer]) -> None:
        length = buffers_length(bufs)
        if offset < 0 or offset + length > self._size or self.read_only:
            self.check_request(offset, length, "write", write=True)
        self.file.write_at(offset, bufs, length)

    def flush(self) -> None:
        self.file.flush()

    def discard(self, offset: int, length: int) -> None:
        self.file.discard(offset, length)

    def write_zeroes(self, offset: int, length: int) -> None:
        self.check_request(offset, length, "write-zeroes", write=True)
        self.file.zero_at(offset, length)

    def truncate(self, size: int) -> None:
        self.file.truncate(size)
        self._size = size

    def info(self) -> ImageInfo:
        return ImageInfo(format="raw", virtual_size=self._size, actual_size=self.file.actual_size())

    def close(self) -> None:
        self.file.close()
