"""The generic worker pool ("tasklets") for blocking work such as disk I/O."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from typing import Any, TypeVar

from kvmkit.core.bql import Bql

T = TypeVar("T")


class WorkerPool:
    """Runs tasks on worker threads, holding the BQL unless a task says it does not need it."""

    def __init__(self, bql: Bql, max_workers: int = 4) -> None:
        self.bql = bql
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="kvmkit-worker")

    def submit(self, fn: Callable[..., T], *args: Any, needs_bql: bool = True) -> Future[T]:
        """Run `fn(*args)` on a worker; its result or exception lands in the returned Future."""
        if needs_bql:
            return self._executor.submit(self._run_locked, fn, args)
        return self._executor.submit(fn, *args)

    def _run_locked(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        with self.bql:
            return fn(*args)

    def bql_released(self) -> AbstractContextManager[None]:
        """For a task holding the BQL: drop it while the block sleeps or blocks, then retake it."""
        return self.bql.released()

    def shutdown(self, wait: bool = True) -> None:
        """Stop accepting tasks; with `wait`, let queued and running tasks finish."""
        self._executor.shutdown(wait=wait, cancel_futures=not wait)
