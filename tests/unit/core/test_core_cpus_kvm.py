"""Pause/resume of real vCPUs on /dev/kvm running a real-mode `out` loop."""

from __future__ import annotations

import ctypes
import mmap
import os
import threading
import time

import pytest

from kvmkit.accel.kvm import ExitReason, Kvm, KvmVcpu
from kvmkit.core.bql import Bql
from kvmkit.core.cpus import CpuSet

pytestmark = pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK), reason="needs /dev/kvm")

CODE_ADDR = 0x1000
# mov dx, 0x80; loop: out dx, al; jmp loop
OUT_LOOP = bytes([0xBA, 0x80, 0x00, 0xEE, 0xEB, 0xFD])


def test_pause_and_resume_real_vcpus_in_an_io_loop() -> None:
    kvm = Kvm()
    vm = kvm.create_vm()
    ram = mmap.mmap(-1, 0x10000)
    ram[CODE_ADDR : CODE_ADDR + len(OUT_LOOP)] = OUT_LOOP
    anchor = ctypes.c_char.from_buffer(ram)
    vm.set_user_memory_region(0, 0, len(ram), ctypes.addressof(anchor))
    del anchor
    vcpus: list[KvmVcpu] = []
    for index in range(2):
        vcpu = vm.create_vcpu(index)
        sregs = vcpu.get_sregs()
        sregs.cs.base, sregs.cs.selector = 0, 0
        vcpu.set_sregs(sregs)
        regs = vcpu.get_regs()
        regs.rip, regs.rflags = CODE_ADDR, 2
        vcpu.set_regs(regs)
        vcpus.append(vcpu)
    bql = Bql()
    counts = [0, 0]
    lock = threading.Lock()
    errors: list[BaseException] = []

    def handle_exit(vcpu: KvmVcpu) -> bool:
        assert vcpu.kvm_run.exit_reason == ExitReason.IO and vcpu.kvm_run.io.port == 0x80
        with lock:
            counts[vcpu.index] += 1
        return True

    cpus = CpuSet(vcpus, bql, handle_exit, lambda index, error: errors.append(error))
    cpus.start()
    try:
        deadline = time.monotonic() + 5
        while min(counts) < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert min(counts) >= 5
        cpus.pause_all()
        frozen = list(counts)
        time.sleep(0.05)
        assert counts == frozen
        cpus.resume_all()
        deadline = time.monotonic() + 5
        while min(c - f for c, f in zip(counts, frozen, strict=True)) < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert all(c > f for c, f in zip(counts, frozen, strict=True))
    finally:
        assert cpus.stop_all(timeout=5)
        for vcpu in vcpus:
            vcpu.close()
        vm.close()
        kvm.close()
    assert errors == []
