"""The boot CPU's register state at the kernel's 64-bit entry point, as plain data.

No KVM types here: the accelerator converts a BootCpuState into its own register structures.
All general-purpose registers not named here start at zero.
"""

from __future__ import annotations

from dataclasses import dataclass

# Control register and EFER bits used at 64-bit entry.
CR0_PE = 1 << 0
CR0_ET = 1 << 4
CR0_NE = 1 << 5
CR0_PG = 1 << 31
CR4_PAE = 1 << 5
EFER_LME = 1 << 8
EFER_LMA = 1 << 10
RFLAGS_RESERVED_ONE = 1 << 1
"""Bit 1 of RFLAGS always reads as one; IF stays clear (interrupts disabled at entry)."""

# Segment descriptor types (the 4-bit type field).
SEG_TYPE_DATA_RW_ACCESSED = 0x3
SEG_TYPE_CODE_XR_ACCESSED = 0xB
SEG_TYPE_TSS64_BUSY = 0xB


@dataclass(frozen=True)
class Segment:
    """A segment as a descriptor describes it.

    ``limit`` is the raw 20-bit descriptor limit field; with ``g`` set it counts 4 KiB units,
    so :attr:`effective_limit` (what KVM's segment registers take) is the byte limit.
    ``s`` is 1 for code/data and 0 for system segments such as the TSS.
    """

    base: int
    limit: int
    selector: int
    type: int
    present: bool = True
    dpl: int = 0
    db: bool = False
    s: bool = True
    l: bool = False  # noqa: E741 - the architectural name of the long-mode bit
    g: bool = False
    avl: bool = False

    @property
    def effective_limit(self) -> int:
        """The limit in bytes, expanded by the granularity bit."""
        return (self.limit << 12) | 0xFFF if self.g else self.limit


@dataclass(frozen=True)
class BootCpuState:
    """Registers of the bootstrap processor at the Linux 64-bit entry point.

    ``code`` loads CS; ``data`` loads DS, ES, FS, GS and SS; ``tss`` loads TR. The LDT is unused.
    """

    rip: int
    rsp: int
    rsi: int
    rflags: int
    cr0: int
    cr3: int
    cr4: int
    efer: int
    gdt_base: int
    gdt_limit: int
    idt_base: int
    idt_limit: int
    code: Segment
    data: Segment
    tss: Segment
