"""virtio-blk completions that pile up behind the BQL go back to the driver together."""

import time

from harness.qtest import QtestMachine, VirtioPciDriver
from kvmkit.block.formats.raw import RawFormat
from kvmkit.block.protocols.file import FileProtocol
from kvmkit.core.bql import Bql
from kvmkit.core.worker_pool import WorkerPool
from kvmkit.hw.virtio.blk import VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VirtioBlk, VirtioBlkRequestHeader
from kvmkit.hw.virtio.pci_transport import VirtioPciTransport

REQUESTS = 4


def wait_for(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_requests_served_while_bql_held_complete_with_one_interrupt(tmp_path):
    path = tmp_path / "disk.raw"
    path.write_bytes(bytes(1 << 20))
    bql = Bql()
    pool = WorkerPool(bql, max_workers=REQUESTS)
    try:
        m = QtestMachine()
        blk = VirtioBlk("vda", RawFormat(FileProtocol(str(path))), m.dma, bql=bql, pool=pool, queue_size=32)
        queue = VirtioPciDriver(m, m.plug(VirtioPciTransport(blk, m.msi))).initialize(msix=True)[0]
        before = len(m.msi.messages)
        with bql:
            heads = [queue.post([bytes(VirtioBlkRequestHeader(VIRTIO_BLK_T_OUT, 0, i)), bytes([i]) * 512], [1])[0]
                     for i in range(REQUESTS)]
            wait_for(lambda: len(blk._finished) == REQUESTS)  # all served, all waiting for the BQL
            assert queue.used_idx() == 0
        used = queue.wait_used(REQUESTS)
    finally:
        pool.shutdown()
    assert sorted(h for h, _ in used) == sorted(heads)
    assert len(m.msi.messages) - before == 1
    assert path.read_bytes()[3 * 512] == 3


def test_one_kick_of_small_requests_is_served_as_one_task_with_one_interrupt(tmp_path):
    path = tmp_path / "disk.raw"
    path.write_bytes(bytes(range(256)) * 4096)
    bql = Bql()
    pool = WorkerPool(bql, max_workers=4)
    tasks = []
    submit_nowait = pool.submit_nowait
    pool.submit_nowait = lambda fn, *args: (tasks.append(len(args[0])), submit_nowait(fn, *args))
    try:
        m = QtestMachine()
        blk = VirtioBlk("vda", RawFormat(FileProtocol(str(path))), m.dma, bql=bql, pool=pool, queue_size=32)
        queue = VirtioPciDriver(m, m.plug(VirtioPciTransport(blk, m.msi))).initialize(msix=True)[0]
        before = len(m.msi.messages)
        posted = [queue.post([bytes(VirtioBlkRequestHeader(VIRTIO_BLK_T_IN, 0, i * 8))], [4096, 1], indirect=True,
                             kick=False) for i in range(REQUESTS * 2)]
        with bql:
            queue.kick()
        used = queue.wait_used(len(posted))
    finally:
        pool.shutdown()
    assert tasks == [len(posted)]
    assert len(m.msi.messages) - before == 1
    assert sorted(h for h, _ in used) == sorted(h for h, _ in posted)
    for i, (_, (data, status)) in enumerate(posted):
        assert m.dma.read(status, 1) == b"\0"
        assert m.dma.read(data, 4096) == path.read_bytes()[i * 4096 : (i + 1) * 4096]


def test_debug_state_shows_each_ready_queue_s_indices(tmp_path):
    path = tmp_path / "disk.raw"
    path.write_bytes(bytes(1 << 20))
    m = QtestMachine()
    blk = VirtioBlk("vda", RawFormat(FileProtocol(str(path))), m.dma, queue_size=32)
    transport = VirtioPciTransport(blk, m.msi)
    queue = VirtioPciDriver(m, m.plug(transport)).initialize(msix=True)[0]
    queue.post([bytes(VirtioBlkRequestHeader(VIRTIO_BLK_T_IN, 0, 0))], [512, 1])
    queue.wait_used(1)
    state = transport.debug_state()
    assert "status 0xf msix on" in state
    assert "queue 0: size 32 avail.idx 1 last_avail 1 used 1 published 1 in_flight 0" in state
