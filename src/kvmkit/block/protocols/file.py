"""The host-file protocol: image bytes in a regular file or block device.

cache="writeback" uses the page cache; cache="none" opens with O_DIRECT and goes through an mmap-aligned
bounce buffer whenever the caller's buffers, offset or length are not aligned to the logical block size.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import mmap
import os
import threading
from collections.abc import Sequence

from kvmkit.block.driver import BlockDriver, Buffer, ImageInfo, buffers_length, fill_zero, flat_views
from kvmkit.errors import HostError, ImageError

CACHE_MODES = ("writeback", "none", "writethrough", "unsafe")
DIRECT_ALIGNMENT = 4096
_IOV_MAX = 1024
_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_FALLOC_FL_ZERO_RANGE = 0x10
_ZERO_CHUNK = bytes(1 << 20)

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_libc.fallocate.restype = ctypes.c_int


def _fallocate(fd: int, mode: int, offset: int, length: int) -> bool:
    """True when the kernel did it; False when the filesystem does not support that mode."""
    if _libc.fallocate(fd, mode, offset, length) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL, errno.ENODEV):
        return False
    raise OSError(err, os.strerror(err))


def _address(view: memoryview) -> int | None:
    """Address of a writable buffer, or None when it cannot be known (read-only memory)."""
    if view.readonly or view.nbytes == 0:
        return None
    return ctypes.addressof(ctypes.c_char.from_buffer(view))


class FileProtocol(BlockDriver):
    """A host file, read and written at byte offsets; formats stack on it via read_at/write_at."""

    name = "file"

    def __init__(self, path: str, *, read_only: bool = False, cache: str = "writeback") -> None:
        if cache not in CACHE_MODES:
            raise ImageError(f"{path}: unknown cache mode {cache!r} (expected one of "
                             f"{', '.join(CACHE_MODES)})")
        self.path = path
        self.read_only = read_only
        self.cache = cache
        self.direct = cache == "none"
        flags = (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC
        if cache == "writethrough":
            flags |= os.O_DSYNC
        try:
            fd = os.open(path, flags)
        except FileNotFoundError:
            raise ImageError(f"{path}: no such image file") from None
        except OSError as exc:
            raise ImageError(f"{path}: cannot open: {exc.strerror}") from None
        if self.direct:
            try:
                direct_fd = os.open(path, flags | os.O_DIRECT)
            except OSError as exc:
                os.close(fd)
                raise HostError(f"{path}: cache=none needs O_DIRECT, which this filesystem refuses "
                                f"({exc.strerror}); use cache=writeback") from None
            os.close(fd)
            fd = direct_fd
        self.fd = fd
        self._rmw_lock = threading.Lock()
        self._closed = False

    # BlockDriver --------------------------------------------------------------------------

    @property
    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def pread(self, offset: int, bufs: Sequence[Buffer]) -> None:
        self.check_request(offset, buffers_length(bufs), "read")
        self.read_at(offset, bufs)

    def pwrite(self, offset: int, bufs: Sequence[Buffer]) -> None:
        self.check_request(offset, buffers_length(bufs), "write", write=True)
        self.write_at(offset, bufs)

    def flush(self) -> None:
        if not self.read_only and self.cache != "unsafe":
            os.fdatasync(self.fd)

    def discard(self, offset: int, length: int) -> None:
        self.check_request(offset, length, "discard", write=True)
        if length:
            _fallocate(self.fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length)

    def write_zeroes(self, offset: int, length: int) -> None:
        self.check_request(offset, length, "write-zeroes", write=True)
        self.zero_at(offset, length)

    def truncate(self, size: int) -> None:
        if self.read_only:
            raise ImageError(f"{self.path}: resize refused, the image is open read-only")
        os.ftruncate(self.fd, size)

    def info(self) -> ImageInfo:
        size = self.size
        return ImageInfo(format="file", virtual_size=size, actual_size=self.actual_size())

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if not self.read_only:
                self.flush()
        finally:
            os.close(self.fd)

    # byte access for formats (no bounds: reads past EOF give zeroes, writes grow the file) ----

    def actual_size(self) -> int:
        """Bytes the file occupies on the host filesystem."""
        return os.fstat(self.fd).st_blocks * 512

    def read_at(self, offset: int, bufs: Sequence[Buffer], length: int | None = None) -> None:
        """Fill `bufs` from `offset` (`length`: their total, when the caller already knows it)."""
        if not self.direct and 0 < len(bufs) <= _IOV_MAX:  # the usual case: one preadv into the caller's buffers
            got = os.preadv(self.fd, bufs, offset)
            if got == (buffers_length(bufs) if length is None else length):
                return
            if got == 0:
                fill_zero(flat_views(bufs))  # end of file: the rest reads as zeroes
                return
            self._preadv_full(offset + got, _advance(flat_views(bufs), got))
            return
        views = flat_views(bufs)
        if self.direct and not self._aligned(offset, views):
            self._bounce_read(offset, views)
            return
        self._preadv_full(offset, views)

    def write_at(self, offset: int, bufs: Sequence[Buffer], length: int | None = None) -> None:
        """Write `bufs` at `offset` (`length`: their total, when the caller already knows it)."""
        if self.read_only:
            raise ImageError(f"{self.path}: write refused, the image is open read-only")
        if not self.direct and 0 < len(bufs) <= _IOV_MAX:  # the usual case: one pwritev from the caller's buffers
            done = os.pwritev(self.fd, bufs, offset)
            if done == (buffers_length(bufs) if length is None else length):
                return
            self._pwritev_full(offset + done, _advance(flat_views(bufs), done))
            return
        views = flat_views(bufs)
        if self.direct and not self._aligned(offset, views):
            self._bounce_write(offset, views)
            return
        self._pwritev_full(offset, views)

    def read_bytes(self, offset: int, length: int) -> bytearray:
        """Convenience for metadata: a fresh buffer holding `length` bytes at `offset`."""
        buf = bytearray(length)
        self.read_at(offset, [buf])
        return buf

    def zero_at(self, offset: int, length: int) -> None:
        """Make bytes read as zero, preferring the filesystem's zero-range support."""
        if length <= 0:
            return
        end = offset + length
        if end <= self.size and _fallocate(self.fd, _FALLOC_FL_ZERO_RANGE, offset, length):
            return
        pos = offset
        while pos < end:
            n = min(len(_ZERO_CHUNK), end - pos)
            self.write_at(pos, [memoryview(_ZERO_CHUNK)[:n]])
            pos += n

    # internals ----------------------------------------------------------------------------

    @staticmethod
    def _aligned(offset: int, views: Sequence[memoryview]) -> bool:
        if offset % DIRECT_ALIGNMENT:
            return False
        for v in views:
            addr = _address(v)
            if addr is None or addr % DIRECT_ALIGNMENT or v.nbytes % DIRECT_ALIGNMENT:
                return False
        return True

    def _preadv_full(self, offset: int, views: Sequence[memoryview]) -> None:
        pending = [v for v in views if v.nbytes]
        while pending:
            batch = pending[:_IOV_MAX]
            got = os.preadv(self.fd, batch, offset)
            if got == 0:  # end of file: the rest reads as zeroes
                for v in pending:
                    v[:] = bytes(v.nbytes)
                return
            offset += got
            pending = _advance(pending, got)

    def _pwritev_full(self, offset: int, views: Sequence[memoryview]) -> None:
        pending = [v for v in views if v.nbytes]
        while pending:
            done = os.pwritev(self.fd, pending[:_IOV_MAX], offset)
            offset += done
            pending = _advance(pending, done)

    def _bounce_range(self, offset: int, length: int) -> tuple[int, int]:
        start = offset - offset % DIRECT_ALIGNMENT
        end = -(-(offset + length) // DIRECT_ALIGNMENT) * DIRECT_ALIGNMENT
        return start, end

    def _bounce_read(self, offset: int, views: Sequence[memoryview]) -> None:
        length = sum(v.nbytes for v in views)
        if not length:
            return
        start, end = self._bounce_range(offset, length)
        with mmap.mmap(-1, end - start) as bounce:
            self._preadv_full(start, [memoryview(bounce)])
            pos = offset - start
            for v in views:
                v[:] = bounce[pos : pos + v.nbytes]
                pos += v.nbytes

    def _bounce_write(self, offset: int, views: Sequence[memoryview]) -> None:
        length = sum(v.nbytes for v in views)
        if not length:
            return
        start, end = self._bounce_range(offset, length)
        with self._rmw_lock, mmap.mmap(-1, end - start) as bounce:
            old_size = self.size
            whole = memoryview(bounce)
            if start != offset or end != offset + length:
                self._preadv_full(start, [whole])
            pos = offset - start
            for v in views:
                bounce[pos : pos + v.nbytes] = v
                pos += v.nbytes
            self._pwritev_full(start, [whole])
            whole.release()
            wanted = max(old_size, offset + length)
            if end > wanted:
                os.ftruncate(self.fd, wanted)


def _advance(views: list[memoryview], count: int) -> list[memoryview]:
    """Drop `count` bytes from the front of a scatter/gather list."""
    out: list[memoryview] = []
    for v in views:
        if count >= v.nbytes:
            count -= v.nbytes
            continue
        out.append(v[count:] if count else v)
        count = 0
    return out
