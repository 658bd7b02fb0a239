"""MSI-X table, PBA, masking and delivery."""

from harness.qtest import QtestMachine, RecordingMsiSink
from kvmkit.hw.pci.bar import BarKind, PciBar
from kvmkit.hw.pci.device import PciDevice
from kvmkit.hw.pci.msix import MSIX_CONTROL_ENABLE, MSIX_CONTROL_FUNCTION_MASK, Msix


class MsixWindow:
    def __init__(self) -> None:
        self.msix: Msix | None = None

    def read(self, offset: int, size: int) -> int:
        assert self.msix is not None
        if offset >= 0x800:
            return self.msix.pba_read(offset - 0x800, size)
        return self.msix.table_read(offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        assert self.msix is not None
        if offset < 0x800:
            self.msix.table_write(offset, size, value)


class MsixDevice(PciDevice):
    def __init__(self) -> None:
        super().__init__("msix-dev", 0x1234, 0x1, 0xFF0000)
        window = MsixWindow()
        self.add_bar(PciBar(0, BarKind.MEM32, 0x1000, window, "msix-bar"))
        self.sink = RecordingMsiSink()
        self.msix = Msix(self, 3, 0, 0x0, 0x800, self.sink)
        window.msix = self.msix

    def config_written(self, offset: int, size: int) -> None:
        self.msix.config_written(offset, size)


def setup():
    m = QtestMachine()
    dev = MsixDevice()
    devfn = m.plug(dev)
    base = m.map_bar(devfn, 0)
    return m, dev, devfn, base


def program(m, base, vector, data, masked=False):
    m.mmio.write(base + 16 * vector, 4, 0xFEE0_0000)
    m.mmio.write(base + 16 * vector + 8, 4, data)
    m.mmio.write(base + 16 * vector + 12, 4, int(masked))


def test_capability_reports_table_size_and_location():
    m, dev, devfn, _ = setup()
    cap = dev.msix.cap_offset
    assert m.cfg_read(devfn, cap + 2, 2) == 2
    assert m.cfg_read(devfn, cap + 4, 4) == 0x0
    assert m.cfg_read(devfn, cap + 8, 4) == 0x800


def test_table_size_field_is_read_only():
    m, dev, devfn, _ = setup()
    m.cfg_write(devfn, dev.msix.cap_offset + 2, 2, 0x07FF)
    assert m.cfg_read(devfn, dev.msix.cap_offset + 2, 2) == 2


def test_vectors_start_masked():
    m, _, _, base = setup()
    assert m.mmio.read(base + 12, 4) == 1


def test_unmasked_vector_delivers_programmed_message():
    m, dev, devfn, base = setup()
    program(m, base, 1, 0x41)
    m.cfg_write(devfn, dev.msix.cap_offset + 2, 2, MSIX_CONTROL_ENABLE)
    assert dev.msix.notify(1)
    assert dev.sink.messages == [(0xFEE0_0000, 0x41)]


def test_masked_vector_sets_pending_bit_and_fires_on_unmask():
    m, dev, devfn, base = setup()
    program(m, base, 2, 0x42, masked=True)
    m.cfg_write(devfn, dev.msix.cap_offset + 2, 2, MSIX_CONTROL_ENABLE)
    dev.msix.notify(2)
    assert dev.sink.messages == []
    assert m.mmio.read(base + 0x800, 8) == 0b100
    m.mmio.write(base + 32 + 12, 4, 0)
    assert dev.sink.messages == [(0xFEE0_0000, 0x42)]
    assert m.mmio.read(base + 0x800, 8) == 0


def test_function_mask_holds_every_vector():
    m, dev, devfn, base = setup()
    program(m, base, 0, 0x40)
    m.cfg_write(devfn, dev.msix.cap_offset + 2, 2, MSIX_CONTROL_ENABLE | MSIX_CONTROL_FUNCTION_MASK)
    dev.msix.notify(0)
    assert dev.sink.messages == []
    m.cfg_write(devfn, dev.msix.cap_offset + 2, 2, MSIX_CONTROL_ENABLE)
    assert dev.sink.messages == [(0xFEE0_0000, 0x40)]


def test_disabled_msix_does_not_deliver():
    m, dev, _, base = setup()
    program(m, base, 0, 0x40)
    assert not dev.msix.notify(0)
    assert dev.sink.messages == []


def test_out_of_range_vector_is_ignored():
    m, dev, devfn, _ = setup()
    m.cfg_write(devfn, dev.msix.cap_offset + 2, 2, MSIX_CONTROL_ENABLE)
    assert not dev.msix.notify(7)


def test_vector_listener_hears_table_updates():
    m, dev, _, base = setup()
    heard = []
    dev.msix.add_vector_listener(lambda v, a, d, masked: heard.append((v, d, masked)))
    program(m, base, 1, 0x99)
    assert heard[-1] == (1, 0x99, False)
