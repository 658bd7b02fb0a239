"""The big QEMU-style lock (BQL) and the re-entrant lock type for device code."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class OwnedRLock:
    """A re-entrant lock that knows its owner, and can be dropped entirely and retaken."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.RLock()
        self._owner: int | None = None
        self._depth = 0

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if not self._lock.acquire(blocking, timeout):
            return False
        self._owner = threading.get_ident()
        self._depth += 1
        return True

    def release(self) -> None:
        if self._owner != threading.get_ident():
            raise RuntimeError(f"{self.name}: released by a thread that does not hold it")
        self._depth -= 1
        if self._depth == 0:
            self._owner = None
        self._lock.release()

    def __enter__(self) -> OwnedRLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def held_by_current_thread(self) -> bool:
        return self._owner == threading.get_ident()

    @contextmanager
    def released(self) -> Iterator[None]:
        """Drop every level this thread holds for the duration of the block, then retake them."""
        if not self.held_by_current_thread():
            raise RuntimeError(f"{self.name}: released() by a thread that does not hold it")
        depth = self._depth
        for _ in range(depth):
            self.release()
        try:
            yield
        finally:
            for _ in range(depth):
                self.acquire()


class Bql(OwnedRLock):
    """The big lock: device emulation and machine state change only while holding it.

    vCPU threads run KVM_RUN without it and take it to dispatch each exit; main-loop callbacks
    and tasks submitted with needs_bql=True run holding it.
    """

    def __init__(self) -> None:
        super().__init__("BQL")


class DeviceLock(OwnedRLock):
    """A re-entrant per-device lock for code that wants to run without the BQL later."""

    def __init__(self, device_name: str) -> None:
        super().__init__(f"lock of {device_name}")
