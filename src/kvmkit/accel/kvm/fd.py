"""A KVM file descriptor (system, VM or vCPU) and the one place ioctls are issued."""

from __future__ import annotations

import fcntl
import os
from typing import Any

from kvmkit.errors import HostError


class KvmFd:
    """Owns one KVM file descriptor; `ioctl` turns kernel errors into HostError naming the action."""

    def __init__(self, fd: int, name: str) -> None:
        self.fd = fd
        self.name = name

    def ioctl(self, request: int, arg: Any = 0, action: str = "ioctl") -> int:
        """Issue `request`; a ctypes structure argument is passed by reference and updated in place."""
        try:
            return fcntl.ioctl(self.fd, request, arg, True)
        except OSError as error:
            raise HostError(f"{self.name}: {action} failed: {os.strerror(error.errno or 0)}") from error

    def raw_ioctl(self, request: int, arg: Any = 0) -> int:
        """Issue `request` and let OSError through, for callers that handle a specific errno."""
        return fcntl.ioctl(self.fd, request, arg, True)

    def close(self) -> None:
        """Close the descriptor (idempotent)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> KvmFd:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
