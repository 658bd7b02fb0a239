"""virtio-blk driven like Linux does, against raw and qcow2 images."""

import pytest

from harness.qtest import QtestMachine, VirtioPciDriver
from kvmkit.block.formats.qcow2.create import create_qcow2
from kvmkit.block.formats.qcow2.driver import Qcow2Driver
from kvmkit.block.formats.raw import RawFormat
from kvmkit.block.protocols.file import FileProtocol
from kvmkit.core.bql import Bql
from kvmkit.core.worker_pool import WorkerPool
from kvmkit.hw.virtio.blk import (
    VIRTIO_BLK_F_RO,
    VIRTIO_BLK_S_IOERR,
    VIRTIO_BLK_S_OK,
    VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID,
    VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES,
    VirtioBlk,
    VirtioBlkConfig,
    VirtioBlkDiscardSegment,
    VirtioBlkRequestHeader,
)
from kvmkit.hw.virtio.device import feature_bit
from kvmkit.hw.virtio.pci_transport import VirtioPciTransport

DISK_SIZE = 1 << 20


def raw_image(tmp_path, read_only=False, fill=b"\0"):
    path = tmp_path / "disk.raw"
    path.write_bytes(fill * DISK_SIZE if len(fill) == 1 else fill)
    return RawFormat(FileProtocol(str(path), read_only=read_only)), path


def boot_blk(driver, pool=None, bql=None, **kwargs):
    m = QtestMachine()
    blk = VirtioBlk("vda", driver, m.dma, bql=bql, pool=pool, queue_size=32, **kwargs)
    devfn = m.plug(VirtioPciTransport(blk, m.msi))
    drv = VirtioPciDriver(m, devfn)
    queue = drv.initialize()[0]
    return m, blk, drv, queue


def header(kind, sector=0):
    return bytes(VirtioBlkRequestHeader(kind, 0, sector))


def request(m, queue, kind, sector=0, data=b"", read_len=0):
    """Post one request; returns (used len, status, bytes read)."""
    outs = [header(kind, sector)] + ([data] if data else [])
    ins = ([read_len] if read_len else []) + [1]
    head, addrs = queue.post(outs, ins)
    ((used_head, used_len),) = queue.wait_used()
    assert used_head == head
    status = m.dma.read(addrs[-1], 1)[0]
    payload = m.dma.read(addrs[0], read_len) if read_len else b""
    return used_len, status, payload


