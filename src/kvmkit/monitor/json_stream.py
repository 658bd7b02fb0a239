"""Splits a monitor byte stream into top-level JSON texts, the way QEMU's JSON streamer does.

A message may span lines and several may share a line.  Limits protect the VMM: a message larger than
`max_message_bytes` or nested deeper than `max_depth` is reported once and skipped up to its end.  As in
QEMU, a raw control character (other than tab, CR, LF) or a 0xFE/0xFF byte is a lexical error that resets
the splitter, which is how a client resynchronises after sending garbage.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

_STRING_STOP = re.compile(rb'["\\\x00-\x1f\xfe\xff]')
_NESTED_STOP = re.compile(rb'[{}\[\]"\x00-\x08\x0b\x0c\x0e-\x1f\xfe\xff]')
_SCALAR_STOP = re.compile(rb'[{}\[\]" \t\r\n\x00-\x1f\xfe\xff]')
_WHITESPACE = b" \t\r\n"
_RESET_BYTES = frozenset(set(range(0x20)) - {0x09, 0x0A, 0x0D}) | {0xFE, 0xFF}


@dataclass(frozen=True)
class StreamError:
    """The stream held something that is not a JSON text; `reason` completes "JSON parse error, ..."."""

    reason: str


class JsonMessageSplitter:
    """Feed bytes in, get complete JSON texts (bytes) and StreamErrors out, in stream order."""

    def __init__(self, max_message_bytes: int = 1 << 20, max_depth: int = 1024) -> None:
        self.max_message_bytes = max_message_bytes
        self.max_depth = max_depth
        self._reset()

    def _reset(self) -> None:
        self._buffer = bytearray()
        self._depth = 0
        self._in_string = False
        self._escape = False
        self._in_scalar = False
        self._discarding = False
        self._active = False  # inside a message (nested, top-level string or scalar)

    def feed(self, data: bytes) -> list[bytes | StreamError]:
        out: list[bytes | StreamError] = []
        pos = 0
        end = len(data)
        while pos < end:
            if not self._active:
                byte = data[pos]
                if byte in _WHITESPACE:
                    pos += 1
                    continue
                if byte in _RESET_BYTES:
                    out.append(self._lexical_error(byte))
                    pos += 1
                    continue
                self._active = True
                if byte in b"{[":
                    self._depth = 1
                elif byte == ord('"'):
                    self._in_string = True
                elif byte in b"}]":
                    self._append(data[pos:pos + 1], out)
                    self._finish(out)
                    pos += 1
                    continue
                else:
                    self._in_scalar = True
                self._append(data[pos:pos + 1], out)
                pos += 1
                continue
            pos = self._advance(data, pos, out)
        return out

    def _advance(self, data: bytes, pos: int, out: list[bytes | StreamError]) -> int:
        """Consume part of `data` inside an active message; return the new position."""
        if self._escape:
            self._escape = False
            if data[pos] in _RESET_BYTES:
                out.append(self._lexical_error(data[pos]))
            else:
                self._append(data[pos:pos + 1], out)
            return pos + 1
        if self._in_string:
            pattern = _STRING_STOP
        elif self._in_scalar:
            pattern = _SCALAR_STOP
        else:
            pattern = _NESTED_STOP
        match = pattern.search(data, pos)
        stop = match.start() if match else len(data)
        self._append(data[pos:stop], out)
        if match is None:
            return stop
        byte = data[stop]
        if self._in_scalar:  # the token ends before its terminator, which is processed afresh
            self._finish(out)
            return stop
        if byte in _RESET_BYTES:
            out.append(self._lexical_error(byte))
            return stop + 1
        self._append(data[stop:stop + 1], out)
        if self._in_string:
            if byte == ord("\\"):
                self._escape = True
            else:  # closing quote
                self._in_string = False
                if self._depth == 0:
                    self._finish(out)
        elif byte == ord('"'):
            self._in_string = True
        elif byte in b"{[":
            self._depth += 1
            if self._depth > self.max_depth and not self._discarding:
                self._start_discarding(out, f"nesting deeper than {self.max_depth} levels")
        else:
            self._depth -= 1
            if self._depth == 0:
                self._finish(out)
        return stop + 1

    def _append(self, chunk: bytes, out: list[bytes | StreamError]) -> None:
        if self._discarding or not chunk:
            return
        self._buffer += chunk
        if len(self._buffer) > self.max_message_bytes:
            self._start_discarding(out, f"message longer than {self.max_message_bytes} bytes")

    def _start_discarding(self, out: list[bytes | StreamError], reason: str) -> None:
        self._discarding = True
        self._buffer = bytearray()
        out.append(StreamError(reason))

    def _finish(self, out: list[bytes | StreamError]) -> None:
        if not self._discarding:
            out.append(bytes(self._buffer))
        self._reset()

    def _lexical_error(self, byte: int) -> StreamError:
        self._reset()
        return StreamError(f"invalid byte 0x{byte:02x} in input")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"invalid literal '{name}'")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number '{text[:32]}' out of range")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key '{key[:64]}'")
        result[key] = value
    return result


def parse_request(text: bytes) -> Any:
    """Strict JSON as QEMU accepts it: no NaN/Infinity, finite numbers, no duplicate keys."""
    return json.loads(text.decode("utf-8"), parse_constant=_reject_constant, parse_float=_finite_float,
                      object_pairs_hook=_unique_keys)
