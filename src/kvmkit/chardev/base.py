"""The character backend interface: what a serial port or monitor talks to on the host side.

Threading model: `write()` is called by a device from a vCPU thread with the machine's big lock
held. Input arrives on the main loop thread: either the loop owner registered the backend with
`start(loop)` (the backend then adds and removes its own fd readers), or it calls
`on_readable()` itself whenever `fileno_for_input()` is readable. The loop owner holds the big
lock while running these callbacks, so frontends see `receive()` under the same lock as guest
accesses. A frontend that frees room (the guest read its RX FIFO) calls `accept_input()`, which
is safe from any thread.
"""

from __future__ import annotations

import logging
import os
import select
from collections.abc import Callable
from typing import Any, Protocol

log = logging.getLogger(__name__)

# The most bytes moved from a host fd to a frontend per readable event.
READ_CHUNK = 4096


class ChardevFrontend(Protocol):
    """A device (UART, monitor) that consumes a backend's input."""

    def receive(self, data: bytes) -> None: ...

    def can_receive(self) -> int: ...


class EventLoop(Protocol):
    """The part of a main loop a backend needs; `asyncio` loops satisfy it as they are."""

    def add_reader(self, fd: int, callback: Callable[[], Any]) -> Any: ...

    def remove_reader(self, fd: int) -> Any: ...

    def call_soon_threadsafe(self, callback: Callable[[], Any]) -> Any: ...


class Chardev:
    """Base of every character backend: output sink, input source, `query-chardev` entry.

    Subclasses implement `write()`, `_read_input(limit)` and `fileno_for_input()`, and
    override `filename()` and `close()` as needed.
    """

    def __init__(self, label: str) -> None:
        self.label = label
        self.frontend: ChardevFrontend | None = None
        self._loop: EventLoop | None = None
        self._watched_fd: int | None = None
        self._closed = False

    # -- output ------------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        """Output from the device; never raises for host I/O trouble (logged instead)."""
        raise NotImplementedError

    # -- input -------------------------------------------------------------------------------
    def attach(self, frontend: ChardevFrontend) -> None:
        """Connect the one frontend that receives this backend's input."""
        self.frontend = frontend
        self._update_watch()

    def detach(self) -> None:
        """Disconnect the frontend; input stays in the host fd until one attaches again."""
        self.frontend = None
        self._update_watch()

    def fileno_for_input(self) -> int | None:
        """The fd that becomes readable when there is input (None: no input now)."""
        return None

    def start(self, loop: EventLoop) -> None:
        """Hand the backend to a main loop; it keeps its own fd reader registered there."""
        self._loop = loop
        self._update_watch()

    def on_readable(self) -> None:
        """Move available input to the frontend, as much as it has room for."""
        room = self._frontend_room()
        if room <= 0:
            self._update_watch()
            return
        data = self._read_input(min(room, READ_CHUNK))
        if data:
            self._deliver(data)
        self._update_watch()

    # The loop owner may prefer this spelling.
    poll_input = on_readable

    def accept_input(self) -> None:
        """The frontend has room again: resume watching the input fd (any thread)."""
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._update_watch)

    def _deliver(self, data: bytes) -> None:
        """Hand input to the frontend (backends with escape keys filter here)."""
        if self.frontend is not None:
            self.frontend.receive(data)

    def _read_input(self, limit: int) -> bytes:
        """Read at most `limit` bytes of pending input without blocking."""
        return b""

    def _frontend_room(self) -> int:
        return 0 if self.frontend is None else max(0, self.frontend.can_receive())

    def _update_watch(self) -> None:
        """Watch the input fd only while a frontend can take bytes (back-pressure)."""
        loop = self._loop
        if loop is None:
            return
        wanted = None if self._closed else self.fileno_for_input()
        if wanted is not None and self._frontend_room() <= 0 and not self._watch_without_room():
            wanted = None
        if wanted == self._watched_fd:
            return
        if self._watched_fd is not None:
            loop.remove_reader(self._watched_fd)
        self._watched_fd = wanted
        if wanted is not None:
            loop.add_reader(wanted, self.on_readable)

    def _watch_without_room(self) -> bool:
        """True when the fd must stay watched even with a full frontend (e.g. a listener)."""
        return False

    # -- focus switching (Ctrl-A c) ----------------------------------------------------------
    def set_focus_switch_handler(self, handler: Callable[[], None]) -> bool:
        """Let a mux learn of the user's switch key; False when this backend has no escapes."""
        return False

    # -- lifetime and introspection ---------------------------------------------------------
    def filename(self) -> str:
        """The backend's QEMU-style description, e.g. "stdio" or "file:/tmp/x"."""
        raise NotImplementedError

    def info(self) -> dict[str, object]:
        """One `query-chardev` entry."""
        return {"label": self.label, "filename": self.filename(), "frontend-open": self.frontend is not None}

    def close(self) -> None:
        """Release host resources; further writes are dropped."""
        self._closed = True
        self._update_watch()


def write_all_fd(fd: int, data: bytes, what: str) -> None:
    """Write all of `data` to a (possibly non-blocking) fd; log and drop on host errors."""
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            _wait_writable(fd)
            continue
        except InterruptedError:
            continue
        except OSError as exc:
            log.debug("chardev %s: dropping %d output bytes: %s", what, len(view), exc)
            return
        view = view[written:]


def _wait_writable(fd: int) -> None:
    select.select([], [fd], [], 1.0)


def fd_is_readable(fd: int) -> bool:
    """True when a read of `fd` would not block."""
    try:
        readable, _, _ = select.select([fd], [], [], 0)
    except (OSError, ValueError):
        return False
    return bool(readable)
