"""RX refill: buffers Linux posts (one writable descriptor in high RAM) are popped by Virtqueue.pop_lone_writable
without building elements; every other chain goes through the checked pop_all, and the driver's order holds."""

from __future__ import annotations

from test_virtio_net_rx_direct import make

from kvmkit.hw.virtio.net.header import NET_HDR_LEN
from kvmkit.hw.virtio.pci_transport import STATUS_DEVICE_NEEDS_RESET
from kvmkit.hw.virtio.virtqueue import VIRTQ_DESC_F_WRITE

HIGH_RAM = 1 << 20  # the qtest allocator starts in the 0-640K window; guests post buffers in the big one above 1M


def make_high():  # type: ignore[no-untyped-def]
    machine, device, queue = make()
    machine.allocator.next = max(machine.allocator.next, HIGH_RAM)
    return machine, device, queue


def needs_reset(queue) -> bool:  # type: ignore[no-untyped-def]
    return bool(queue.driver.status & STATUS_DEVICE_NEEDS_RESET)


def test_lone_buffers_and_chains_are_filled_in_the_order_the_driver_posted_them():
    machine, device, queue = make_high()
    first = queue.post([], [1000], kick=False)
    chain = queue.post([], [300, 700], kick=False)  # two writable descriptors: the checked path
    allocator = machine.allocator
    high, allocator.next = allocator.next, 0x30000
    low = queue.post([], [1000], kick=False)  # lone, but in the 0-640K window: the checked path too
    allocator.next = high
    last = queue.post([], [4096], kick=False)
    queue.kick()
    assert device.rx.posted == 4
    frame = bytes(NET_HDR_LEN) + bytes(range(256)) * 12  # 3084 bytes: the first three buffers and part of the last
    assert device.direct_iovecs() is None  # a multi-piece buffer is posted: the copying path
    assert device.deliver(frame)
    device.complete()
    used = queue.take_used()
    assert used == [(first[0], 1000), (chain[0], 1000), (low[0], 1000), (last[0], len(frame) - 3000)]
    pieces = [(first[1][0], 1000), (chain[1][0], 300), (chain[1][1], 700), (low[1][0], 1000),
              (last[1][0], len(frame) - 3000)]
    got = b"".join(machine.dma.read(addr, length) for addr, length in pieces)
    assert got[NET_HDR_LEN:] == frame[NET_HDR_LEN:]
    assert int.from_bytes(got[10:12], "little") == 4  # num_buffers


def test_pop_lone_writable_stops_at_the_first_other_chain_and_counts_what_it_took():
    _, device, queue = make_high()
    device.handle_queue = lambda index: None  # the test pops by hand
    lone = [queue.post([], [2048], kick=False)[0] for _ in range(2)]
    chain = queue.post([], [64, 64], kick=False)[0]
    after = queue.post([], [2048], kick=False)[0]
    ring = device.queues[0]
    heads: list[int] = []
    views: list[memoryview] = []
    assert ring.pop_lone_writable(heads, views, NET_HDR_LEN) is True
    assert heads == lone and [len(view) for view in views] == [2048, 2048]
    assert ring.last_avail_idx == 2 and ring.in_flight == 2
    rest = ring.pop_all([], rearm=False)
    assert [element.head for element in rest] == [chain, after]
    assert ring.pop_lone_writable(heads, views, NET_HDR_LEN) is False
    assert ring.in_flight == 4


def test_a_lone_buffer_too_small_for_the_header_still_makes_the_device_need_reset():
    _, device, queue = make_high()
    queue.post([], [NET_HDR_LEN - 1])
    assert needs_reset(queue) and device.rx.posted == 0


def test_a_lone_buffer_outside_guest_ram_makes_the_device_need_reset():
    machine, device, queue = make_high()
    head = queue._take_desc()
    queue.write_desc(queue.desc, head, machine.memory.size + 4096, 2048, VIRTQ_DESC_F_WRITE, 0)
    queue.publish(head)
    assert needs_reset(queue) and device.rx.posted == 0


def test_an_available_head_beyond_the_queue_makes_the_device_need_reset():
    _, _, queue = make_high()
    queue.post([], [2048], kick=False)
    queue.publish(queue.size + 3)
    assert needs_reset(queue)


def test_a_batch_of_used_entries_wraps_around_the_ring():
    _, device, queue = make_high()
    ring = device.queues[0]
    ring.used_idx = ring._published_used_idx = queue.last_used = queue.size - 3
    entries = [(index, 100 + index) for index in range(7)]
    ring.fill_many(entries)
    ring.flush()
    assert queue.take_used() == entries
    assert ring.used_idx == queue.size + 4
