"""VM and vCPU ioctls on the real /dev/kvm: irqchip, routing, eventfds, clock, state round trips."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from kvmkit.accel.kvm import Cap, IrqchipRoute, Kvm, KvmVm, MsiRoute, boot_msrs, build_guest_cpuid
from kvmkit.accel.kvm.msrs import Msr
from kvmkit.accel.kvm.structs import KVM_IRQCHIP_IOAPIC
from kvmkit.errors import ConfigError, HostError

pytestmark = pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK), reason="needs /dev/kvm")


@pytest.fixture
def kvm() -> Iterator[Kvm]:
    handle = Kvm()
    yield handle
    handle.close()


@pytest.fixture
def vm(kvm: Kvm) -> Iterator[KvmVm]:
    machine = kvm.create_vm()
    yield machine
    machine.close()


def test_api_version_is_12(kvm: Kvm) -> None:
    assert kvm.api_version == 12


def test_require_names_the_missing_capability_and_the_purpose(kvm: Kvm, monkeypatch) -> None:
    monkeypatch.setattr(kvm, "check_extension", lambda cap: 0)
    with pytest.raises(HostError, match=r"KVM_CAP_IRQFD.*virtio interrupts"):
        kvm.require(Cap.IRQFD, "virtio interrupts")


def test_missing_device_node_is_a_host_error() -> None:
    with pytest.raises(HostError, match="/nonexistent/kvm does not exist"):
        Kvm("/nonexistent/kvm")


def test_supported_cpuid_contains_kvm_paravirtual_signature(kvm: Kvm) -> None:
    signature = [e for e in kvm.supported_cpuid() if e.function == 0x4000_0000]
    assert signature and signature[0].ebx == int.from_bytes(b"KVMK", "little")


def test_irqchip_pit_routing_and_irq_line_are_accepted(vm: KvmVm) -> None:
    vm.set_tss_addr(0xFFFB_D000)
    vm.set_identity_map_addr(0xFFFB_C000)
    vm.create_irqchip()
    vm.create_pit2()
    vm.set_gsi_routing([IrqchipRoute(4, KVM_IRQCHIP_IOAPIC, 4), MsiRoute(24, 0xFEE0_0000, 0x4021)])
    vm.irq_line(4, True)
    vm.irq_line(4, False)


def test_signal_msi_reports_delivery_or_a_clear_error(kvm: Kvm, vm: KvmVm) -> None:
    vm.create_irqchip()
    vcpu = vm.create_vcpu(0)
    try:
        assert vm.signal_msi(0xFEE0_0000, 0x30) >= 0  # accepted (delivered, or blocked by the APIC's state)
    finally:
        vcpu.close()
    without_irqchip = kvm.create_vm()
    try:
        with pytest.raises(HostError, match="KVM_SIGNAL_MSI address 0xfee00000 data 0x30"):
            without_irqchip.signal_msi(0xFEE0_0000, 0x30)
    finally:
        without_irqchip.close()


def test_irqfd_can_be_assigned_and_deassigned(vm: KvmVm) -> None:
    vm.create_irqchip()
    efd = os.eventfd(0)
    try:
        vm.irqfd(efd, 10)
        with pytest.raises(HostError, match="KVM_IRQFD fd"):
            vm.irqfd(efd, 11)  # one eventfd drives one GSI at a time
        vm.irqfd(efd, 10, deassign=True)
        vm.irqfd(efd, 11)
    finally:
        os.close(efd)


def test_ioeventfd_with_datamatch_can_be_assigned(vm: KvmVm) -> None:
    efd = os.eventfd(0)
    try:
        vm.ioeventfd(efd, 0xD000_0000, 4, pio=False, datamatch=3)
        vm.ioeventfd(efd, 0xC050, 2, pio=True)
        vm.ioeventfd(efd, 0xC050, 2, pio=True, deassign=True)
    finally:
        os.close(efd)


def test_ioeventfd_rejects_odd_lengths(vm: KvmVm) -> None:
    with pytest.raises(ConfigError, match="length 3"):
        vm.ioeventfd(0, 0x1000, 3, pio=False)


def test_tss_address_above_4g_is_rejected(vm: KvmVm) -> None:
    with pytest.raises(ConfigError, match="TSS"):
        vm.set_tss_addr(0x1_0000_0000)


def test_clock_can_be_set_and_read_back(vm: KvmVm) -> None:
    vm.set_clock(5_000_000_000)
    assert 5_000_000_000 <= vm.get_clock().clock < 6_000_000_000


def test_boot_msrs_round_trip_through_the_vcpu(kvm: Kvm, vm: KvmVm) -> None:
    vcpu = vm.create_vcpu(0)
    vcpu.set_cpuid2(build_guest_cpuid(kvm.supported_cpuid(), 0, 1))
    vcpu.set_msrs(boot_msrs())
    values = vcpu.get_msrs([Msr.IA32_MTRR_DEF_TYPE, Msr.IA32_MISC_ENABLE])
    assert values == {Msr.IA32_MTRR_DEF_TYPE: 0x806, Msr.IA32_MISC_ENABLE: 1}
    vcpu.close()


def test_unknown_msr_read_names_the_msr(vm: KvmVm) -> None:
    vcpu = vm.create_vcpu(0)
    with pytest.raises(HostError, match="0x12345678"):
        vcpu.get_msrs([0x1234_5678])
    vcpu.close()


def test_vcpu_state_round_trips(vm: KvmVm) -> None:
    vm.create_irqchip()
    vcpu = vm.create_vcpu(0)
    regs = vcpu.get_regs()
    regs.rax = 0xDEAD_BEEF
    vcpu.set_regs(regs)
    vcpu.set_fpu(vcpu.get_fpu())
    vcpu.set_lapic(vcpu.get_lapic())
    vcpu.set_vcpu_events(vcpu.get_vcpu_events())
    vcpu.set_mp_state(vcpu.get_mp_state())
    assert vcpu.get_regs().rax == 0xDEAD_BEEF
    vcpu.close()
