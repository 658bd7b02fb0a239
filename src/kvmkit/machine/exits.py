"""Dispatching a vCPU's KVM exits to the buses: the hottest path in the VMM, kept short on purpose.

Called by the vCPU thread with the BQL held. PIO and MMIO go to their IoBus; everything else is a
machine-level event (shutdown, reset, internal error) that the machine decides about.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable

from kvmkit.accel.kvm import structs
from kvmkit.accel.kvm.coalesced import CoalescedWrites
from kvmkit.accel.kvm.ioctls import ExitReason, SystemEvent
from kvmkit.accel.kvm.vcpu import KvmVcpu
from kvmkit.memory.address_space import IoBus

log = logging.getLogger(__name__)

EXIT_IO = int(ExitReason.IO)
EXIT_MMIO = int(ExitReason.MMIO)
EXIT_HLT = int(ExitReason.HLT)
EXIT_SHUTDOWN = int(ExitReason.SHUTDOWN)
EXIT_SYSTEM_EVENT = int(ExitReason.SYSTEM_EVENT)
EXIT_IRQ_WINDOW_OPEN = int(ExitReason.IRQ_WINDOW_OPEN)
IO_DIRECTION_OUT = 1

# kvm_run is read with struct.unpack_from on the raw page: one call per exit instead of a ctypes object per field.
_EXIT_REASON = struct.Struct("<I")
_EXIT_REASON_OFFSET = structs.KvmRun.exit_reason.offset
_EXIT_OFFSET = structs.KvmRun.exit.offset
_IO = struct.Struct("<BBHIQ")  # kvm_run.io: direction, size, port, count, data_offset
_MMIO = struct.Struct("<Q8sIB")  # kvm_run.mmio: phys_addr, data, len, is_write
_MMIO_DATA_OFFSET = _EXIT_OFFSET + structs.KvmRunMmio.data.offset


class ExitDispatcher:
    """Turns kvm_run exits into bus accesses and machine events; returns False to stop the vCPU."""

    def __init__(self, pio: IoBus, mmio: IoBus, on_guest_reset: Callable[[str], None],
                 on_guest_shutdown: Callable[[str], None], on_fatal: Callable[[KvmVcpu, str], None]) -> None:
        self.pio = pio
        self.mmio = mmio
        self.on_guest_reset = on_guest_reset
        self.on_guest_shutdown = on_guest_shutdown
        self.on_fatal = on_fatal
        self.exit_counts: dict[int, int] = {}
        self.coalesced: CoalescedWrites | None = None

    def __call__(self, vcpu: KvmVcpu) -> bool:
        coalesced = self.coalesced
        if coalesced is not None and coalesced.pending():
            coalesced.replay(self.pio.write, self.mmio.write)
        page = vcpu.run_page
        reason = _EXIT_REASON.unpack_from(page, _EXIT_REASON_OFFSET)[0]
        if reason == EXIT_IO:
            direction, size, port, count, start = _IO.unpack_from(page, _EXIT_OFFSET)
            end = start + size * count
            if end > len(page) or not size:
                self.on_fatal(vcpu, f"vCPU {vcpu.index}: KVM_EXIT_IO data at {start:#x}..{end:#x} is outside "
                                    "the kvm_run page")
                return False
            if count == 1:  # the common case: one IN or OUT
                if direction == IO_DIRECTION_OUT:
                    self.pio.write(port, size, int.from_bytes(page[start:end], "little"))
                else:
                    page[start:end] = self.pio.read(port, size).to_bytes(size, "little")
                return True
            if direction == IO_DIRECTION_OUT:  # string I/O (REP OUTS/INS): one access per element
                write = self.pio.write
                for offset in range(start, end, size):
                    write(port, size, int.from_bytes(page[offset:offset + size], "little"))
            else:
                read = self.pio.read
                for offset in range(start, end, size):
                    page[offset:offset + size] = read(port, size).to_bytes(size, "little")
            return True
        if reason == EXIT_MMIO:
            address, data, length, is_write = _MMIO.unpack_from(page, _EXIT_OFFSET)
            length = min(length, 8)
            if is_write:
                self.mmio.write(address, length, int.from_bytes(data[:length], "little"))
            else:
                page[_MMIO_DATA_OFFSET:_MMIO_DATA_OFFSET + length] = \
                    self.mmio.read(address, length).to_bytes(length, "little")
            return True
        return self._rare_exit(vcpu, reason)

    def _rare_exit(self, vcpu: KvmVcpu, reason: int) -> bool:
        self.exit_counts[reason] = self.exit_counts.get(reason, 0) + 1
        if reason in (EXIT_HLT, EXIT_IRQ_WINDOW_OPEN):
            return True
        if reason == EXIT_SHUTDOWN:
            regs = vcpu.get_regs()
            self.on_fatal(vcpu, f"vCPU {vcpu.index} triple-faulted (KVM_EXIT_SHUTDOWN) at rip={regs.rip:#x}")
            return False
        if reason == EXIT_SYSTEM_EVENT:
            event = vcpu.kvm_run.system_event.type
            if event == SystemEvent.RESET:
                self.on_guest_reset("guest-reset")
            else:
                self.on_guest_shutdown("guest-shutdown")
            return True
        try:
            name = ExitReason(reason).name
        except ValueError:
            name = str(reason)
        detail = ""
        if reason == ExitReason.INTERNAL_ERROR:
            internal = vcpu.kvm_run.internal
            detail = f" (suberror {internal.suberror})"
        elif reason == ExitReason.FAIL_ENTRY:
            detail = f" (hardware reason {vcpu.kvm_run.fail_entry.hardware_entry_failure_reason:#x})"
        try:
            rip = f" at rip={vcpu.get_regs().rip:#x}"
        except Exception:
            rip = ""
        self.on_fatal(vcpu, f"vCPU {vcpu.index}: KVM exit {name}{detail}{rip}")
        return False
