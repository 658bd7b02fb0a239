"""A multiplexer: one backend shared by several frontends (serial + monitor), switched by Ctrl-A c."""

from __future__ import annotations

import logging
from collections.abc import Callable

from kvmkit.chardev.base import Chardev, EventLoop
from kvmkit.chardev.escape import EscapeKeys

log = logging.getLogger(__name__)


class MuxPort(Chardev):
    """What one frontend sees of a mux: output goes to the shared backend, input when focused."""

    def __init__(self, mux: MuxChardev, label: str, on_focus: Callable[[], None] | None) -> None:
        super().__init__(label)
        self._mux = mux
        self.on_focus = on_focus

    def write(self, data: bytes) -> None:
        if not self._closed:
            self._mux.backend.write(data)

    def accept_input(self) -> None:
        self._mux.port_accepts_input(self)

    def start(self, loop: EventLoop) -> None:
        self._mux.start(loop)

    def filename(self) -> str:
        return self._mux.backend.filename()


class MuxChardev:
    """Routes a backend's input to the focused port; every port's output reaches the backend.

    If the backend decodes escape keys itself (stdio), it tells the mux about Ctrl-A c;
    otherwise the mux decodes them from the input stream.
    """

    def __init__(self, backend: Chardev, on_exit: Callable[[], None] | None = None) -> None:
        self.backend = backend
        self.ports: list[MuxPort] = []
        self.focus = 0
        self._pending = b""
        self._loop: EventLoop | None = None
        self._escapes: EscapeKeys | None = None
        if not backend.set_focus_switch_handler(self.switch_focus):
            self._escapes = EscapeKeys(backend.write, on_exit=on_exit, on_switch=self.switch_focus)
        backend.attach(self)

    def add_port(self, label: str, on_focus: Callable[[], None] | None = None) -> MuxPort:
        """A new frontend slot; the first one added has the focus."""
        port = MuxPort(self, label, on_focus)
        self.ports.append(port)
        return port

    def switch_focus(self) -> None:
        """Give input to the next port (Ctrl-A c)."""
        if not self.ports:
            return
        self.focus = (self.focus + 1) % len(self.ports)
        port = self.ports[self.focus]
        if port.on_focus is not None:
            port.on_focus()
        self._resume_input()

    def start(self, loop: EventLoop) -> None:
        if self._loop is None:
            self._loop = loop
            self.backend.start(loop)

    # -- the backend's frontend ----------------------------------------------------------------
    def can_receive(self) -> int:
        if self._pending:
            return 0
        port = self._focused()
        if port is None or port.frontend is None:
            return 0
        return max(0, port.frontend.can_receive())

    def receive(self, data: bytes) -> None:
        if self._escapes is not None:
            self._escapes.filter(data, self._route)
        else:
            self._route(data)

    def _route(self, data: bytes) -> None:
        self._pending += data
        self._flush_pending()

    def _flush_pending(self) -> None:
        port = self._focused()
        if not self._pending or port is None or port.frontend is None:
            return
        room = max(0, port.frontend.can_receive())
        if room:
            chunk, self._pending = self._pending[:room], self._pending[room:]
            port.frontend.receive(chunk)

    def port_accepts_input(self, port: MuxPort) -> None:
        """The port's frontend has room: flush held input, then let the backend read again."""
        if port is not self._focused():
            return
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._resume_input)
        else:
            self._resume_input()

    def _resume_input(self) -> None:
        self._flush_pending()
        if not self._pending:
            self.backend.accept_input()

    def _focused(self) -> MuxPort | None:
        return self.ports[self.focus] if self.ports else None

    def info(self) -> list[dict[str, object]]:
        """`query-chardev` entries: the backend's and each port's."""
        ports = [port.info() for port in self.ports]
        backend = dict(self.backend.info())
        if any(port["label"] == backend["label"] for port in ports):
            backend["label"] = f"{backend['label']}-base"  # QEMU's name for the backend under a mux
        return [backend, *ports]

    def close(self) -> None:
        for port in self.ports:
            port.close()
        self.backend.close()
