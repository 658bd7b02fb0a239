"""Real /dev/kvm: tiny real-mode programs exercise KVM_RUN, PIO exits, HLT and kick()."""

from __future__ import annotations

import ctypes
import mmap
import os
import threading
import time
from collections.abc import Iterator

import pytest

from kvmkit.accel.kvm import ExitReason, Kvm, KvmVcpu
from kvmkit.accel.kvm.structs import KVM_EXIT_IO_IN, KVM_EXIT_IO_OUT

pytestmark = pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK), reason="needs /dev/kvm")

RAM_SIZE = 0x10000
CODE_ADDR = 0x1000

# mov dx, 0x3f8; mov al, 'H'; out dx, al; mov al, 'i'; out dx, al; hlt
OUT_TWO_BYTES_THEN_HLT = bytes([0xBA, 0xF8, 0x03, 0xB0, 0x48, 0xEE, 0xB0, 0x69, 0xEE, 0xF4])
# jmp $
SPIN_FOREVER = bytes([0xEB, 0xFE])


def host_address(buffer: mmap.mmap) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(buffer))


@pytest.fixture
def real_mode_vcpu() -> Iterator[tuple[KvmVcpu, mmap.mmap]]:
    kvm = Kvm()
    vm = kvm.create_vm()
    ram = mmap.mmap(-1, RAM_SIZE)
    vm.set_user_memory_region(0, 0, RAM_SIZE, host_address(ram))
    vcpu = vm.create_vcpu(0)
    sregs = vcpu.get_sregs()
    sregs.cs.base = 0
    sregs.cs.selector = 0
    vcpu.set_sregs(sregs)
    regs = vcpu.get_regs()
    regs.rip = CODE_ADDR
    regs.rflags = 0x2
    vcpu.set_regs(regs)
    yield vcpu, ram
    vcpu.close()
    vm.close()
    kvm.close()


def test_out_instructions_exit_with_port_direction_size_and_data_then_hlt(real_mode_vcpu) -> None:
    vcpu, ram = real_mode_vcpu
    ram[CODE_ADDR : CODE_ADDR + len(OUT_TWO_BYTES_THEN_HLT)] = OUT_TWO_BYTES_THEN_HLT
    seen = []
    for _ in range(2):
        assert vcpu.run() == ExitReason.IO
        io = vcpu.kvm_run.io
        seen.append((io.port, io.direction, io.size, io.count, bytes(vcpu.io_data())))
    assert seen == [(0x3F8, KVM_EXIT_IO_OUT, 1, 1, b"H"), (0x3F8, KVM_EXIT_IO_OUT, 1, 1, b"i")]
    assert vcpu.run() == ExitReason.HLT


def test_kick_from_another_thread_ends_run_of_a_spinning_guest(real_mode_vcpu) -> None:
    vcpu, ram = real_mode_vcpu
    ram[CODE_ADDR : CODE_ADDR + len(SPIN_FOREVER)] = SPIN_FOREVER
    results: list[int] = []
    started = threading.Event()

    def vcpu_thread() -> None:
        vcpu.bind_to_current_thread()
        started.set()
        results.append(vcpu.run())

    thread = threading.Thread(target=vcpu_thread, daemon=True)
    thread.start()
    started.wait()
    time.sleep(0.2)
    assert results == []  # still spinning in the guest
    vcpu.kick()
    thread.join(timeout=5)
    assert results == [ExitReason.INTR]


def test_run_clears_immediate_exit_after_an_interrupted_entry(real_mode_vcpu) -> None:
    vcpu, ram = real_mode_vcpu
    ram[CODE_ADDR : CODE_ADDR + len(OUT_TWO_BYTES_THEN_HLT)] = OUT_TWO_BYTES_THEN_HLT
    vcpu.immediate_exit = True
    assert vcpu.run() == ExitReason.INTR
    assert vcpu.immediate_exit is False
    assert vcpu.run() == ExitReason.IO


def test_kick_signal_alone_interrupts_kvm_run_because_ioctl_does_not_retry_on_eintr(real_mode_vcpu) -> None:
    vcpu, ram = real_mode_vcpu
    ram[CODE_ADDR : CODE_ADDR + len(SPIN_FOREVER)] = SPIN_FOREVER
    vcpu.has_immediate_exit = False
    results: list[int] = []
    started = threading.Event()

    def vcpu_thread() -> None:
        vcpu.bind_to_current_thread()
        started.set()
        results.append(vcpu.run())

    thread = threading.Thread(target=vcpu_thread, daemon=True)
    thread.start()
    started.wait()
    time.sleep(0.1)
    vcpu.kick()
    thread.join(timeout=5)
    assert results == [ExitReason.INTR]


# mov dx, 0x60; in al, dx; out 0x80, al; hlt
IN_THEN_ECHO = bytes([0xBA, 0x60, 0x00, 0xEC, 0xE6, 0x80, 0xF4])
# mov ax, 0x2000; mov ds, ax; mov al, 0x77; mov [0], al; mov al, [4]; out 0x80, al; hlt
MMIO_WRITE_READ_ECHO = bytes(
    [0xB8, 0x00, 0x20, 0x8E, 0xD8, 0xB0, 0x77, 0xA2, 0x00, 0x00, 0xA0, 0x04, 0x00, 0xE6, 0x80, 0xF4]
)


def test_data_written_into_an_in_exit_reaches_the_guest(real_mode_vcpu) -> None:
    vcpu, ram = real_mode_vcpu
    ram[CODE_ADDR : CODE_ADDR + len(IN_THEN_ECHO)] = IN_THEN_ECHO
    assert vcpu.run() == ExitReason.IO
    assert (vcpu.kvm_run.io.port, vcpu.kvm_run.io.direction) == (0x60, KVM_EXIT_IO_IN)
    vcpu.io_data()[:] = b"\x5a"
    assert vcpu.run() == ExitReason.IO
    assert (vcpu.kvm_run.io.port, bytes(vcpu.io_data())) == (0x80, b"\x5a")


def test_mmio_exits_carry_address_and_data_in_both_directions(real_mode_vcpu) -> None:
    vcpu, ram = real_mode_vcpu
    ram[CODE_ADDR : CODE_ADDR + len(MMIO_WRITE_READ_ECHO)] = MMIO_WRITE_READ_ECHO
    assert vcpu.run() == ExitReason.MMIO
    mmio = vcpu.kvm_run.mmio
    assert (mmio.phys_addr, mmio.len, mmio.is_write, bytes(vcpu.mmio_data())) == (0x20000, 1, 1, b"\x77")
    assert vcpu.run() == ExitReason.MMIO
    assert (mmio.phys_addr, mmio.len, mmio.is_write) == (0x20004, 1, 0)
    vcpu.mmio_data()[:] = b"\x42"
    assert vcpu.run() == ExitReason.IO
    assert bytes(vcpu.io_data()) == b"\x42"


def test_complete_pending_exit_finishes_an_in_instruction_without_running_on(real_mode_vcpu) -> None:
    vcpu, ram = real_mode_vcpu
    ram[CODE_ADDR : CODE_ADDR + len(IN_THEN_ECHO)] = IN_THEN_ECHO
    assert vcpu.run() == ExitReason.IO
    vcpu.io_data()[:] = b"\x5a"
    vcpu.complete_pending_exit()
    regs = vcpu.get_regs()
    assert (regs.rip, regs.rax & 0xFF) == (CODE_ADDR + 4, 0x5A)  # past `in`, before `out`
