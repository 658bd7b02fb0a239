"""virtio-net RX/TX through the PCI transport: mergeable buffers, batching, back-pressure, link state."""

from __future__ import annotations

import ctypes

from harness.net_rig import MAC, make_rig
from kvmkit.hw.virtio.device import feature_bit
from kvmkit.hw.virtio.net.header import (
    NET_HDR_LEN,
    VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_NET_S_LINK_UP,
    VirtioNetConfig,
    VirtioNetHdr,
)

ETH = bytes.fromhex("ffffffffffff525400abcdef0800")


def frame(size: int, fill: int = 0x5A) -> bytes:
    return ETH + bytes([fill]) * (size - len(ETH))


def post_rx(rig, count: int, size: int) -> list[tuple[int, list[int]]]:
    queue = rig.driver.queues[0]
    posted = [queue.post([], [size], kick=False) for _ in range(count)]
    queue.kick()
    return posted


def read_guest(rig, addr: int, length: int) -> bytes:
    return rig.machine.dma.read(addr, length)


def test_config_space_shows_mac_and_link_up(rig):
    mac = bytes(rig.driver.device_config(i, 1) for i in range(6))
    assert mac == MAC
    status = rig.driver.device_config(VirtioNetConfig.status.offset, 2)
    assert status & VIRTIO_NET_S_LINK_UP


def test_mergeable_rx_spreads_one_frame_over_buffers_and_completes_in_one_batch(rig):
    posted = post_rx(rig, 4, 1000)
    big, small = frame(2500, 1), frame(60, 2)
    rig.send_frames(big, small)
    rig.loop.pump()
    used = rig.driver.queues[0].take_used()
    assert [length for _, length in used] == [1000, 1000, 512, 60 + NET_HDR_LEN]
    first = read_guest(rig, posted[0][1][0], 1000)
    header = VirtioNetHdr.from_buffer_copy(first)
    assert header.num_buffers == 3 and header.flags == 0 and header.gso_type == 0
    data = first[NET_HDR_LEN:] + read_guest(rig, posted[1][1][0], 1000) + read_guest(rig, posted[2][1][0], 512)
    assert data == big
    second = read_guest(rig, posted[3][1][0], 72)
    assert VirtioNetHdr.from_buffer_copy(second).num_buffers == 1 and second[NET_HDR_LEN:] == small
    stats = rig.device.stats()["rx"]
    assert stats["packets"] == 2 and stats["bytes"] == 2560 and stats["dropped"] == 0


def test_without_buffers_the_backend_stops_reading_and_frames_wait():
    rig = make_rig()
    rig.send_frames(frame(100))
    rig.loop.pump()
    assert rig.loop.readers == {}  # paused: the frame waits in the socket, nothing is dropped
    post_rx(rig, 2, 2048)
    rig.loop.pump()
    assert len(rig.driver.queues[0].take_used()) == 1
    assert rig.device.stats()["rx"]["dropped"] == 0


def test_non_mergeable_rx_drops_only_frames_larger_than_a_buffer():
    rig = make_rig(drop_features=feature_bit(VIRTIO_NET_F_MRG_RXBUF))
    assert not rig.device.rx.mergeable
    post_rx(rig, 3, 1526)
    rig.send_frames(frame(3000), frame(1514))
    rig.loop.pump()
    used = rig.driver.queues[0].take_used()
    assert [length for _, length in used] == [1514 + NET_HDR_LEN]
    assert rig.device.stats()["rx"]["dropped"] == 1


def test_tx_batch_strips_the_header_for_a_plain_backend(rig):
    queue = rig.driver.queues[1]
    frames = [frame(60 + i) for i in range(5)]
    for payload in frames:
        header = bytes(VirtioNetHdr())
        queue.post([header, payload], [], kick=False)
    queue.kick()
    assert len(queue.take_used()) == 5
    assert rig.received_frames() == frames
    tx = rig.device.stats()["tx"]
    assert tx["packets"] == 5 and tx["errors"] == 0


