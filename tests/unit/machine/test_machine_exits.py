"""The exit dispatcher turns kvm_run exits into bus accesses and machine events, replaying coalesced writes first."""

import ctypes

from kvmkit.accel.kvm import structs as s
from kvmkit.accel.kvm.coalesced import KvmCoalescedMmioRing
from kvmkit.accel.kvm.ioctls import ExitReason
from kvmkit.machine.exits import ExitDispatcher
from kvmkit.memory.address_space import IoBus

PAGE = 4096


class RecordingDevice:
    def __init__(self, read_value: int = 0) -> None:
        self.writes: list[tuple[int, int, int]] = []
        self.read_value = read_value

    def read(self, offset: int, size: int) -> int:
        return self.read_value & ((1 << (8 * size)) - 1)

    def write(self, offset: int, size: int, value: int) -> None:
        self.writes.append((offset, size, value))


class FakeVcpu:
    """Just enough of KvmVcpu: a kvm_run page with room for PIO data, and registers."""

    index = 0

    def __init__(self) -> None:
        self.page = bytearray(PAGE)
        self.run_page = memoryview(self.page)
        self.kvm_run = s.KvmRun.from_buffer(self.page)

    def io_data(self) -> memoryview:
        io = self.kvm_run.io
        return memoryview(self.page)[io.data_offset:io.data_offset + io.size * io.count]

    def mmio_data(self) -> memoryview:
        base = ctypes.addressof(self.kvm_run.mmio.data) - ctypes.addressof(self.kvm_run)
        return memoryview(self.page)[base:base + self.kvm_run.mmio.len]

    def get_regs(self) -> s.KvmRegs:
        return s.KvmRegs(rip=0xFFFF_FFFF_8100_0000)


def make_dispatcher(events: list) -> tuple[ExitDispatcher, IoBus, IoBus]:
    pio, mmio = IoBus.pio(), IoBus.mmio()
    dispatcher = ExitDispatcher(pio, mmio, on_guest_reset=lambda r: events.append(("reset", r)),
                                on_guest_shutdown=lambda r: events.append(("shutdown", r)),
                                on_fatal=lambda vcpu, message: events.append(("fatal", message)))
    return dispatcher, pio, mmio


def pio_exit(vcpu: FakeVcpu, port: int, size: int, count: int, out: bool, payload: bytes = b"") -> None:
    run = vcpu.kvm_run
    run.exit_reason = ExitReason.IO
    run.io.direction, run.io.size, run.io.port, run.io.count, run.io.data_offset = int(out), size, port, count, 512
    vcpu.page[512:512 + len(payload)] = payload


def test_string_pio_out_writes_each_element_little_endian():
    dispatcher, pio, _ = make_dispatcher([])
    device = RecordingDevice()
    pio.register(0x500, 4, device, "test")
    vcpu = FakeVcpu()
    pio_exit(vcpu, 0x500, 2, 2, out=True, payload=bytes([0x34, 0x12, 0x78, 0x56]))
    assert dispatcher(vcpu) is True
    assert device.writes == [(0, 2, 0x1234), (0, 2, 0x5678)]


def test_pio_in_fills_the_data_bytes():
    dispatcher, pio, _ = make_dispatcher([])
    pio.register(0x600, 4, RecordingDevice(read_value=0xAABBCCDD), "test")
    vcpu = FakeVcpu()
    pio_exit(vcpu, 0x600, 4, 1, out=False)
    dispatcher(vcpu)
    assert bytes(vcpu.page[512:516]) == bytes([0xDD, 0xCC, 0xBB, 0xAA])


def test_unassigned_pio_reads_all_ones():
    dispatcher, _, _ = make_dispatcher([])
    vcpu = FakeVcpu()
    pio_exit(vcpu, 0x1234, 2, 1, out=False)
    dispatcher(vcpu)
    assert bytes(vcpu.page[512:514]) == b"\xff\xff"


def test_mmio_write_and_read_reach_the_mmio_bus():
    dispatcher, _, mmio = make_dispatcher([])
    device = RecordingDevice(read_value=0x0102030405060708)
    mmio.register(0xC000_0000, 0x1000, device, "bar")
    vcpu = FakeVcpu()
    run = vcpu.kvm_run
    run.exit_reason = ExitReason.MMIO
    run.mmio.phys_addr, run.mmio.len, run.mmio.is_write = 0xC000_0010, 4, 1
    run.mmio.data[:4] = [0x11, 0x22, 0x33, 0x44]
    dispatcher(vcpu)
    assert device.writes == [(0x10, 4, 0x44332211)]
    run.mmio.is_write, run.mmio.len = 0, 8
    dispatcher(vcpu)
    assert bytes(run.mmio.data) == (0x0102030405060708).to_bytes(8, "little")


