"""The host-side backends: file, socket, pty, stdio escapes and main-loop integration."""

from __future__ import annotations

import os
import socket
import time

from kvmkit.chardev.escape import EscapeAction, EscapeDecoder
from kvmkit.chardev.file import FileChardev
from kvmkit.chardev.pty import PtyChardev
from kvmkit.chardev.socket import SocketAddress, SocketChardev
from kvmkit.chardev.stdio import StdioChardev


class BufferFrontend:
    def __init__(self, room: int = 1 << 20) -> None:
        self.received = bytearray()
        self.room = room

    def can_receive(self) -> int:
        return self.room - len(self.received)

    def receive(self, data: bytes) -> None:
        self.received += data


class RecordingLoop:
    def __init__(self) -> None:
        self.readers: dict[int, object] = {}
        self.soon: list[object] = []

    def add_reader(self, fd: int, callback) -> None:
        self.readers[fd] = callback

    def remove_reader(self, fd: int) -> None:
        del self.readers[fd]

    def call_soon_threadsafe(self, callback) -> None:
        self.soon.append(callback)

    def run_soon(self) -> None:
        soon, self.soon = self.soon, []
        for callback in soon:
            callback()


def poll_until(chardev, frontend: BufferFrontend, expected: bytes) -> None:
    deadline = time.monotonic() + 5
    while bytes(frontend.received) != expected and time.monotonic() < deadline:
        chardev.on_readable()
        time.sleep(0.005)


def test_file_append_keeps_earlier_content(tmp_path) -> None:
    path = tmp_path / "log"
    path.write_bytes(b"old\n")
    chardev = FileChardev("f", str(path), append=True)
    chardev.write(b"new\n")
    chardev.close()
    assert path.read_bytes() == b"old\nnew\n"


def test_unix_server_exchanges_bytes_with_a_real_client(tmp_path) -> None:
    path = str(tmp_path / "serial.sock")
    chardev = SocketChardev("s", SocketAddress(path=path), server=True)
    frontend = BufferFrontend()
    chardev.attach(frontend)
    chardev.write(b"dropped: nobody connected")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.connect(path)
        chardev.on_readable()  # accepts
        assert chardev.info()["filename"] == f"unix:{path},server=on"
        chardev.write(b"login: ")
        assert client.recv(100) == b"login: "
        client.sendall(b"root\n")
        poll_until(chardev, frontend, b"root\n")
    assert bytes(frontend.received) == b"root\n"
    deadline = time.monotonic() + 5
    while chardev.connected and time.monotonic() < deadline:
        chardev.on_readable()  # sees the hangup
    assert chardev.info()["filename"] == f"disconnected:unix:{path},server=on"
    chardev.close()
    assert not os.path.exists(path)


def test_unix_server_accepts_a_new_client_after_the_first_leaves(tmp_path) -> None:
    path = str(tmp_path / "s.sock")
    chardev = SocketChardev("s", SocketAddress(path=path), server=True)
    chardev.attach(BufferFrontend())
    for greeting in (b"one", b"two"):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(path)
            chardev.on_readable()
            chardev.write(greeting)
            assert client.recv(10) == greeting
        deadline = time.monotonic() + 5
        while chardev.connected and time.monotonic() < deadline:
            chardev.on_readable()
    chardev.close()


def test_tcp_server_reports_its_bound_port() -> None:
    chardev = SocketChardev("t", SocketAddress(host="127.0.0.1", port=0), server=True)
    assert chardev.address.port
    assert chardev.filename() == f"disconnected:tcp:127.0.0.1:{chardev.address.port},server=on"
    chardev.close()


