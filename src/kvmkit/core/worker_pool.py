"""The generic worker pool ("tasklets") for blocking work such as disk I/O."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import AbstractContextManager
from typing import Any, TypeVar

from kvmkit.core.bql import Bql

log = logging.getLogger(__name__)

T = TypeVar("T")
_Task = tuple[Callable[..., Any], tuple[Any, ...], "Future[Any] | None", bool]


class WorkerPool:
    """Runs tasks on worker threads, holding the BQL unless a task says it does not need it.

    Workers take tasks from one `queue.SimpleQueue` (C code, no Python-level locking); `submit_nowait` is the
    cheap path for hot fire-and-forget work (no Future, no BQL), exceptions are logged.
    """

    def __init__(self, bql: Bql, max_workers: int = 4) -> None:
        self.bql = bql
        self.max_workers = max(1, max_workers)
        self._tasks: queue.SimpleQueue[_Task | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._start_lock = threading.Lock()
        self._shutdown = False
        # like concurrent.futures: at interpreter exit, let running and queued tasks finish (non-daemon workers)
        register = getattr(threading, "_register_atexit", None)
        if register is not None:
            register(self.shutdown)

    def submit(self, fn: Callable[..., T], *args: Any, needs_bql: bool = True) -> Future[T]:
        """Run `fn(*args)` on a worker; its result or exception lands in the returned Future."""
        future: Future[T] = Future()
        self._put((fn, args, future, needs_bql))
        return future

    def submit_nowait(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run `fn(*args)` on a worker without the BQL and without a Future (exceptions are logged)."""
        if len(self._threads) < self.max_workers or self._shutdown:
            self._put((fn, args, None, False))
        else:
            self._tasks.put((fn, args, None, False))

    def _put(self, task: _Task) -> None:
        if self._shutdown:
            raise RuntimeError("cannot schedule new tasks after shutdown")
        if len(self._threads) < self.max_workers:
            with self._start_lock:
                if len(self._threads) < self.max_workers:
                    thread = threading.Thread(
                        target=self._work, name=f"kvmkit-worker_{len(self._threads)}"
                    )
                    self._threads.append(thread)
                    thread.start()
        self._tasks.put(task)

    def _work(self) -> None:
        get, bql = self._tasks.get, self.bql.lock
        while True:
            task = get()
            if task is None:
                return
            fn, args, future, needs_bql = task
            if future is None:
                try:
                    fn(*args)
                except Exception:
                    log.exception("worker task %r failed", fn)
                continue
            if not future.set_running_or_notify_cancel():
                continue
            try:
                if needs_bql:
                    with bql:
                        result = fn(*args)
                else:
                    result = fn(*args)
            except BaseException as error:
                future.set_exception(error)
            else:
                future.set_result(result)

    def backlog(self) -> int:
        """Tasks queued and not yet started (approximate)."""
        return self._tasks.qsize()

    def bql_released(self) -> AbstractContextManager[None]:
        """For a task holding the BQL: drop it while the block sleeps or blocks, then retake it."""
        return self.bql.released()

    def shutdown(self, wait: bool = True) -> None:
        """Stop accepting tasks; with `wait`, let queued and running tasks finish (otherwise queued ones are
        cancelled)."""
        with self._start_lock:
            if self._shutdown and not self._threads:
                return
            self._shutdown = True
            threads, self._threads = list(self._threads), []
        if not wait:
            while True:
                try:
                    task = self._tasks.get_nowait()
                except queue.Empty:
                    break
                if task is not None and task[2] is not None:
                    task[2].cancel()
        for _ in threads:
            self._tasks.put(None)
        if wait:
            for thread in threads:
                thread.join()
