"""Where direct Linux boot puts things in guest-physical memory (all below 1 MiB except the kernel).

=============  ========  ==========  ================================================
What           Start     Size        Notes
=============  ========  ==========  ================================================
GDT            0x0500    0x30        null, null, code 0x10, data 0x18, TSS 0x20 (16 B)
IDT            0x0540    0x10        one empty gate; interrupts stay disabled
TSS            0x0580    0x68        64-bit TSS, all zero
Zero page      0x7000    0x1000      struct boot_params, address passed in RSI
Boot stack     0x8000    0x1000      RSP starts at 0x8FF0, grows down
PML4           0x9000    0x1000      one entry -> PDPT
PDPT           0xA000    0x1000      four entries -> the four PDs
PD[0..3]       0xB000    0x4000      2 MiB pages identity-mapping 0-4 GiB
Command line   0x20000   0x10000     NUL-terminated, at most cmdline_size bytes
MP table       0x9FC00   0x400       floating pointer + configuration table (e820 reserved)
Kernel         0x100000  init_size   protected-mode kernel, entry at +0x200
Initrd         high      page-aligned, as high as allowed below 4 GiB
=============  ========  ==========  ================================================
"""

from __future__ import annotations

GDT_ADDR = 0x0500
IDT_ADDR = 0x0540
IDT_SIZE = 0x10
TSS_ADDR = 0x0580
TSS_SIZE = 0x68
ZERO_PAGE_ADDR = 0x7000
BOOT_STACK_ADDR = 0x8000
BOOT_STACK_SIZE = 0x1000
BOOT_STACK_POINTER = BOOT_STACK_ADDR + BOOT_STACK_SIZE - 0x10
PML4_ADDR = 0x9000
PDPT_ADDR = 0xA000
PD_ADDR = 0xB000
PD_COUNT = 4
PAGE_TABLES_END = PD_ADDR + PD_COUNT * 0x1000
CMDLINE_ADDR = 0x20000
CMDLINE_MAX = 0x10000
"""Space reserved for the command line, NUL included."""
MPTABLE_ADDR = 0x9FC00
MPTABLE_SIZE = 0x400
KERNEL_LOAD_ADDR = 0x100000
KERNEL_64BIT_ENTRY_OFFSET = 0x200
PAGE_SIZE = 0x1000