def test_socket_client_connects_to_a_listener(tmp_path) -> None:
    path = str(tmp_path / "peer.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen(1)
        chardev = SocketChardev("c", SocketAddress(path=path), server=False)
        peer, _ = listener.accept()
        with peer:
            chardev.write(b"hi")
            assert peer.recv(10) == b"hi"
        chardev.close()


def test_server_watches_listener_even_when_the_frontend_is_full(tmp_path) -> None:
    path = str(tmp_path / "w.sock")
    chardev = SocketChardev("s", SocketAddress(path=path), server=True)
    chardev.attach(BufferFrontend(room=0))
    loop = RecordingLoop()
    chardev.start(loop)
    assert list(loop.readers) == [chardev.fileno_for_input()]
    chardev.close()
    assert loop.readers == {}


def test_pty_reports_a_path_that_opens_and_carries_bytes() -> None:
    chardev = PtyChardev("p")
    frontend = BufferFrontend()
    chardev.attach(frontend)
    assert chardev.info()["filename"] == f"pty:{chardev.path}"
    user = os.open(chardev.path, os.O_RDWR | os.O_NOCTTY)
    try:
        chardev.write(b"boot\n")
        assert os.read(user, 100) == b"boot\n"
        os.write(user, b"x")
        poll_until(chardev, frontend, b"x")
        assert bytes(frontend.received) == b"x"
    finally:
        os.close(user)
        chardev.close()


def test_loop_stops_watching_a_full_frontend_until_it_accepts_input() -> None:
    read_end, write_end = os.pipe()
    chardev = StdioChardev("con", input_fd=read_end, output_fd=write_end, escapes=False)
    frontend = BufferFrontend(room=2)
    chardev.attach(frontend)
    loop = RecordingLoop()
    chardev.start(loop)
    os.write(write_end, b"abcd")
    loop.readers[read_end]()
    assert bytes(frontend.received) == b"ab"
    assert loop.readers == {}
    frontend.room = 10
    chardev.accept_input()
    loop.run_soon()
    loop.readers[read_end]()
    assert bytes(frontend.received) == b"abcd"
    chardev.close()
    os.close(read_end)
    os.close(write_end)


def test_escape_decoder_orders_bytes_and_actions_across_reads() -> None:
    decoder = EscapeDecoder()
    assert decoder.feed(b"ab\x01") == [b"ab"]
    assert decoder.feed(b"cd\x01\x01e\x01zf") == [EscapeAction.SWITCH_FOCUS, b"d\x01ef"]


def test_stdio_ctrl_a_x_calls_exit_and_ctrl_a_h_prints_help() -> None:
    in_read, in_write = os.pipe()
    out_read, out_write = os.pipe()
    exits: list[bool] = []
    chardev = StdioChardev("con", on_exit=lambda: exits.append(True), input_fd=in_read, output_fd=out_write)
    frontend = BufferFrontend()
    chardev.attach(frontend)
    os.write(in_write, b"ls\x01h\x01x")
    chardev.on_readable()
    assert exits == [True]
    assert bytes(frontend.received) == b"ls"
    assert b"C-a x" in os.read(out_read, 4096)
    chardev.close()
    for fd in (in_read, in_write, out_read, out_write):
        os.close(fd)


def test_stdio_stops_reading_at_end_of_input() -> None:
    read_end, write_end = os.pipe()
    chardev = StdioChardev("con", input_fd=read_end, output_fd=write_end)
    chardev.attach(BufferFrontend())
    os.close(write_end)
    chardev.on_readable()
    assert chardev.fileno_for_input() is None
    os.close(read_end)


def test_stdio_on_a_terminal_is_raw_while_open_and_restored_on_close() -> None:
    import signal
    import termios

    master, slave = os.openpty()
    try:
        handler_before = signal.getsignal(signal.SIGTERM)
        chardev = StdioChardev("con", input_fd=slave, output_fd=slave)
        assert not termios.tcgetattr(slave)[3] & termios.ECHO
        chardev.close()
        assert termios.tcgetattr(slave)[3] & termios.ECHO
        assert signal.getsignal(signal.SIGTERM) == handler_before
    finally:
        os.close(master)
        os.close(slave)
