"""A mux shares one backend between a serial port and a monitor, switched by Ctrl-A c."""

from __future__ import annotations

from kvmkit.chardev.base import Chardev
from kvmkit.chardev.mux import MuxChardev


class ScriptedBackend(Chardev):
    """A backend whose input is injected by the test; it has no escape handling of its own."""

    def __init__(self) -> None:
        super().__init__("back")
        self.output = bytearray()

    def write(self, data: bytes) -> None:
        self.output += data

    def type(self, data: bytes) -> None:
        self._deliver(data)

    def filename(self) -> str:
        return "scripted"


class BufferFrontend:
    def __init__(self, room: int = 1000) -> None:
        self.received = bytearray()
        self.room = room

    def can_receive(self) -> int:
        return self.room - len(self.received)

    def receive(self, data: bytes) -> None:
        self.received += data


def make_mux() -> tuple[MuxChardev, ScriptedBackend, BufferFrontend, BufferFrontend]:
    backend = ScriptedBackend()
    mux = MuxChardev(backend)
    serial, monitor = BufferFrontend(), BufferFrontend()
    mux.add_port("serial0").attach(serial)
    mux.add_port("monitor0").attach(monitor)
    return mux, backend, serial, monitor


def test_input_goes_to_the_first_port_until_ctrl_a_c() -> None:
    mux, backend, serial, monitor = make_mux()
    backend.type(b"to serial\x01cto monitor")
    assert bytes(serial.received) == b"to serial"
    assert bytes(monitor.received) == b"to monitor"
    assert mux.focus == 1


def test_second_switch_returns_focus_to_the_serial_port() -> None:
    mux, backend, serial, _ = make_mux()
    backend.type(b"\x01c\x01cback")
    assert mux.focus == 0
    assert bytes(serial.received) == b"back"


def test_every_port_writes_to_the_shared_backend() -> None:
    mux, backend, _, _ = make_mux()
    mux.ports[0].write(b"console ")
    mux.ports[1].write(b"(qemu) ")
    assert bytes(backend.output) == b"console (qemu) "


def test_focus_callback_runs_when_a_port_gains_focus() -> None:
    backend = ScriptedBackend()
    mux = MuxChardev(backend)
    focused: list[str] = []
    mux.add_port("serial0")
    mux.add_port("monitor0", on_focus=lambda: focused.append("monitor0"))
    mux.switch_focus()
    assert focused == ["monitor0"]


def test_input_beyond_the_focused_port_room_is_held_not_dropped() -> None:
    backend = ScriptedBackend()
    mux = MuxChardev(backend)
    small = BufferFrontend(room=3)
    port = mux.add_port("serial0")
    port.attach(small)
    backend.type(b"abcdef")
    assert bytes(small.received) == b"abc"
    assert mux.can_receive() == 0
    small.room = 10
    port.accept_input()
    assert bytes(small.received) == b"abcdef"


def test_ports_report_the_backend_filename_under_their_own_label() -> None:
    mux, _, _, _ = make_mux()
    assert mux.ports[1].info() == {"label": "monitor0", "filename": "scripted", "frontend-open": True}
