"""The stdio backend: the VMM's own terminal, in raw mode while attached, with Ctrl-A escapes."""

from __future__ import annotations

import atexit
import logging
import os
import select
import signal
import termios
import threading
from collections.abc import Callable
from types import FrameType

from kvmkit.chardev.base import Chardev, fd_is_readable, write_all_fd
from kvmkit.chardev.escape import EscapeKeys

log = logging.getLogger(__name__)

# Signals after which the terminal must not be left in raw mode.
_RESTORING_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


class StdioChardev(Chardev):
    """The VMM's stdin/stdout (`-chardev stdio`); `on_exit` runs on Ctrl-A x."""

    def __init__(
        self,
        label: str,
        on_exit: Callable[[], None] | None = None,
        input_fd: int = 0,
        output_fd: int = 1,
        escapes: bool = True,
    ) -> None:
        super().__init__(label)
        self._input_fd = input_fd
        self._output_fd = output_fd
        self._input_open = _pollable(input_fd)  # /dev/null or a regular file cannot be watched
        self._saved_termios: list | None = None
        self._previous_handlers: dict[int, object] = {}
        self._escapes = EscapeKeys(self.write, on_exit=on_exit) if escapes else None
        self._enter_raw_mode()

    # -- terminal mode -------------------------------------------------------------------------
    def _enter_raw_mode(self) -> None:
        if not os.isatty(self._input_fd):
            return
        saved = termios.tcgetattr(self._input_fd)
        raw = termios.tcgetattr(self._input_fd)
        iflag, oflag, _cflag, lflag = 0, 1, 2, 3
        raw[iflag] &= ~(
            termios.IGNBRK | termios.BRKINT | termios.PARMRK | termios.ISTRIP
            | termios.INLCR | termios.IGNCR | termios.ICRNL | termios.IXON
        )
        raw[oflag] |= termios.OPOST  # keep "\n" -> "\r\n" for the host terminal
        raw[lflag] &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.IEXTEN)
        raw[6][termios.VMIN] = 1
        raw[6][termios.VTIME] = 0
        termios.tcsetattr(self._input_fd, termios.TCSANOW, raw)
        self._saved_termios = saved
        atexit.register(self.restore_terminal)
        if threading.current_thread() is threading.main_thread():
            for signum in _RESTORING_SIGNALS:
                self._previous_handlers[signum] = signal.signal(signum, self._on_fatal_signal)

    def restore_terminal(self) -> None:
        """Put the terminal back as it was (idempotent; also run at exit and on signals)."""
        saved, self._saved_termios = self._saved_termios, None
        if saved is not None:
            try:
                termios.tcsetattr(self._input_fd, termios.TCSADRAIN, saved)
            except termios.error as exc:
                log.debug("stdio: cannot restore terminal: %s", exc)

    def _on_fatal_signal(self, signum: int, frame: FrameType | None) -> None:
        self.restore_terminal()
        previous = self._previous_handlers.get(signum, signal.SIG_DFL)
        if callable(previous):
            previous(signum, frame)
            return
        if previous == signal.SIG_IGN:
            return
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    # -- data ----------------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        if not self._closed and data:
            write_all_fd(self._output_fd, data, self.label)

    def fileno_for_input(self) -> int | None:
        return self._input_fd if self._input_open else None

    def _read_input(self, limit: int) -> bytes:
        if not self._input_open or not fd_is_readable(self._input_fd):
            return b""
        try:
            data = os.read(self._input_fd, limit)
        except OSError as exc:
            log.debug("stdio: input error, input closed: %s", exc)
            data = b""
        if not data:
            self._input_open = False  # end of input: stop watching
        return data

    def _deliver(self, data: bytes) -> None:
        if self._escapes is None:
            super()._deliver(data)
        else:
            self._escapes.filter(data, super()._deliver)

    def set_focus_switch_handler(self, handler: Callable[[], None]) -> bool:
        if self._escapes is None:
            return False
        self._escapes.on_switch = handler
        return True

    def filename(self) -> str:
        return "stdio"

    def close(self) -> None:
        super().close()
        self.restore_terminal()
        for signum, previous in self._previous_handlers.items():
            if threading.current_thread() is threading.main_thread():
                signal.signal(signum, previous)  # type: ignore[arg-type]
        self._previous_handlers.clear()


def _pollable(fd: int) -> bool:
    """True when epoll accepts `fd` (ttys, pipes, sockets); False for /dev/null, regular files, closed fds."""
    try:
        with select.epoll() as probe:
            probe.register(fd, select.EPOLLIN)
    except OSError:
        return False
    return True
