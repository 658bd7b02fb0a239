"""The zero-copy receive path a tap uses: direct_iovecs() then commit(), across mergeable buffers."""

from __future__ import annotations

import struct

from harness.net_rig import MAC, FakeLoop
from harness.qtest import QtestMachine, VirtioPciDriver
from kvmkit.hw.virtio.device import feature_bit
from kvmkit.hw.virtio.net import VirtioNet
from kvmkit.hw.virtio.net.header import NET_HDR_LEN, VIRTIO_NET_F_MRG_RXBUF, VirtioNetHdr
from kvmkit.hw.virtio.net.rx import MAX_FRAME_WITH_HDR, PUBLISH_BYTES
from kvmkit.hw.virtio.pci_transport import VirtioPciTransport
from kvmkit.net.backend import NetBackend


class HeaderBackend(NetBackend):
    """A backend that, like a tap with IFF_VNET_HDR, writes the 12-byte header itself."""

    kind = "fake"
    has_vnet_hdr = True

    def send_batch(self, frames) -> None:  # type: ignore[no-untyped-def]
        pass


def make(drop: int = 0):  # type: ignore[no-untyped-def]
    machine = QtestMachine(ram_size=32 << 20)
    device = VirtioNet("net0", machine.dma, HeaderBackend("n0"), MAC, FakeLoop())
    driver = VirtioPciDriver(machine, machine.plug(VirtioPciTransport(device, machine.msi)))
    driver.initialize(queues=3, drop=drop)
    return machine, device, driver.queues[0]


def readv(iovecs: list[memoryview], data: bytes) -> int:
    """What os.readv does with a frame."""
    position = 0
    for view in iovecs:
        chunk = min(len(view), len(data) - position)
        view[:chunk] = data[position : position + chunk]
        position += chunk
    return position


def test_a_large_frame_is_read_straight_across_mergeable_buffers_and_a_small_one_follows():
    machine, device, queue = make()
    posted = [queue.post([], [4096], kick=False) for _ in range(40)]
    queue.kick()
    header = bytes(VirtioNetHdr(flags=1, gso_type=1, hdr_len=54, gso_size=1448, csum_start=34, csum_offset=16))
    big = header + bytes(range(256)) * 40  # 10240 bytes of frame
    iovecs = device.direct_iovecs()
    assert iovecs is not None and sum(map(len, iovecs)) >= MAX_FRAME_WITH_HDR and len(iovecs) <= 17
    device.commit(readv(iovecs, big))
    small = bytes(NET_HDR_LEN) + b"\x77" * 60
    device.commit(readv(device.direct_iovecs(), small))
    device.complete()
    used = queue.take_used()
    total = len(big)
    assert used == [(posted[0][0], 4096), (posted[1][0], 4096), (posted[2][0], total - 8192),
                    (posted[3][0], len(small))]
    got = b"".join(machine.dma.read(posted[i][1][0], length) for i, (_, length) in enumerate(used[:3]))
    assert VirtioNetHdr.from_buffer_copy(got).num_buffers == 3
    assert got[: NET_HDR_LEN - 2] == big[: NET_HDR_LEN - 2] and got[NET_HDR_LEN:] == big[NET_HDR_LEN:]
    second = machine.dma.read(posted[3][1][0], len(small))
    assert struct.unpack_from("<H", second, 10)[0] == 1 and second[NET_HDR_LEN:] == small[NET_HDR_LEN:]
    stats = device.stats()["rx"]
    assert stats["packets"] == 2 and stats["bytes"] == total + len(small) - 2 * NET_HDR_LEN


def test_without_room_for_the_largest_frame_the_backend_is_told_to_stage():
    _, device, queue = make()
    for _ in range(4):
        queue.post([], [4096], kick=False)
    queue.kick()
    assert device.direct_iovecs() is None  # 16 KiB posted: a 64 KiB frame might not fit


def test_non_mergeable_buffers_too_small_for_the_largest_frame_are_not_read_into():
    _, device, queue = make(drop=feature_bit(VIRTIO_NET_F_MRG_RXBUF))
    queue.post([], [1526], kick=False)
    queue.kick()
    assert device.direct_iovecs() is None


def test_frames_are_published_while_a_batch_is_still_running_once_enough_bytes_arrived():
    _, device, queue = make()
    for _ in range(64):
        queue.post([], [4096], kick=False)
    queue.kick()
    frame = bytes(NET_HDR_LEN) + bytes(PUBLISH_BYTES)
    device.commit(readv(device.direct_iovecs(), frame))
    assert len(queue.take_used()) == 9  # published without waiting for complete()
    device.commit(readv(device.direct_iovecs(), bytes(NET_HDR_LEN) + bytes(100)))
    assert queue.take_used() == []
    device.complete()
    assert len(queue.take_used()) == 1


def test_buffers_keep_flowing_after_the_posted_lists_are_compacted():
    count = 3000  # several compactions of the consumed front of the lists
    _, device, queue = make()
    for _ in range(queue.size):
        queue.post([], [2048], kick=False)
    queue.kick()
    for number in range(count):
        data = bytes(NET_HDR_LEN) + number.to_bytes(4, "little") * 16
        iovecs = device.direct_iovecs()
        assert iovecs is not None
        device.commit(readv(iovecs, data))
        device.complete()
        [(head, length)] = queue.take_used()
        assert length == len(data)
        queue.publish(head, kick=True)  # the driver reposts the same buffer
    assert device.stats()["rx"]["packets"] == count
