"""The pty backend: a fresh pseudo-terminal whose /dev/pts path a user attaches to."""

from __future__ import annotations

import errno
import logging
import os
import tty

from kvmkit.chardev.base import Chardev, fd_is_readable
from kvmkit.errors import HostError

log = logging.getLogger(__name__)


class PtyChardev(Chardev):
    """A pseudo-terminal (`-chardev pty`); `path` is the /dev/pts/N to open.

    The backend keeps the slave side open itself so the master never sees a hangup when no
    user is attached; output written while nobody reads is dropped once the pty buffer is
    full, so a vCPU never waits on an absent reader.
    """

    def __init__(self, label: str) -> None:
        super().__init__(label)
        try:
            self._master, self._slave = os.openpty()
        except OSError as exc:
            raise HostError(f"chardev '{label}': cannot allocate a pty: {exc.strerror}") from exc
        self.path = os.ttyname(self._slave)
        tty.setraw(self._slave)
        os.set_blocking(self._master, False)
        os.set_inheritable(self._master, False)
        os.set_inheritable(self._slave, False)

    def write(self, data: bytes) -> None:
        if self._closed:
            return
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self._master, view):]
            except BlockingIOError:
                log.debug("pty %s: nobody reading, %d bytes dropped", self.path, len(view))
                return
            except OSError as exc:
                if exc.errno != errno.EINTR:
                    log.debug("pty %s: write failed: %s", self.path, exc)
                    return

    def fileno_for_input(self) -> int | None:
        return None if self._closed else self._master

    def _read_input(self, limit: int) -> bytes:
        if self._closed or not fd_is_readable(self._master):
            return b""
        try:
            return os.read(self._master, limit)
        except OSError:
            return b""

    def filename(self) -> str:
        return f"pty:{self.path}"

    def close(self) -> None:
        if self._closed:
            return
        super().close()
        os.close(self._master)
        os.close(self._slave)