def test_malformed_tx_frames_are_counted_not_sent(rig):
    queue = rig.driver.queues[1]
    queue.post([b"short"], [])
    queue.post([bytes(NET_HDR_LEN), frame(60)], [16])  # a writable buffer in a TX chain
    queue.post([bytes(NET_HDR_LEN), frame(60)], [])
    assert len(queue.take_used()) == 3
    assert len(rig.received_frames()) == 1
    assert rig.device.stats()["tx"]["errors"] == 2


def test_link_down_raises_a_config_interrupt_and_holds_rx(rig):
    generation = rig.driver.common_read("config_generation")
    rig.device.set_link(False)
    assert rig.driver.common_read("config_generation") != generation
    status = rig.driver.device_config(VirtioNetConfig.status.offset, 2)
    assert not status & VIRTIO_NET_S_LINK_UP
    post_rx(rig, 2, 2048)
    rig.send_frames(frame(80))
    rig.loop.pump()
    assert rig.driver.queues[0].take_used() == []
    rig.device.set_link(True)
    rig.loop.pump()
    assert len(rig.driver.queues[0].take_used()) == 1


def test_offloads_are_not_offered_without_a_vnet_header_backend(rig):
    offered = rig.driver.device_features()
    assert offered & feature_bit(VIRTIO_NET_F_MRG_RXBUF)
    assert not offered & 0b1  # VIRTIO_NET_F_CSUM
    assert ctypes.sizeof(VirtioNetHdr) == 12


def test_tx_polls_once_more_before_asking_the_driver_to_kick_again(rig):
    """As QEMU's tx=bh: after a kick's batch avail_event stays behind, so a guest streaming frames does not exit
    for each; frames queued meanwhile go out on the main loop's second look, and a look that finds the ring
    empty re-arms the kick (avail_event = the next index)."""
    queue = rig.driver.queues[1]
    header = bytes(VirtioNetHdr())
    for size in (60, 61):
        queue.post([header, frame(size)], [], kick=False)
    queue.kick()
    assert len(queue.take_used()) == 2
    assert queue.avail_event() == 0, "the kick was re-armed at once: the driver will exit for every frame"
    assert len(rig.loop.timers) == 1  # the second look
    for size in (62, 63, 64):
        queue.post([header, frame(size)], [], kick=False)  # queued without a kick, as the driver would
    rig.loop.fire_timers()
    assert len(queue.take_used()) == 3
    assert queue.avail_event() == 0 and len(rig.loop.timers) == 1  # still streaming: no kick, one more look
    rig.loop.fire_timers()
    assert queue.avail_event() == 5 and rig.loop.timers == []  # empty ring: re-armed, no more polling
    assert rig.received_frames() == [frame(size) for size in (60, 61, 62, 63, 64)]


def test_rx_takes_new_buffers_without_kicks_and_asks_for_one_only_when_out_of_room():
    """As QEMU keeps RX notifications off while it has buffers: buffers the driver posts while frames flow are
    picked up after each batch (avail_event stays behind, so the driver does not exit to kick), and the kick is
    re-armed (avail_event = the next index) only when the buffers run out."""
    rig = make_rig(drop_features=feature_bit(VIRTIO_NET_F_MRG_RXBUF))
    queue = rig.driver.queues[0]
    post_rx(rig, 4, 2048)
    rig.send_frames(frame(100, 1))
    rig.loop.pump()
    assert len(queue.take_used()) == 1 and queue.avail_event() == 0
    queue.post([], [2048], kick=False)  # the driver refills; avail_event says no kick is wanted
    rig.send_frames(frame(101, 2), frame(102, 3))
    rig.loop.pump()
    assert len(queue.take_used()) == 2 and queue.avail_event() == 0  # the new buffer was found without a kick
    rig.send_frames(frame(103, 4), frame(104, 5), frame(105, 6))  # room for two: one waits, the kick is armed
    rig.loop.pump()
    assert len(queue.take_used()) == 2 and queue.avail_event() == 5
    post_rx(rig, 1, 2048)
    rig.loop.pump()
    assert len(queue.take_used()) == 1
    assert rig.device.stats()["rx"]["packets"] == 6 and rig.device.stats()["rx"]["dropped"] == 0
