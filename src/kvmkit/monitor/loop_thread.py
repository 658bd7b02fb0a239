"""The monitor's own thread running an asyncio loop, shared by every QMP and HMP listener of a hub."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class MonitorThread:
    """Runs an asyncio loop in a daemon thread; other threads submit work to it.

    Blocking command handlers run on `executor` (never on the loop), so one connection waiting for the
    machine lock does not stall the others.
    """

    def __init__(self, name: str = "kvmkit-monitor", handler_threads: int = 2) -> None:
        self.loop = asyncio.new_event_loop()
        self.executor = ThreadPoolExecutor(max_workers=handler_threads, thread_name_prefix=f"{name}-cmd")
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._started = False
        self._stopped = False

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()

    def start(self) -> None:
        if not self._started:
            self._started = True
            self._thread.start()

    def in_loop_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = 30.0) -> T:
        """Run `coroutine` on the loop and wait for its result (not from the loop thread itself)."""
        if self.in_loop_thread():
            raise RuntimeError("MonitorThread.run() called from the monitor loop thread")
        self.start()
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def call_soon(self, callback: Callable[..., None], *args: Any) -> None:
        """Schedule `callback(*args)` on the loop from any thread; ignored once stopped."""
        if self._stopped:
            return
        try:
            self.loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop closed between the check and the call
            pass

    def stop(self) -> None:
        """Stop the loop and join the thread; pending handler threads are not waited for."""
        if self._stopped:
            return
        self._stopped = True
        if self._started:
            self.loop.call_soon_threadsafe(self.loop.stop)
            if not self.in_loop_thread():
                self._thread.join(timeout=10)
        else:
            self.loop.close()
        self.executor.shutdown(wait=False, cancel_futures=True)
