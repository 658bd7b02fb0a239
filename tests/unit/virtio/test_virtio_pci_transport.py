"""The modern virtio PCI transport: identity, capabilities, feature negotiation, status and reset."""

from harness.qtest import QtestMachine, VirtioPciDriver
from kvmkit.hw.virtio.device import (
    STATUS_DEVICE_NEEDS_RESET,
    STATUS_DRIVER_OK,
    VIRTIO_F_VERSION_1,
    VirtioDevice,
    feature_bit,
)
from kvmkit.hw.virtio.pci_transport import VirtioPciTransport


class EchoDevice(VirtioDevice):
    """Copies each chain's readable bytes into its writable buffers."""

    device_type = 4

    def __init__(self, dma, queues: int = 2) -> None:
        super().__init__("echo", dma, num_queues=queues, queue_max_size=16)
        self.activated = False

    def activate(self) -> None:
        self.activated = True

    def handle_queue(self, index: int) -> None:
        queue = self.queues[index]
        while (elem := queue.pop()) is not None:
            data = b"".join(bytes(v) for v in elem.out_bufs)
            written = 0
            for view in elem.in_bufs:
                chunk = data[written : written + view.nbytes]
                view[: len(chunk)] = chunk
                written += len(chunk)
            queue.push(elem, written)
            self.notify_queue(index)


def plug_echo(queues: int = 2):
    m = QtestMachine()
    dev = EchoDevice(m.dma, queues)
    transport = VirtioPciTransport(dev, m.msi)
    devfn = m.plug(transport, slot=2)
    return m, dev, transport, VirtioPciDriver(m, devfn)


def test_modern_ids_are_vendor_1af4_device_1040_plus_type():
    m, _, _, drv = plug_echo()
    assert m.cfg_read(drv.devfn, 0, 4) == ((0x1040 + 4) << 16) | 0x1AF4
    assert m.cfg_read(drv.devfn, 0x08, 1) == 1


def test_every_virtio_structure_has_a_capability_in_the_bar():
    _, _, _, drv = plug_echo()
    assert sorted(drv.caps) == [1, 2, 3, 4]
    assert {cap.bar for cap in drv.caps.values()} == {4}
    assert drv.notify_multiplier == 4


def test_num_queues_and_max_queue_size_are_reported():
    _, _, _, drv = plug_echo(queues=3)
    assert drv.common_read("num_queues") == 3
    drv.common_write("queue_select", 2)
    assert drv.common_read("queue_size") == 16


def test_nonexistent_queue_reads_size_zero():
    _, _, _, drv = plug_echo()
    drv.common_write("queue_select", 9)
    assert drv.common_read("queue_size") == 0


def test_device_offers_version_1():
    _, _, _, drv = plug_echo()
    assert drv.device_features() & feature_bit(VIRTIO_F_VERSION_1)


def test_features_ok_refused_without_version_1():
    _, _, _, drv = plug_echo()
    assert not drv.negotiate(drop=feature_bit(VIRTIO_F_VERSION_1))


def test_features_ok_refused_for_features_not_offered():
    _, _, _, drv = plug_echo()
    assert not drv.negotiate(features=feature_bit(VIRTIO_F_VERSION_1) | feature_bit(40))


def test_negotiated_features_reach_the_device():
    _, dev, _, drv = plug_echo()
    assert drv.negotiate()
    assert dev.driver_features == drv.device_features()


def test_driver_features_frozen_after_features_ok():
    _, _, _, drv = plug_echo()
    drv.negotiate()
    drv.common_write("driver_feature_select", 0)
    drv.common_write("driver_feature", 0)
    assert drv.common_read("driver_feature") != 0


def test_driver_ok_activates_device():
    _, dev, _, drv = plug_echo()
    drv.initialize()
    assert dev.activated
    assert drv.status & STATUS_DRIVER_OK


def test_writing_zero_status_resets_device_and_queues():
    _, dev, _, drv = plug_echo()
    drv.initialize()
    drv.reset()
    assert drv.status == 0
    assert not dev.queues[0].ready
    assert dev.driver_features == 0


def test_queue_addresses_read_back_as_64_bit():
    _, _, _, drv = plug_echo()
    drv.negotiate()
    drv.common_write("queue_select", 0)
    drv.common_write("queue_desc", 0x1_2345_6780)
    assert drv.common_read("queue_desc") == 0x1_2345_6780


def test_enabling_queue_outside_ram_needs_reset():
    _, _, transport, drv = plug_echo()
    drv.negotiate()
    drv.common_write("queue_select", 0)
    drv.common_write("queue_desc", 0xFFFF_0000)
    drv.common_write("queue_enable", 1)
    assert drv.status & STATUS_DEVICE_NEEDS_RESET
    assert "outside guest RAM" in transport.needs_reset_reason
