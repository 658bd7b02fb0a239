"""The big QEMU-style lock (BQL) and the re-entrant lock type for device code."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class OwnedRLock:
    """A re-entrant lock that knows its owner, and can be dropped entirely and retaken.

    Built directly on threading.RLock (its C fast path): `lock` is the raw RLock for hot loops that want
    `with lock:` without a Python-level frame; ownership and the saved recursion depth come from the RLock
    itself, so there is no bookkeeping of our own to fall out of step.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.lock = threading.RLock()
        self.acquire = self.lock.acquire

    def release(self) -> None:
        try:
            self.lock.release()
        except RuntimeError as error:
            raise RuntimeError(f"{self.name}: released by a thread that does not hold it") from error

    def __enter__(self) -> OwnedRLock:
        self.lock.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.lock.release()

    def held_by_current_thread(self) -> bool:
        return self.lock._is_owned()  # type: ignore[attr-defined]

    @contextmanager
    def released(self) -> Iterator[None]:
        """Drop every level this thread holds for the duration of the block, then retake them."""
        if not self.held_by_current_thread():
            raise RuntimeError(f"{self.name}: released() by a thread that does not hold it")
        state = self.lock._release_save()  # type: ignore[attr-defined]
        try:
            yield
        finally:
            self.lock._acquire_restore(state)  # type: ignore[attr-defined]


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
