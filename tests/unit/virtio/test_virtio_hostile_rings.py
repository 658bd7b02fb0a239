"""Malformed rings put the device in DEVICE_NEEDS_RESET, raise a config interrupt and never crash."""

import pytest
from test_virtio_pci_transport import plug_echo

from harness.qtest import DriverQueue
from kvmkit.hw.virtio.device import STATUS_DEVICE_NEEDS_RESET
from kvmkit.hw.virtio.virtqueue import VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE

RAM_END = 16 << 20


def loop(q: DriverQueue, m) -> None:
    buf = m.allocator.alloc(8)
    q.write_desc(q.desc, 0, buf, 8, VIRTQ_DESC_F_NEXT, 1)
    q.write_desc(q.desc, 1, buf, 8, VIRTQ_DESC_F_NEXT, 0)
    q.publish(0)


def long_chain(q: DriverQueue, m) -> None:
    buf = m.allocator.alloc(8)
    for i in range(q.size):
        q.write_desc(q.desc, i, buf, 8, VIRTQ_DESC_F_NEXT, (i + 1) % q.size)
    q.publish(0)


def next_out_of_range(q: DriverQueue, m) -> None:
    q.write_desc(q.desc, 0, m.allocator.alloc(8), 8, VIRTQ_DESC_F_NEXT, q.size)
    q.publish(0)


def buffer_outside_ram(q: DriverQueue, m) -> None:
    q.write_desc(q.desc, 0, RAM_END - 4, 8, 0, 0)
    q.publish(0)


def huge_length(q: DriverQueue, m) -> None:
    q.write_desc(q.desc, 0, 0x1000, 0xFFFF_FFFF, 0, 0)
    q.publish(0)


def head_out_of_range(q: DriverQueue, m) -> None:
    q.publish(q.size + 3)


def avail_idx_jump(q: DriverQueue, m) -> None:
    m.dma.st16_le(q.avail + 2, q.size + 1)
    q.kick()


def indirect_in_indirect(q: DriverQueue, m) -> None:
    table = m.allocator.alloc(16)
    q.write_desc(table, 0, table, 16, VIRTQ_DESC_F_INDIRECT, 0)
    q.write_desc(q.desc, 0, table, 16, VIRTQ_DESC_F_INDIRECT, 0)
    q.publish(0)


def indirect_bad_length(q: DriverQueue, m) -> None:
    q.write_desc(q.desc, 0, m.allocator.alloc(32), 24, VIRTQ_DESC_F_INDIRECT, 0)
    q.publish(0)


def indirect_loop(q: DriverQueue, m) -> None:
    table = m.allocator.alloc(32)
    buf = m.allocator.alloc(8)
    q.write_desc(table, 0, buf, 8, VIRTQ_DESC_F_NEXT, 1)
    q.write_desc(table, 1, buf, 8, VIRTQ_DESC_F_NEXT, 0)
    q.write_desc(q.desc, 0, table, 32, VIRTQ_DESC_F_INDIRECT, 0)
    q.publish(0)


def write_before_read(q: DriverQueue, m) -> None:
    buf = m.allocator.alloc(8)
    q.write_desc(q.desc, 0, buf, 8, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 1)
    q.write_desc(q.desc, 1, buf, 8, 0, 0)
    q.publish(0)


def indirect_write_before_read(q: DriverQueue, m) -> None:
    table = m.allocator.alloc(32)
    buf = m.allocator.alloc(8)
    q.write_desc(table, 0, buf, 8, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 1)
    q.write_desc(table, 1, buf, 8, 0, 0)
    q.write_desc(q.desc, 0, table, 32, VIRTQ_DESC_F_INDIRECT, 0)
    q.publish(0)


def indirect_buffer_outside_ram(q: DriverQueue, m) -> None:
    table = m.allocator.alloc(32)
    q.write_desc(table, 0, m.allocator.alloc(8), 8, VIRTQ_DESC_F_NEXT, 1)
    q.write_desc(table, 1, RAM_END - 4, 8, VIRTQ_DESC_F_WRITE, 0)
    q.write_desc(q.desc, 0, table, 32, VIRTQ_DESC_F_INDIRECT, 0)
    q.publish(0)


def indirect_next_beyond_table(q: DriverQueue, m) -> None:
    table = m.allocator.alloc(32)
    buf = m.allocator.alloc(8)
    q.write_desc(table, 0, buf, 8, VIRTQ_DESC_F_NEXT, 2)
    q.write_desc(table, 1, buf, 8, 0, 0)
    q.write_desc(q.desc, 0, table, 32, VIRTQ_DESC_F_INDIRECT, 0)
    q.publish(0)


MALFORMATIONS = [
    loop,
    long_chain,
    next_out_of_range,
    buffer_outside_ram,
    huge_length,
    head_out_of_range,
    avail_idx_jump,
    indirect_in_indirect,
    indirect_bad_length,
    indirect_loop,
    write_before_read,
    indirect_write_before_read,
    indirect_buffer_outside_ram,
    indirect_next_beyond_table,
]


@pytest.mark.parametrize("malform", MALFORMATIONS, ids=[f.__name__ for f in MALFORMATIONS])
def test_malformed_ring_needs_reset_with_config_interrupt(malform):
    m, _, transport, drv = plug_echo()
    queue = drv.initialize(msix=True)[0]
    malform(queue, m)
    assert drv.status & STATUS_DEVICE_NEEDS_RESET
    assert transport.needs_reset_reason
    assert m.msi.messages == [(0xFEE0_0000, 0x40)]  # config vector 0
    assert queue.used_idx() == 0


def test_device_ignores_kicks_until_reset_then_works_again():
    m, _, _, drv = plug_echo()
    queue = drv.initialize()[0]
    head_out_of_range(queue, m)
    queue.kick()
    assert drv.status & STATUS_DEVICE_NEEDS_RESET
    queue = drv.initialize()[0]
    head, (dest,) = queue.post([b"ok"], [2])
    assert queue.wait_used() == [(head, 2)]
    assert m.dma.read(dest, 2) == b"ok"
