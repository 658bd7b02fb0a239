"""A KVM vCPU: KVM_RUN, the shared kvm_run page, register state and kicking."""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
import threading
from collections.abc import Mapping, Sequence

from kvmkit.accel.kvm import ioctls
from kvmkit.accel.kvm import structs as s
from kvmkit.accel.kvm.fd import KvmFd
from kvmkit.accel.kvm.ioctls import ExitReason
from kvmkit.accel.kvm.kick import kick_thread
from kvmkit.errors import HostError

_KVM_RUN = ioctls.KVM_RUN
_EXIT_INTR = int(ExitReason.INTR)
_EXIT_REASON = struct.Struct("<I")
_EXIT_REASON_OFFSET = s.KvmRun.exit_reason.offset


class KvmVcpu(KvmFd):
    """One vCPU. `run()` is called from the vCPU's own thread; `kick()` from any thread."""

    def __init__(self, fd: int, index: int, mmap_size: int, has_immediate_exit: bool = True) -> None:
        super().__init__(fd, f"vcpu{index}")
        self.index = index
        self.has_immediate_exit = has_immediate_exit
        self._run_map = mmap.mmap(fd, mmap_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._run_page = memoryview(self._run_map)
        self.run_page = self._run_page  # the raw kvm_run mapping, for the exit path's struct.unpack_from
        self.kvm_run = s.KvmRun.from_buffer(self._run_map)
        self._thread_ident: int | None = None

    # --- running -------------------------------------------------------------------------

    def bind_to_current_thread(self) -> None:
        """Record the thread that calls run(), so kick() can signal it."""
        self._thread_ident = threading.get_ident()

    def run(self) -> int:
        """Enter the guest until the next exit; returns kvm_run.exit_reason (ExitReason.INTR when kicked)."""
        try:
            fcntl.ioctl(self.fd, _KVM_RUN, 0)
        except InterruptedError:
            self.kvm_run.immediate_exit = 0
            return _EXIT_INTR
        except BlockingIOError:
            # An AP waiting for INIT/SIPI was woken (by a SIPI or a kick): KVM asks us to just run it again.
            return _EXIT_INTR
        except OSError as error:
            raise HostError(f"{self.name}: KVM_RUN failed: {os.strerror(error.errno or 0)}") from error
        return _EXIT_REASON.unpack_from(self._run_page, _EXIT_REASON_OFFSET)[0]

    @property
    def immediate_exit(self) -> bool:
        """When set, the next KVM_RUN returns at once with EINTR (cleared by run() when it does)."""
        return bool(self.kvm_run.immediate_exit)

    @immediate_exit.setter
    def immediate_exit(self, value: bool) -> None:
        self.kvm_run.immediate_exit = 1 if value else 0

    def kick(self) -> None:
        """Make the bound thread leave KVM_RUN soon (if in it now) or right after entering it."""
        if self.has_immediate_exit:
            self.kvm_run.immediate_exit = 1
        if self._thread_ident is not None:
            kick_thread(self._thread_ident)

    def complete_pending_exit(self) -> None:
        """Let KVM finish the instruction of the last PIO/MMIO exit without running guest code.

        Call from the vCPU's thread after handling an exit and before reading state to save
        (pause for migration/snapshot): otherwise an IN's data would still sit in kvm_run.
        """
        if self.has_immediate_exit:
            self.kvm_run.immediate_exit = 1
            self.run()

    def mapped_page(self, index: int) -> memoryview:
        """Page `index` of the vCPU mapping (0 is kvm_run; KVM puts e.g. the coalesced-write ring after it)."""
        start = index * mmap.PAGESIZE
        if start + mmap.PAGESIZE > len(self._run_page):
            raise HostError(f"{self.name}: page {index} is outside the vCPU mapping")
        return self._run_page[start:start + mmap.PAGESIZE]

    def io_data(self) -> memoryview:
        """The PIO data bytes of the current KVM_EXIT_IO (size * count bytes, writable for IN)."""
        io = self.kvm_run.io
        start = io.data_offset
        end = start + io.size * io.count
        if end > len(self._run_page):
            raise HostError(
                f"{self.name}: KVM_EXIT_IO data at {start:#x}..{end:#x} is outside the kvm_run page"
            )
        return self._run_page[start:end]

    def mmio_data(self) -> memoryview:
        """The data bytes of the current KVM_EXIT_MMIO (len bytes, writable for reads)."""
        mmio = self.kvm_run.mmio
        start = s.KvmRun.exit.offset + s.KvmRunMmio.data.offset
        return self._run_page[start : start + min(mmio.len, 8)]

    # --- register state ------------------------------------------------------------------

    def get_regs(self) -> s.KvmRegs:
        regs = s.KvmRegs()
        self.ioctl(ioctls.KVM_GET_REGS, regs, "KVM_GET_REGS")
        return regs

    def set_regs(self, regs: s.KvmRegs) -> None:
        self.ioctl(ioctls.KVM_SET_REGS, regs, "KVM_SET_REGS")

    def get_sregs(self) -> s.KvmSregs:
        sregs = s.KvmSregs()
        self.ioctl(ioctls.KVM_GET_SREGS, sregs, "KVM_GET_SREGS")
        return sregs

    def set_sregs(self, sregs: s.KvmSregs) -> None:
        self.ioctl(ioctls.KVM_SET_SREGS, sregs, "KVM_SET_SREGS")

    def get_fpu(self) -> s.KvmFpu:
        fpu = s.KvmFpu()
        self.ioctl(ioctls.KVM_GET_FPU, fpu, "KVM_GET_FPU")
        return fpu

    def set_fpu(self, fpu: s.KvmFpu) -> None:
        self.ioctl(ioctls.KVM_SET_FPU, fpu, "KVM_SET_FPU")

    def get_msrs(self, indices: Sequence[int]) -> dict[int, int]:
        """Read the given MSRs; raises HostError naming the first one KVM refused."""
        table = s.msrs_with_entries(len(indices))()
        table.nmsrs = len(indices)
        for entry, index in zip(table.entries, indices, strict=True):
            entry.index = index
        done = self.ioctl(ioctls.KVM_GET_MSRS, table, "KVM_GET_MSRS")
        if done != len(indices):
            raise HostError(f"{self.name}: KVM_GET_MSRS cannot read MSR {indices[done]:#x}")
        return {entry.index: entry.data for entry in table.entries}

    def set_msrs(self, values: Mapping[int, int]) -> None:
        """Write the given MSRs; raises HostError naming the first one KVM refused."""
        items = list(values.items())
        table = s.msrs_with_entries(len(items))()
        table.nmsrs = len(items)
        for entry, (index, value) in zip(table.entries, items, strict=True):
            entry.index = index
            entry.data = value
        done = self.ioctl(ioctls.KVM_SET_MSRS, table, "KVM_SET_MSRS")
        if done != len(items):
            raise HostError(f"{self.name}: KVM_SET_MSRS refused MSR {items[done][0]:#x}")

    def set_cpuid2(self, entries: Sequence[s.KvmCpuidEntry2]) -> None:
        """Install the guest CPUID table (see cpuid.build_guest_cpuid)."""
        table = s.cpuid2_with_entries(len(entries))()
        table.nent = len(entries)
        for index, entry in enumerate(entries):
            table.entries[index] = entry
        self.ioctl(ioctls.KVM_SET_CPUID2, table, f"KVM_SET_CPUID2 ({len(entries)} entries)")

    def get_lapic(self) -> s.KvmLapicState:
        lapic = s.KvmLapicState()
        self.ioctl(ioctls.KVM_GET_LAPIC, lapic, "KVM_GET_LAPIC")
        return lapic

    def set_lapic(self, lapic: s.KvmLapicState) -> None:
        self.ioctl(ioctls.KVM_SET_LAPIC, lapic, "KVM_SET_LAPIC")

    def get_mp_state(self) -> int:
        state = s.KvmMpState()
        self.ioctl(ioctls.KVM_GET_MP_STATE, state, "KVM_GET_MP_STATE")
        return state.mp_state

    def set_mp_state(self, mp_state: int) -> None:
        self.ioctl(ioctls.KVM_SET_MP_STATE, s.KvmMpState(mp_state=mp_state), "KVM_SET_MP_STATE")

    def get_vcpu_events(self) -> s.KvmVcpuEvents:
        events = s.KvmVcpuEvents()
        self.ioctl(ioctls.KVM_GET_VCPU_EVENTS, events, "KVM_GET_VCPU_EVENTS")
        return events

    def set_vcpu_events(self, events: s.KvmVcpuEvents) -> None:
        self.ioctl(ioctls.KVM_SET_VCPU_EVENTS, events, "KVM_SET_VCPU_EVENTS")

    def close(self) -> None:
        """Unmap kvm_run and close the vCPU fd."""
        if self.fd < 0:
            return
        del self.kvm_run
        self._run_page.release()
        self._run_map.close()
        super().close()
