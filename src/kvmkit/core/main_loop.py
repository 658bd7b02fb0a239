"""The main loop: fd handlers, timers and bottom halves, every callback run holding the BQL."""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable

from kvmkit.core.bql import Bql

log = logging.getLogger(__name__)

Callback = Callable[[], object]


class TimerHandle:
    """A pending call_later; cancel() prevents it from running."""

    __slots__ = ("callback", "cancelled", "deadline")

    def __init__(self, deadline: float, callback: Callback) -> None:
        self.deadline = deadline
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class MainLoop:
    """An epoll event loop; it waits without the BQL and dispatches with it.

    epoll is used directly (not `selectors`): an iteration is on the path of every network frame and disk
    request, and the selectors layer's per-event key objects cost more than the wait itself.
    """

    def __init__(self, bql: Bql, on_error: Callable[[BaseException], None] | None = None) -> None:
        self.bql = bql
        self.on_error = on_error
        self._epoll = select.epoll()
        self._readers: dict[int, Callback] = {}
        self._wake_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._timers: list[tuple[float, int, TimerHandle]] = []
        self._timer_lock = threading.Lock()
        self._sequence = itertools.count()
        self._bottom_halves: deque[Callback] = deque()
        self._stopping = False
        self._thread: int | None = None
        self.add_reader(self._wake_fd, self._drain_wakeups)

    # --- registration (from any thread) -------------------------------------------------

    def add_reader(self, fd: int, cb: Callback) -> None:
        """Call `cb()` whenever `fd` is readable (KeyError if `fd` is watched already)."""
        if fd in self._readers:
            raise KeyError(f"fd {fd} is already watched")
        self._epoll.register(fd, select.EPOLLIN)
        self._readers[fd] = cb
        self._wake_if_other_thread()

    def remove_reader(self, fd: int) -> None:
        """Stop watching `fd` (ignored if not watched)."""
        if self._readers.pop(fd, None) is None:
            return
        try:
            self._epoll.unregister(fd)
        except OSError:
            pass  # already closed: epoll forgot it by itself

    def call_later(self, delay: float, cb: Callback) -> TimerHandle:
        """Call `cb()` after `delay` seconds (monotonic clock)."""
        handle = TimerHandle(time.monotonic() + max(delay, 0.0), cb)
        with self._timer_lock:
            heapq.heappush(self._timers, (handle.deadline, next(self._sequence), handle))
            earliest = self._timers[0][2] is handle
        if earliest:
            self._wake_if_other_thread()
        return handle

    def call_soon(self, cb: Callback) -> None:
        """Queue a bottom half without a timer: `cb()` runs once the fds ready now are served (in this iteration if
        queued by a callback of it). No clock read, no lock, no wakeup write from the loop's own thread: for work
        a device defers on every frame (virtio-net's second look at its TX ring)."""
        self._bottom_halves.append(cb)
        self._wake_if_other_thread()

    def call_soon_threadsafe(self, cb: Callback) -> None:
        """Queue a bottom half: `cb()` runs soon in the loop thread, holding the BQL."""
        self._bottom_halves.append(cb)
        self._wake()

    def stop(self) -> None:
        """Make run() return after the current iteration (callable from any thread)."""
        self._stopping = True
        self._wake()

    # --- the loop ---------------------------------------------------------------------------

    def run(self) -> None:
        """Dispatch events until stop() is called."""
        self._thread = threading.get_ident()
        self._stopping = False
        bql = getattr(self.bql, "lock", self.bql)  # the raw RLock: no Python frame per iteration
        poll, readers, call = self._epoll.poll, self._readers, self._call
        try:
            while not self._stopping:
                timeout = self._timeout()
                try:
                    ready = poll(-1 if timeout is None else timeout)
                except InterruptedError:
                    continue
                with bql:
                    for fd, _events in ready:
                        callback = readers.get(fd)
                        if callback is not None:  # not removed by an earlier callback
                            call(callback)
                    if self._timers:
                        self._run_due_timers()
                    if self._bottom_halves:
                        self._run_bottom_halves()
        finally:
            self._thread = None

    def close(self) -> None:
        """Release the epoll instance and the wakeup eventfd."""
        self._epoll.close()
        os.close(self._wake_fd)

    def _timeout(self) -> float | None:
        if self._bottom_halves:
            return 0
        timers = self._timers
        if not timers:  # read without the lock: a timer added meanwhile wakes the loop
            return None
        with self._timer_lock:
            if not timers:
                return None
            return max(timers[0][0] - time.monotonic(), 0)

    def _run_due_timers(self) -> None:
        now = time.monotonic()
        while True:
            with self._timer_lock:
                if not self._timers or self._timers[0][0] > now:
                    return
                handle = heapq.heappop(self._timers)[2]
            if not handle.cancelled:
                self._call(handle.callback)

    def _run_bottom_halves(self) -> None:
        for _ in range(len(self._bottom_halves)):
            self._call(self._bottom_halves.popleft())

    def _call(self, cb: Callback) -> None:
        try:
            cb()
        except Exception as error:
            if self.on_error is None:
                log.exception("main loop callback %r failed", cb)
            else:
                self.on_error(error)

    def _drain_wakeups(self) -> None:
        try:
            os.eventfd_read(self._wake_fd)
        except BlockingIOError:
            pass

    def _wake(self) -> None:
        os.eventfd_write(self._wake_fd, 1)

    def _wake_if_other_thread(self) -> None:
        if self._thread is not None and self._thread != threading.get_ident():
            self._wake()
