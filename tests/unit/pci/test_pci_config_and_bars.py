"""PCI configuration space, host bridge, BAR sizing/mapping, capabilities and bus enumeration."""

from harness.qtest import QtestMachine, RecordingMsiSink
from kvmkit.hw.pci.bar import BarKind, PciBar
from kvmkit.hw.pci.bus import devfn_of
from kvmkit.hw.pci.config_space import COMMAND_INTX_DISABLE, COMMAND_MEMORY, STATUS_INTERRUPT
from kvmkit.hw.pci.device import PciDevice
from kvmkit.hw.pci.msix import Msix


class Window:
    def __init__(self) -> None:
        self.writes: list[tuple[int, int, int]] = []

    def read(self, offset: int, size: int) -> int:
        return 0x1234

    def write(self, offset: int, size: int, value: int) -> None:
        self.writes.append((offset, size, value))


def make_device(name: str = "dev") -> PciDevice:
    dev = PciDevice(name, 0x1234, 0x5678, 0x020000, interrupt_pin=1)
    dev.add_bar(PciBar(0, BarKind.IO, 0x20, Window(), f"{name}-io"))
    dev.add_bar(PciBar(1, BarKind.MEM32, 0x1000, Window(), f"{name}-mmio"))
    dev.add_bar(PciBar(2, BarKind.MEM64, 0x4000, Window(), f"{name}-mmio64"))
    return dev


def test_host_bridge_answers_at_00_0_with_its_ids():
    m = QtestMachine()
    assert m.cfg_read(0, 0, 4) == 0x1237_8086
    assert m.cfg_read(0, 0x0A, 2) == 0x0600


def test_absent_function_reads_all_ones():
    m = QtestMachine()
    assert m.cfg_read(devfn_of(5), 0, 4) == 0xFFFF_FFFF


def test_config_address_register_reads_back():
    m = QtestMachine()
    m.pio.write(0xCF8, 4, 0x8000_1810)
    assert m.pio.read(0xCF8, 4) == 0x8000_1810


def test_byte_and_word_reads_through_data_port_offsets():
    m = QtestMachine()
    assert m.cfg_read(0, 1, 1) == 0x80
    assert m.cfg_read(0, 2, 2) == 0x1237


def test_read_only_registers_ignore_writes():
    m = QtestMachine()
    devfn = m.plug(make_device())
    m.cfg_write(devfn, 0, 4, 0xFFFF_FFFF)
    m.cfg_write(devfn, 0x08, 4, 0)
    assert m.cfg_read(devfn, 0, 4) == 0x5678_1234
    assert m.cfg_read(devfn, 0x0B, 1) == 0x02


def test_interrupt_line_is_writable_and_pin_is_not():
    m = QtestMachine()
    devfn = m.plug(make_device())
    m.cfg_write(devfn, 0x3C, 2, 0xFFFF)
    assert m.cfg_read(devfn, 0x3C, 1) == 0xFF
    assert m.cfg_read(devfn, 0x3D, 1) == 1


def test_bar_sizing_reports_size_and_type():
    m = QtestMachine()
    devfn = m.plug(make_device())
    assert m.size_bar(devfn, 0) == (0x20, 0x1)
    assert m.size_bar(devfn, 1) == (0x1000, 0x0)
    assert m.size_bar(devfn, 2) == (0x4000, 0x4)


def test_bar_maps_only_when_decoding_enabled():
    m = QtestMachine()
    dev = make_device()
    devfn = m.plug(dev)
    m.cfg_write(devfn, 0x14, 4, 0xE100_0000)
    assert m.mmio.read(0xE100_0000, 4) == 0xFFFF_FFFF
    m.cfg_write(devfn, 0x04, 2, COMMAND_MEMORY)
    assert m.mmio.read(0xE100_0000, 4) == 0x1234
    assert dev.bar_address(1) == 0xE100_0000


def test_bar_moves_when_reprogrammed():
    m = QtestMachine()
    dev = make_device()
    devfn = m.plug(dev)
    old = m.map_bar(devfn, 1)
    m.cfg_write(devfn, 0x14, 4, 0xE200_0000)
    assert dev.bar_address(1) == 0xE200_0000
    assert m.mmio.read(0xE200_0000, 4) == 0x1234
    assert m.mmio.read(old, 4) == 0xFFFF_FFFF


def test_sixty_four_bit_bar_decodes_high_address():
    m = QtestMachine()
    dev = make_device()
    devfn = m.plug(dev)
    m.cfg_write(devfn, 0x18, 4, 0x0000_0000)
    m.cfg_write(devfn, 0x1C, 4, 0x1)
    m.cfg_write(devfn, 0x04, 2, COMMAND_MEMORY)
    assert dev.bar_address(2) == 0x1_0000_0000


def test_io_bar_maps_on_pio_bus():
    m = QtestMachine()
    dev = make_device()
    devfn = m.plug(dev)
    addr = m.map_bar(devfn, 0)
    m.pio.write(addr + 4, 1, 0x55)
    assert dev.bars[0].handler.writes == [(4, 1, 0x55)]


def test_disabling_decode_unmaps_bar():
    m = QtestMachine()
    dev = make_device()
    devfn = m.plug(dev)
    m.map_bar(devfn, 1)
    m.cfg_write(devfn, 0x04, 2, 0)
    assert dev.bar_address(1) is None


def test_capability_walk_finds_msix():
    m = QtestMachine()
    dev = make_device()
    Msix(dev, 4, 1, 0x0, 0x800, RecordingMsiSink())
    devfn = m.plug(dev)
    assert m.capabilities(devfn) == [(0x11, 0x40)]
    assert m.cfg_read(devfn, 0x06, 2) & 0x10


def test_intx_swizzle_uses_slot_and_pin():
    m = QtestMachine()
    dev = make_device()
    m.plug(dev, slot=3)
    dev.set_intx_level(True)
    assert m.irq_lines[19].level
    assert m.cfg_read(devfn_of(3), 0x3C, 1) == 19


def test_intx_disable_masks_the_line_and_status_still_shows_it():
    m = QtestMachine()
    dev = make_device()
    devfn = m.plug(dev, slot=1)
    dev.set_intx_level(True)
    m.cfg_write(devfn, 0x04, 2, COMMAND_INTX_DISABLE)
    assert not m.irq_lines[17].level
    assert m.cfg_read(devfn, 0x06, 2) & STATUS_INTERRUPT


def test_hot_remove_unmaps_and_function_disappears():
    m = QtestMachine()
    dev = make_device()
    devfn = m.plug(dev, slot=4)
    m.map_bar(devfn, 1)
    m.bus.remove(4)
    assert m.mmio.read(0xE000_0000, 4) == 0xFFFF_FFFF
    assert m.cfg_read(devfn, 0, 4) == 0xFFFF_FFFF


def test_enumerate_lists_functions_like_query_pci():
    m = QtestMachine()
    m.plug(make_device("nic"), slot=2)
    devices = m.bus.enumerate()[0]["devices"]
    assert [(d["slot"], d["qdev_id"]) for d in devices] == [(0, "host-bridge"), (2, "nic")]
    assert devices[1]["id"]["vendor"] == 0x1234
