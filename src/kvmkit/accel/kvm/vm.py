"""A KVM virtual machine file descriptor."""

from __future__ import annotations

import ctypes
import fcntl
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from kvmkit.accel.kvm import ioctls
from kvmkit.accel.kvm import structs as s
from kvmkit.accel.kvm.fd import KvmFd
from kvmkit.accel.kvm.vcpu import KvmVcpu
from kvmkit.errors import ConfigError, HostError


@dataclass(frozen=True)
class IrqchipRoute:
    """Route `gsi` to pin `pin` of an in-kernel irqchip (KVM_IRQCHIP_PIC_MASTER/SLAVE/IOAPIC)."""

    gsi: int
    irqchip: int
    pin: int


@dataclass(frozen=True)
class MsiRoute:
    """Route `gsi` to an MSI message (address/data), as used by irqfds for MSI-X vectors."""

    gsi: int
    address: int
    data: int


IrqRoute = IrqchipRoute | MsiRoute

_IOEVENTFD_LENGTHS = (0, 1, 2, 4, 8)
# struct kvm_msi: address_lo, address_hi, data, flags, then devid and pad (zero)
_pack_kvm_msi = struct.Struct("<IIII16x").pack
assert struct.calcsize("<IIII16x") == ctypes.sizeof(s.KvmMsi)