def test_triple_fault_is_fatal_and_names_the_vcpu_and_rip():
    events: list = []
    dispatcher, _, _ = make_dispatcher(events)
    vcpu = FakeVcpu()
    vcpu.kvm_run.exit_reason = ExitReason.SHUTDOWN
    assert dispatcher(vcpu) is False
    kind, message = events[0]
    assert kind == "fatal" and "vCPU 0" in message and "triple" in message and "0xffffffff81000000" in message


def test_unknown_exit_is_fatal_not_a_crash():
    events: list = []
    dispatcher, _, _ = make_dispatcher(events)
    vcpu = FakeVcpu()
    vcpu.kvm_run.exit_reason = 9999
    assert dispatcher(vcpu) is False
    assert events and events[0][0] == "fatal" and "9999" in events[0][1]


class FakeCoalesced:
    """A coalesced ring in plain memory, with the real replay logic."""

    def __init__(self) -> None:
        from kvmkit.accel.kvm.coalesced import CoalescedWrites

        self.buffer = bytearray(ctypes.sizeof(KvmCoalescedMmioRing))
        self.writes = CoalescedWrites.__new__(CoalescedWrites)
        self.writes.page = memoryview(self.buffer)
        self.writes.ring = KvmCoalescedMmioRing.from_buffer(self.buffer)

    def queue_pio(self, port: int, size: int, value: int) -> None:
        ring = self.writes.ring
        entry = ring.entries[ring.last]
        entry.phys_addr, entry.len, entry.pio = port, size, 1
        entry.data[:size] = list(value.to_bytes(size, "little"))
        ring.last += 1


def test_coalesced_writes_are_replayed_in_order_before_the_exit_is_handled():
    dispatcher, pio, _ = make_dispatcher([])
    address_port, data_port = RecordingDevice(), RecordingDevice(read_value=0x1237_8086)
    pio.register(0xCF8, 4, address_port, "address")
    pio.register(0xCFC, 4, data_port, "data")
    coalesced = FakeCoalesced()
    dispatcher.coalesced = coalesced.writes
    coalesced.queue_pio(0xCF8, 4, 0x8000_0000)
    coalesced.queue_pio(0xCF8, 4, 0x8000_0800)
    vcpu = FakeVcpu()
    pio_exit(vcpu, 0xCFC, 4, 1, out=False)
    dispatcher(vcpu)
    assert address_port.writes == [(0, 4, 0x8000_0000), (0, 4, 0x8000_0800)]
    assert not coalesced.writes.pending()


def test_coalesced_replay_stops_at_an_out_of_range_index():
    _dispatcher, pio, _ = make_dispatcher([])
    port = RecordingDevice()
    pio.register(0xCF8, 4, port, "address")
    coalesced = FakeCoalesced()
    coalesced.writes.ring.first = 10_000  # never written by KVM: must not index outside the ring page
    coalesced.writes.ring.last = 3
    coalesced.writes.replay(pio.write, pio.write)
    assert port.writes == []


def test_string_pio_in_fills_every_element():
    dispatcher, pio, _ = make_dispatcher([])
    pio.register(0x700, 2, RecordingDevice(read_value=0xBEEF), "test")
    vcpu = FakeVcpu()
    pio_exit(vcpu, 0x700, 2, 3, out=False)
    assert dispatcher(vcpu) is True
    assert bytes(vcpu.page[512:518]) == bytes([0xEF, 0xBE] * 3)


def test_pio_data_outside_the_kvm_run_page_is_fatal_not_a_crash():
    events: list = []
    dispatcher, _pio, _ = make_dispatcher(events)
    vcpu = FakeVcpu()
    pio_exit(vcpu, 0x60, 4, 2000, out=False)  # 8000 bytes from offset 512: beyond the page
    assert dispatcher(vcpu) is False
    assert events[0][0] == "fatal" and "outside the kvm_run page" in events[0][1]


def test_bus_cache_follows_registration_changes():
    dispatcher, pio, _ = make_dispatcher([])
    vcpu = FakeVcpu()
    pio_exit(vcpu, 0x510, 1, 1, out=False)
    dispatcher(vcpu)
    assert vcpu.page[512] == 0xFF  # unassigned, and now cached as such
    pio.register(0x510, 1, RecordingDevice(read_value=0x42), "late")
    dispatcher(vcpu)
    assert vcpu.page[512] == 0x42
    pio.unregister(0x510)
    dispatcher(vcpu)
    assert vcpu.page[512] == 0xFF
