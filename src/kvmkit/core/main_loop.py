"""The main loop: fd handlers, timers and bottom halves, every callback run holding the BQL."""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import selectors
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
    """A selectors-based event loop; it waits without the BQL and dispatches with it."""

    def __init__(self, bql: Bql, on_error: Callable[[BaseException], None] | None = None) -> None:
        self.bql = bql
        self.on_error = on_error
        self._selector = selectors.DefaultSelector()
        self._wake_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._selector.register(self._wake_fd, selectors.EVENT_READ, self._drain_wakeups)
        self._timers: list[tuple[float, int, TimerHandle]] = []
        self._timer_lock = threading.Lock()
        self._sequence = itertools.count()
        self._bottom_halves: deque[Callback] = deque()
        self._stopping = False
        self._thread: int | None = None

    # --- registration (from any thread) -------------------------------------------------

    def add_reader(self, fd: int, cb: Callback) -> None:
        """Call `cb()` whenever `fd` is readable."""
        self._selector.register(fd, selectors.EVENT_READ, cb)
        self._wake_if_other_thread()

    def remove_reader(self, fd: int) -> None:
        """Stop watching `fd` (ignored if not watched)."""
        try:
            self._selector.unregister(fd)
        except KeyError:
            pass

    def call_later(self, delay: float, cb: Callback) -> TimerHandle:
        """Call `cb()` after `delay` seconds (monotonic clock)."""
        handle = TimerHandle(time.monotonic() + max(delay, 0.0), cb)
        with self._timer_lock:
            heapq.heappush(self._timers, (handle.deadline, next(self._sequence), handle))
            earliest = self._timers[0][2] is handle
        if earliest:
            self._wake_if_other_thread()
        return handle

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
        try:
            while not self._stopping:
                ready = self._selector.select(self._timeout())
                with bql:
                    registered = self._selector.get_map()
                    for key, _events in ready:
                        if registered.get(key.fd) is key:  # not removed by an earlier callback
                            self._call(key.data)
                    self._run_due_timers()
                    self._run_bottom_halves()
        finally:
            self._thread = None

    def close(self) -> None:
        """Release the selector and the wakeup eventfd."""
        self._selector.close()
        os.close(self._wake_fd)

    def _timeout(self) -> float | None:
        if self._bottom_halves:
            return 0
        with self._timer_lock:
            if not self._timers:
                return None
            return max(self._timers[0][0] - time.monotonic(), 0)

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