class KvmVm(KvmFd):
    """A VM: memory slots, in-kernel irqchip/PIT, interrupts, eventfds and vCPU creation."""

    def __init__(self, fd: int, vcpu_mmap_size: int, immediate_exit: bool = True) -> None:
        super().__init__(fd, "kvm-vm")
        self.vcpu_mmap_size = vcpu_mmap_size
        self.has_immediate_exit = immediate_exit

    def set_user_memory_region(
        self, slot: int, gpa: int, size: int, host_addr: int, readonly: bool = False
    ) -> None:
        """Map `size` bytes at host address `host_addr` as guest physical `gpa` (size 0 deletes the slot)."""
        region = s.KvmUserspaceMemoryRegion(
            slot=slot,
            flags=s.KVM_MEM_READONLY if readonly else 0,
            guest_phys_addr=gpa,
            memory_size=size,
            userspace_addr=host_addr,
        )
        self.ioctl(
            ioctls.KVM_SET_USER_MEMORY_REGION,
            region,
            f"KVM_SET_USER_MEMORY_REGION slot {slot} gpa {gpa:#x} size {size:#x}",
        )

    def set_tss_addr(self, addr: int) -> None:
        """Place the three-page TSS region KVM needs on Intel (below 4 GiB, outside RAM)."""
        if not 0 <= addr <= 0xFFFF_FFFF - 3 * 0x1000 + 1 or addr % 0x1000:
            raise ConfigError(f"TSS address {addr:#x} must be page aligned and below 4 GiB")
        # fcntl.ioctl takes a C int; the kernel reads the low 32 bits of the unsigned argument.
        self.ioctl(ioctls.KVM_SET_TSS_ADDR, ctypes.c_int32(addr).value, f"KVM_SET_TSS_ADDR {addr:#x}")

    def set_identity_map_addr(self, addr: int) -> None:
        """Place the one-page EPT identity map KVM needs on Intel."""
        self.ioctl(
            ioctls.KVM_SET_IDENTITY_MAP_ADDR, ctypes.c_uint64(addr), f"KVM_SET_IDENTITY_MAP_ADDR {addr:#x}"
        )

    def create_irqchip(self) -> None:
        """Create the in-kernel PIC pair, IOAPIC and local APICs."""
        self.ioctl(ioctls.KVM_CREATE_IRQCHIP, 0, "KVM_CREATE_IRQCHIP")

    def create_pit2(self, flags: int = s.KVM_PIT_SPEAKER_DUMMY) -> None:
        """Create the in-kernel i8254 PIT."""
        self.ioctl(ioctls.KVM_CREATE_PIT2, s.KvmPitConfig(flags=flags), "KVM_CREATE_PIT2")

    def irq_line(self, gsi: int, level: bool | int) -> None:
        """Set the level of GSI `gsi` on the in-kernel irqchip."""
        self.ioctl(
            ioctls.KVM_IRQ_LINE, s.KvmIrqLevel(irq=gsi, level=1 if level else 0), f"KVM_IRQ_LINE gsi {gsi}"
        )

    def signal_msi(self, address: int, data: int) -> int:
        """Inject one MSI; returns >0 when delivered, 0 when the guest blocked it (hot path: packed with struct,
        the error label built only on failure)."""
        msi = bytearray(_pack_kvm_msi(address & 0xFFFF_FFFF, address >> 32, data, 0))
        try:
            return fcntl.ioctl(self.fd, ioctls.KVM_SIGNAL_MSI, msi, True)
        except OSError as error:
            raise HostError(f"{self.name}: KVM_SIGNAL_MSI address {address:#x} data {data:#x} failed: "
                            f"{error.strerror}") from error

    def set_gsi_routing(self, entries: Sequence[IrqRoute]) -> None:
        """Replace the whole GSI routing table."""
        table = s.irq_routing_with_entries(len(entries))()
        table.nr = len(entries)
        for slot, route in zip(table.entries, entries, strict=True):
            slot.gsi = route.gsi
            if isinstance(route, IrqchipRoute):
                slot.type = s.KVM_IRQ_ROUTING_IRQCHIP
                slot.irqchip.irqchip = route.irqchip
                slot.irqchip.pin = route.pin
            else:
                slot.type = s.KVM_IRQ_ROUTING_MSI
                slot.msi.address_lo = route.address & 0xFFFF_FFFF
                slot.msi.address_hi = route.address >> 32
                slot.msi.data = route.data
        self.ioctl(ioctls.KVM_SET_GSI_ROUTING, table, f"KVM_SET_GSI_ROUTING ({len(entries)} routes)")

    def irqfd(self, efd: int, gsi: int, resample_fd: int | None = None, deassign: bool = False) -> None:
        """Bind (or unbind) eventfd `efd` to `gsi`; with `resample_fd` the line is level-triggered."""
        request = s.KvmIrqfd(fd=efd, gsi=gsi)
        if deassign:
            request.flags |= s.KVM_IRQFD_FLAG_DEASSIGN
        if resample_fd is not None:
            request.flags |= s.KVM_IRQFD_FLAG_RESAMPLE
            request.resamplefd = resample_fd
        self.ioctl(
            ioctls.KVM_IRQFD, request, f"KVM_IRQFD fd {efd} gsi {gsi}{' deassign' if deassign else ''}"
        )

    def ioeventfd(
        self,
        efd: int,
        addr: int,
        length: int,
        pio: bool,
        datamatch: int | None = None,
        deassign: bool = False,
    ) -> None:
        """Signal `efd` when the guest writes `length` bytes at `addr` (PIO port or MMIO address)."""
        if length not in _IOEVENTFD_LENGTHS:
            raise ConfigError(f"ioeventfd at {addr:#x}: length {length} is not 0, 1, 2, 4 or 8")
        request = s.KvmIoeventfd(addr=addr, len=length, fd=efd)
        if pio:
            request.flags |= s.KVM_IOEVENTFD_FLAG_PIO
        if datamatch is not None:
            request.flags |= s.KVM_IOEVENTFD_FLAG_DATAMATCH
            request.datamatch = datamatch
        if deassign:
            request.flags |= s.KVM_IOEVENTFD_FLAG_DEASSIGN
        space = "port" if pio else "mmio"
        self.ioctl(ioctls.KVM_IOEVENTFD, request, f"KVM_IOEVENTFD {space} {addr:#x} len {length}")

    def create_vcpu(self, index: int) -> KvmVcpu:
        """Create vCPU `index` (its APIC ID) and map its kvm_run page."""
        vcpu_fd = self.ioctl(ioctls.KVM_CREATE_VCPU, index, f"KVM_CREATE_VCPU {index}")
        return KvmVcpu(vcpu_fd, index, self.vcpu_mmap_size, self.has_immediate_exit)

    def get_clock(self) -> s.KvmClockData:
        """Read the VM's kvmclock (KVM_GET_CLOCK)."""
        data = s.KvmClockData()
        self.ioctl(ioctls.KVM_GET_CLOCK, data, "KVM_GET_CLOCK")
        return data

    def set_clock(self, clock_ns: int) -> None:
        """Set the VM's kvmclock to `clock_ns` nanoseconds (KVM_SET_CLOCK)."""
        self.ioctl(ioctls.KVM_SET_CLOCK, s.KvmClockData(clock=clock_ns), "KVM_SET_CLOCK")
