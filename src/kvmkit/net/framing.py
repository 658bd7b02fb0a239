"""QEMU's stream netdev framing: every Ethernet frame preceded by its length as a 4-byte big-endian integer.

The same framing is spoken by passt on its unix socket, so one parser serves `stream` and `user`.
"""

from __future__ import annotations

import ctypes

from kvmkit.errors import GuestError

MAX_STREAM_FRAME = 65535 + 14 + 4


class StreamFrameHeader(ctypes.BigEndianStructure):
    """The length prefix of one frame on a stream socket."""

    _pack_ = 1
    _fields_ = [("length", ctypes.c_uint32)]


PREFIX_LEN = ctypes.sizeof(StreamFrameHeader)


def encode_frame(frame: bytes | bytearray | memoryview) -> bytes:
    return bytes(StreamFrameHeader(len(frame))) + bytes(frame)


class StreamDeframer:
    """Reassembles frames from arbitrary chunks of a byte stream; a bad length is a protocol error."""

    def __init__(self, max_frame: int = MAX_STREAM_FRAME) -> None:
        self.max_frame = max_frame
        self._buffer = bytearray()
        self._start = 0

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self._buffer += data

    @property
    def buffered(self) -> int:
        return len(self._buffer) - self._start

    def next_frame(self) -> memoryview | None:
        """The next complete frame (valid until the next feed/next_frame), or None if incomplete."""
        if self.buffered < PREFIX_LEN:
            self._compact()
            return None
        header = StreamFrameHeader.from_buffer_copy(self._buffer, self._start)
        if header.length > self.max_frame:
            raise GuestError(f"stream peer sent a frame of {header.length} bytes (limit {self.max_frame})")
        end = self._start + PREFIX_LEN + header.length
        if len(self._buffer) < end:
            self._compact()
            return None
        frame = memoryview(bytes(self._buffer[self._start + PREFIX_LEN : end]))
        self._start = end
        return frame

    def _compact(self) -> None:
        if self._start:
            del self._buffer[: self._start]
            self._start = 0
