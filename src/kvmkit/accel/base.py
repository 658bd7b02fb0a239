"""What the machine needs from a hardware accelerator, so another one (e.g. a test double) can exist."""

from __future__ import annotations

from typing import Protocol


class AcceleratedVcpu(Protocol):
    """One virtual CPU, run by its own thread."""

    index: int

    def bind_to_current_thread(self) -> None:
        """Record the calling thread as the one that runs this vCPU (kick() targets it)."""

    def run(self) -> int:
        """Run the guest until the next exit and return the exit reason."""

    def kick(self) -> None:
        """From any thread: make run() return soon."""

    def complete_pending_exit(self) -> None:
        """On the vCPU thread: finish the last exit's instruction without running the guest further."""

    def close(self) -> None: ...


class AcceleratedVm(Protocol):
    """One VM: guest memory slots, interrupt injection, vCPU creation."""

    def set_user_memory_region(
        self, slot: int, gpa: int, size: int, host_addr: int, readonly: bool = False
    ) -> None: ...

    def irq_line(self, gsi: int, level: bool | int) -> None: ...

    def signal_msi(self, address: int, data: int) -> int: ...

    def create_vcpu(self, index: int) -> AcceleratedVcpu: ...

    def close(self) -> None: ...


class Accelerator(Protocol):
    """The host side: capability checks and VM creation."""

    name: str

    def check_extension(self, cap: int) -> int: ...

    def create_vm(self) -> AcceleratedVm: ...

    def close(self) -> None: ...
