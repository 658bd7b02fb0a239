"""Split virtqueue processing through the PCI transport: chains, indirect, interrupts, event idx."""

from test_virtio_pci_transport import EchoDevice, plug_echo

from harness.qtest import QtestMachine, VirtioPciDriver
from kvmkit.hw.virtio.device import VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, feature_bit
from kvmkit.hw.virtio.pci_transport import VirtioPciTransport
from kvmkit.hw.virtio.virtqueue import VirtqueueElement, split_buffers


def test_chain_round_trip_through_guest_memory():
    m, _, _, drv = plug_echo()
    (queue, _) = drv.initialize(queues=2)
    head, (dest,) = queue.post([b"hello ", b"world"], [16])
    assert queue.wait_used() == [(head, 11)]
    assert m.dma.read(dest, 11) == b"hello world"


def test_indirect_chain_is_served():
    m, _, _, drv = plug_echo()
    queue = drv.initialize()[0]
    head, (dest,) = queue.post([b"abc"], [3], indirect=True)
    assert queue.wait_used() == [(head, 3)]
    assert m.dma.read(dest, 3) == b"abc"


def test_popped_buffers_are_views_of_guest_memory():
    m, dev, _, drv = plug_echo()
    queue = drv.initialize()[0]
    dev.handle_queue = lambda index: None
    _, (dest,) = queue.post([b"x"], [4])
    elem = dev.queues[0].pop()
    elem.in_bufs[0][:4] = b"zero"
    assert m.dma.read(dest, 4) == b"zero"


def test_intx_interrupt_and_isr_read_clears_it():
    m, _, _, drv = plug_echo()
    queue = drv.initialize()[0]
    queue.post([b"a"], [1])
    line = m.irq_lines[m.bus.intx_router.gsi_for(2, 1)]
    assert line.level
    assert drv.read_isr() == 1
    assert not line.level
    assert drv.read_isr() == 0


def test_msix_interrupt_uses_queue_vector():
    m, _, _, drv = plug_echo()
    queue = drv.initialize(msix=True)[0]
    queue.post([b"a"], [1])
    assert m.msi.messages == [(0xFEE0_0000, 0x41)]


def test_no_interrupt_flag_suppresses_interrupt_without_event_idx():
    m, _, _, drv = plug_echo()
    queue = drv.initialize(msix=True, drop=feature_bit(VIRTIO_F_EVENT_IDX))[0]
    m.dma.st16_le(queue.avail, 1)
    queue.post([b"a"], [1])
    assert queue.wait_used()
    assert m.msi.messages == []


def test_event_idx_used_event_suppresses_until_reached():
    m, _, _, drv = plug_echo()
    queue = drv.initialize(msix=True)[0]
    queue.post([b"a"], [1])
    assert len(m.msi.messages) == 1
    queue.set_used_event(2)  # interrupt me when the third entry is used
    queue.post([b"b"], [1])
    assert len(m.msi.messages) == 1
    queue.post([b"c"], [1])
    assert len(m.msi.messages) == 2


def test_event_idx_publishes_avail_event():
    _, _, _, drv = plug_echo()
    queue = drv.initialize()[0]
    queue.post([b"a"], [1])
    queue.post([b"b"], [1])
    assert queue.avail_event() == 2


def test_batched_fill_publishes_once_on_flush():
    _, dev, _, drv = plug_echo()
    queue = drv.initialize()[0]
    dev.handle_queue = lambda index: None
    queue.post([b"a"], [1])
    queue.post([b"b"], [1])
    vq = dev.queues[0]
    first, second = vq.pop(), vq.pop()
    vq.fill(first, 1)
    vq.fill(second, 1)
    assert queue.used_idx() == 0
    vq.flush()
    assert queue.used_idx() == 2


def test_indirect_not_offered_when_dropped_makes_indirect_chain_fatal():
    _, _, transport, drv = plug_echo()
    queue = drv.initialize(drop=feature_bit(VIRTIO_F_INDIRECT_DESC))[0]
    queue.post([b"a"], [1], indirect=True)
    assert "VIRTIO_F_INDIRECT_DESC" in transport.needs_reset_reason


def test_split_buffers_cuts_inside_a_view():
    data = memoryview(bytearray(b"abcdef"))
    head, tail = split_buffers([data[:4], data[4:]], 3)
    assert [bytes(v) for v in head] == [b"abc"]
    assert [bytes(v) for v in tail] == [b"d", b"ef"]


def test_element_lengths_sum_views():
    elem = VirtqueueElement(0, [memoryview(b"ab")], [memoryview(bytearray(5))])
    assert (elem.out_len, elem.in_len) == (2, 5)


def test_notify_write_before_driver_ok_is_ignored():
    m = QtestMachine()
    dev = EchoDevice(m.dma)
    devfn = m.plug(VirtioPciTransport(dev, m.msi))
    drv = VirtioPciDriver(m, devfn)
    drv.negotiate()
    queue = drv.setup_queue(0)
    queue.post([b"a"], [1])
    assert queue.used_idx() == 0


def test_indirect_chain_with_many_buffers_keeps_order_and_split():
    m, dev, _, drv = plug_echo()
    queue = drv.initialize()[0]
    dev.handle_queue = lambda index: None
    outs = [bytes([i]) * (i + 1) for i in range(5)]
    _, dests = queue.post(outs, [3, 4, 1], indirect=True)
    elem = dev.queues[0].pop()
    assert [bytes(v) for v in elem.out_bufs] == outs
    assert [v.nbytes for v in elem.in_bufs] == [3, 4, 1]
    elem.in_bufs[1][:] = b"abcd"
    assert m.dma.read(dests[1], 4) == b"abcd"


def test_pop_all_pops_every_chain_and_publishes_avail_event_once():
    _, dev, _, drv = plug_echo()
    queue = drv.initialize()[0]
    dev.handle_queue = lambda index: None
    heads = [queue.post([b"x"], [1], kick=False)[0] for _ in range(3)]
    popped = dev.queues[0].pop_all([])
    assert [e.head for e in popped] == heads
    assert queue.avail_event() == 3
    assert dev.queues[0].pop_all([]) == []


def test_contiguous_descriptors_become_one_view_per_direction():
    m, dev, _, drv = plug_echo()
    queue = drv.initialize()[0]
    dev.handle_queue = lambda index: None
    base = m.allocator.alloc(64)
    q = queue
    q.write_desc(q.desc, 0, base, 16, 1, 1)  # readable [base, +16)
    q.write_desc(q.desc, 1, base + 16, 16, 1, 2)  # readable, contiguous: merged
    q.write_desc(q.desc, 2, base + 32, 16, 3, 3)  # writable, contiguous but other direction: new view
    q.write_desc(q.desc, 3, base + 48, 16, 2, 0)  # writable, contiguous: merged
    q.publish(0, kick=False)
    elem = dev.queues[0].pop()
    assert [v.nbytes for v in elem.out_bufs] == [32]
    assert [v.nbytes for v in elem.in_bufs] == [32]
    elem.in_bufs[0][:] = b"w" * 32
    assert m.dma.read(base + 32, 32) == b"w" * 32