def test_read_returns_disk_bytes(tmp_path):
    pattern = bytes(range(256)) * (DISK_SIZE // 256)
    driver, _ = raw_image(tmp_path, fill=pattern)
    m, _, _, queue = boot_blk(driver)
    used_len, status, data = request(m, queue, VIRTIO_BLK_T_IN, sector=2, read_len=1024)
    assert (used_len, status) == (1025, VIRTIO_BLK_S_OK)
    assert data == pattern[1024:2048]


def test_write_reaches_the_file(tmp_path):
    driver, path = raw_image(tmp_path)
    m, _, _, queue = boot_blk(driver)
    _, status, _ = request(m, queue, VIRTIO_BLK_T_OUT, sector=1, data=b"\xab" * 512)
    assert status == VIRTIO_BLK_S_OK
    assert path.read_bytes()[512:1024] == b"\xab" * 512


def test_flush_succeeds_and_counts(tmp_path):
    driver, _ = raw_image(tmp_path)
    m, blk, _, queue = boot_blk(driver)
    assert request(m, queue, VIRTIO_BLK_T_FLUSH)[1] == VIRTIO_BLK_S_OK
    assert blk.blockstats()["flush_operations"] == 1


def test_get_id_returns_serial(tmp_path):
    driver, _ = raw_image(tmp_path)
    m, _, _, queue = boot_blk(driver, serial="SERIAL42")
    used_len, status, data = request(m, queue, VIRTIO_BLK_T_GET_ID, read_len=20)
    assert status == VIRTIO_BLK_S_OK
    assert data == b"SERIAL42".ljust(20, b"\0")
    assert used_len == 21


def test_discard_and_write_zeroes_clear_data(tmp_path):
    driver, path = raw_image(tmp_path, fill=b"\xff")
    m, _, _, queue = boot_blk(driver)
    seg = bytes(VirtioBlkDiscardSegment(0, 2, 0))
    assert request(m, queue, VIRTIO_BLK_T_WRITE_ZEROES, data=seg)[1] == VIRTIO_BLK_S_OK
    assert path.read_bytes()[:1024] == bytes(1024)
    assert request(m, queue, VIRTIO_BLK_T_DISCARD, data=bytes(VirtioBlkDiscardSegment(4, 2, 0)))[1] == 0


def test_discard_with_unknown_flags_is_unsupported(tmp_path):
    driver, _ = raw_image(tmp_path)
    m, _, _, queue = boot_blk(driver)
    seg = bytes(VirtioBlkDiscardSegment(0, 1, 0x80))
    assert request(m, queue, VIRTIO_BLK_T_DISCARD, data=seg)[1] == VIRTIO_BLK_S_UNSUPP


def test_unknown_request_type_is_unsupported(tmp_path):
    driver, _ = raw_image(tmp_path)
    m, _, _, queue = boot_blk(driver)
    assert request(m, queue, 99)[1] == VIRTIO_BLK_S_UNSUPP


def test_config_reports_capacity_and_limits(tmp_path):
    driver, _ = raw_image(tmp_path)
    _, _, drv, _ = boot_blk(driver)
    assert drv.device_config(VirtioBlkConfig.capacity.offset, 4) == DISK_SIZE // 512
    assert drv.device_config(VirtioBlkConfig.blk_size.offset, 4) == 512
    assert drv.device_config(VirtioBlkConfig.seg_max.offset, 4) == 30
    assert drv.device_config(VirtioBlkConfig.max_discard_seg.offset, 4) == 1


def test_read_only_drive_offers_ro_and_rejects_writes(tmp_path):
    driver, path = raw_image(tmp_path, read_only=True)
    m, _, drv, queue = boot_blk(driver)
    assert drv.device_features() & feature_bit(VIRTIO_BLK_F_RO)
    assert request(m, queue, VIRTIO_BLK_T_OUT, data=b"\x01" * 512)[1] == VIRTIO_BLK_S_IOERR
    assert path.read_bytes()[:512] == bytes(512)


def test_out_of_range_read_is_ioerr_and_device_survives(tmp_path):
    driver, _ = raw_image(tmp_path)
    m, blk, _, queue = boot_blk(driver)
    assert request(m, queue, VIRTIO_BLK_T_IN, sector=DISK_SIZE // 512, read_len=512)[1] == VIRTIO_BLK_S_IOERR
    assert request(m, queue, VIRTIO_BLK_T_IN, sector=2**63, read_len=512)[1] == VIRTIO_BLK_S_IOERR
    assert request(m, queue, VIRTIO_BLK_T_IN, sector=0, read_len=512)[1] == VIRTIO_BLK_S_OK
    assert blk.stats.failed_rd_operations == 2


def test_unaligned_length_is_ioerr(tmp_path):
    driver, _ = raw_image(tmp_path)
    m, _, _, queue = boot_blk(driver)
    assert request(m, queue, VIRTIO_BLK_T_IN, read_len=100)[1] == VIRTIO_BLK_S_IOERR


class FailingDriver:
    read_only = False
    size = DISK_SIZE

    def pread(self, offset, bufs):
        raise OSError(5, "Input/output error")

    pwrite = pread

    def flush(self):
        raise OSError(5, "Input/output error")


def test_io_error_reports_through_hook():
    errors = []
    m, _, _, queue = boot_blk(FailingDriver(), on_io_error=lambda dev, op, why: errors.append((dev.name, op)))
    assert request(m, queue, VIRTIO_BLK_T_IN, read_len=512)[1] == VIRTIO_BLK_S_IOERR
    assert errors == [("vda", "read")]


def test_stats_count_bytes_and_operations(tmp_path):
    driver, _ = raw_image(tmp_path)
    m, blk, _, queue = boot_blk(driver)
    request(m, queue, VIRTIO_BLK_T_IN, read_len=1024)
    request(m, queue, VIRTIO_BLK_T_OUT, data=b"x" * 512)
    stats = blk.blockstats()
    assert (stats["rd_bytes"], stats["rd_operations"]) == (1024, 1)
    assert (stats["wr_bytes"], stats["wr_operations"]) == (512, 1)


def test_requests_complete_through_worker_pool(tmp_path):
    driver, path = raw_image(tmp_path)
    bql = Bql()
    pool = WorkerPool(bql, max_workers=2)
    try:
        _m, _, _, queue = boot_blk(driver, pool=pool, bql=bql)
        with bql:
            heads = [queue.post([header(VIRTIO_BLK_T_OUT, i), bytes([i]) * 512], [1])[0] for i in range(4)]
        used = queue.wait_used(4)
    finally:
        pool.shutdown()
    assert sorted(h for h, _ in used) == sorted(heads)
    assert path.read_bytes()[3 * 512] == 3


def test_header_missing_needs_reset(tmp_path):
    driver, _ = raw_image(tmp_path)
    _m, _, drv, queue = boot_blk(driver)
    queue.post([b"short"], [1])
    assert drv.status & 64


@pytest.fixture
def qcow2_driver(tmp_path):
    path = tmp_path / "disk.qcow2"
    create_qcow2(str(path), DISK_SIZE)
    driver = Qcow2Driver(FileProtocol(str(path)))
    yield driver
    driver.close()


def test_qcow2_write_then_read_back(qcow2_driver):
    m, _, _, queue = boot_blk(qcow2_driver)
    assert request(m, queue, VIRTIO_BLK_T_OUT, sector=100, data=b"q" * 4096)[1] == VIRTIO_BLK_S_OK
    _, status, data = request(m, queue, VIRTIO_BLK_T_IN, sector=100, read_len=4096)
    assert (status, data) == (VIRTIO_BLK_S_OK, b"q" * 4096)
