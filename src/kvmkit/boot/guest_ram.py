"""The guest memory access the boot loader needs: the DMA API's write and view."""

from __future__ import annotations

from typing import Protocol


class GuestRam(Protocol):
    """Anything that can write bytes at a guest-physical address and expose a range as a view."""

    def write(self, gpa: int, data: bytes) -> None: ...

    def view(self, gpa: int, length: int) -> memoryview: ...
