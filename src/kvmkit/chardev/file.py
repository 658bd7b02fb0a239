"""The file backend: device output appended or written to a host file."""

from __future__ import annotations

import os

from kvmkit.chardev.base import Chardev, write_all_fd
from kvmkit.errors import HostError


class FileChardev(Chardev):
    """Writes device output to `path` (`-chardev file,path=P[,append=on]`); it has no input."""

    def __init__(self, label: str, path: str, append: bool = False) -> None:
        super().__init__(label)
        self.path = path
        self.append = append
        flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_APPEND if append else os.O_TRUNC)
        try:
            self._fd: int | None = os.open(path, flags, 0o666)
        except OSError as exc:
            raise HostError(f"chardev '{label}': cannot open file '{path}': {exc.strerror}") from exc

    def write(self, data: bytes) -> None:
        if self._fd is not None and data:
            write_all_fd(self._fd, data, self.label)

    def filename(self) -> str:
        return f"file:{self.path}"

    def close(self) -> None:
        super().close()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
