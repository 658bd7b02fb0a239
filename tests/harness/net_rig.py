"""Unit-test rig for virtio-net: the qtest harness, a stream-socket backend whose peer the test holds, and a
fake main loop the test pumps."""

from __future__ import annotations

import select
import socket
from dataclasses import dataclass

from harness.qtest import QtestMachine, VirtioPciDriver
from kvmkit.hw.virtio.net import VirtioNet
from kvmkit.hw.virtio.pci_transport import VirtioPciTransport
from kvmkit.net.framing import StreamDeframer, encode_frame
from kvmkit.net.sockets import StreamBackend

MAC = bytes.fromhex("525400123456")


class FakeLoop:
    """Records fd readers and timers; the test pumps them."""

    def __init__(self) -> None:
        self.readers: dict[int, object] = {}
        self.timers: list[tuple[float, object]] = []

    def add_reader(self, fd: int, cb: object) -> None:
        assert fd not in self.readers, "a reader registered twice"
        self.readers[fd] = cb

    def remove_reader(self, fd: int) -> None:
        self.readers.pop(fd, None)

    def call_later(self, delay: float, cb: object) -> object:
        self.timers.append((delay, cb))
        return cb

    def pump(self, rounds: int = 20) -> None:
        for _ in range(rounds):
            if not self.readers:
                return
            ready, _, _ = select.select(list(self.readers), [], [], 0.05)
            if not ready:
                return
            for fd in ready:
                callback = self.readers.get(fd)
                if callback is not None:
                    callback()  # type: ignore[operator]

    def call_soon(self, cb: object) -> None:
        self.timers.append((0.0, cb))  # a bottom half: fired with the timers

    def fire_timers(self) -> None:
        timers, self.timers = self.timers, []
        for _, cb in timers:
            cb()  # type: ignore[operator]


@dataclass
class NetRig:
    machine: QtestMachine
    loop: FakeLoop
    peer: socket.socket
    device: VirtioNet
    driver: VirtioPciDriver

    def send_frames(self, *frames: bytes) -> None:
        self.peer.sendall(b"".join(encode_frame(f) for f in frames))

    def received_frames(self, timeout: float = 1.0) -> list[bytes]:
        deframer = StreamDeframer()
        frames: list[bytes] = []
        self.peer.settimeout(timeout)
        try:
            while True:
                data = self.peer.recv(1 << 20)
                if not data:
                    break
                deframer.feed(data)
                while (frame := deframer.next_frame()) is not None:
                    frames.append(bytes(frame))
                self.peer.settimeout(0.05)
        except (TimeoutError, BlockingIOError):
            pass
        return frames


def make_rig(drop_features: int = 0) -> NetRig:
    machine = QtestMachine(ram_size=32 << 20)
    loop = FakeLoop()
    ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    backend = StreamBackend("n0", sock=ours)
    device = VirtioNet("net0", machine.dma, backend, MAC, loop)
    devfn = machine.plug(VirtioPciTransport(device, machine.msi))
    driver = VirtioPciDriver(machine, devfn)
    driver.initialize(queues=3, drop=drop_features)
    return NetRig(machine, loop, peer, device, driver)
