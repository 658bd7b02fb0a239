"""The real Debian kernel: its vmlinux extracted on the host, cached by `kvmkit guest build`, loaded by the PC."""

import logging
import os
import struct

import pytest

from kvmkit.boot.bzimage import BzImage
from kvmkit.boot.kernel_cache import KernelCache, open_cached_elf
from kvmkit.boot.layout import KERNEL_64BIT_ENTRY_OFFSET, KERNEL_LOAD_ADDR
from kvmkit.boot.vmlinux import compression_of, extract_vmlinux, payload_of
from kvmkit.cli.run_options import parse_run_options

MIB = 1 << 20


def test_debian_kernel_payload_is_xz_and_extracts_to_a_16mib_vmlinux(generic_guest):
    image = BzImage.parse(generic_guest.kernel)
    payload = payload_of(image)
    assert compression_of(payload) == "xz"
    data, kernel = extract_vmlinux(image)
    assert len(data) == struct.unpack("<I", payload[-4:])[0]  # the size the kernel build appends
    assert kernel.entry == kernel.start == 16 * MIB  # phys_startup_64 at LOAD_PHYSICAL_ADDR
    assert 16 * MIB < kernel.end < image.pref_address + image.init_size
    assert sum(segment.filesz for segment in kernel.segments) > 30 * MIB


def test_guest_build_prepopulates_the_kernel_cache(generic_guest):
    if not KernelCache().writable():
        pytest.skip("the kernel cache is read-only here (as in the lab)")
    cached = KernelCache().lookup(BzImage.parse(generic_guest.kernel))
    assert cached is not None
    assert cached.kernel.entry == 16 * MIB
    assert open_cached_elf(cached.path).kernel == cached.kernel


@pytest.fixture
def machine_factory(generic_guest):
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("no usable /dev/kvm")
    from kvmkit.machine.pc import PcMachine

    machines = []

    def build(*extra: str):
        config = parse_run_options(["-m", "256M", "-kernel", str(generic_guest.kernel), "-initrd",
                                    str(generic_guest.initrd), "-append", "console=ttyS0", "-display", "none",
                                    *extra])
        machines.append(PcMachine(config))
        return machines[-1]

    yield build
    for machine in machines:
        machine.shutdown_threads()


def test_machine_boots_the_cached_vmlinux_and_reloads_it_at_reset(machine_factory, generic_guest, caplog):
    caplog.set_level(logging.INFO, "kvmkit")
    machine = machine_factory()
    cached = KernelCache().lookup(BzImage.parse(generic_guest.kernel))
    assert machine.boot_state.rip == cached.kernel.entry
    assert "booting the cached vmlinux" in caplog.text
    first = cached.kernel.segments[0]
    expected = cached.path.read_bytes()[first.offset:first.offset + 4096]
    assert bytes(machine.dma.view(first.paddr, 4096)) == expected
    machine.dma.write(first.paddr, bytes(4096))  # the guest scribbles over its text; a reset reloads it
    assert machine._load_guest().rip == cached.kernel.entry
    assert bytes(machine.dma.view(first.paddr, 4096)) == expected


def test_kernel_cache_off_boots_the_bzimage(machine_factory, caplog):
    caplog.set_level(logging.INFO, "kvmkit")
    machine = machine_factory("-machine", "pc,kernel-cache=off")
    assert machine.boot_state.rip == KERNEL_LOAD_ADDR + KERNEL_64BIT_ENTRY_OFFSET
    assert "kernel-cache=off" in caplog.text
