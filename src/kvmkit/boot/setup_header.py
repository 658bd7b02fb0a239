"""The Linux x86 boot protocol's setup header and ``boot_params`` ("zero page") as declared data.

Offsets follow Documentation/arch/x86/boot.rst and zero-page.rst. Every structure is packed and
little-endian; the tests assert the documented offsets and sizes against these declarations.
"""

from __future__ import annotations

import ctypes

SETUP_HEADER_OFFSET = 0x1F1
"""File (and zero page) offset of the setup header."""

BOOT_FLAG_MAGIC = 0xAA55
HEADER_MAGIC = 0x53726448  # "HdrS" read as a little-endian u32

# loadflags bits
LOADED_HIGH = 1 << 0
KASLR_FLAG = 1 << 1
QUIET_FLAG = 1 << 5
KEEP_SEGMENTS = 1 << 6
CAN_USE_HEAP = 1 << 7

# xloadflags bits (protocol 2.12+)
XLF_KERNEL_64 = 1 << 0
XLF_CAN_BE_LOADED_ABOVE_4G = 1 << 1
XLF_EFI_HANDOVER_32 = 1 << 2
XLF_EFI_HANDOVER_64 = 1 << 3
XLF_EFI_KEXEC = 1 << 4

LOADER_TYPE_UNDEFINED = 0xFF
"""type_of_loader value for a boot loader without an assigned ID."""

E820_MAX_ENTRIES_ZEROPAGE = 128
BOOT_PARAMS_SIZE = 4096


class SetupHeader(ctypes.LittleEndianStructure):
    """The setup header found at 0x1F1 of a bzImage and copied into ``boot_params.hdr``."""

    _pack_ = 1
    _fields_ = [
        ("setup_sects", ctypes.c_uint8),  # 0x1F1
        ("root_flags", ctypes.c_uint16),  # 0x1F2
        ("syssize", ctypes.c_uint32),  # 0x1F4
        ("ram_size", ctypes.c_uint16),  # 0x1F8
        ("vid_mode", ctypes.c_uint16),  # 0x1FA
        ("root_dev", ctypes.c_uint16),  # 0x1FC
        ("boot_flag", ctypes.c_uint16),  # 0x1FE
        ("jump", ctypes.c_uint16),  # 0x200
        ("header", ctypes.c_uint32),  # 0x202
        ("version", ctypes.c_uint16),  # 0x206
        ("realmode_swtch", ctypes.c_uint32),  # 0x208
        ("start_sys_seg", ctypes.c_uint16),  # 0x20C
        ("kernel_version", ctypes.c_uint16),  # 0x20E
        ("type_of_loader", ctypes.c_uint8),  # 0x210
        ("loadflags", ctypes.c_uint8),  # 0x211
        ("setup_move_size", ctypes.c_uint16),  # 0x212
        ("code32_start", ctypes.c_uint32),  # 0x214
        ("ramdisk_image", ctypes.c_uint32),  # 0x218
        ("ramdisk_size", ctypes.c_uint32),  # 0x21C
        ("bootsect_kludge", ctypes.c_uint32),  # 0x220
        ("heap_end_ptr", ctypes.c_uint16),  # 0x224
        ("ext_loader_ver", ctypes.c_uint8),  # 0x226
        ("ext_loader_type", ctypes.c_uint8),  # 0x227
        ("cmd_line_ptr", ctypes.c_uint32),  # 0x228
        ("initrd_addr_max", ctypes.c_uint32),  # 0x22C
        ("kernel_alignment", ctypes.c_uint32),  # 0x230
        ("relocatable_kernel", ctypes.c_uint8),  # 0x234
        ("min_alignment", ctypes.c_uint8),  # 0x235
        ("xloadflags", ctypes.c_uint16),  # 0x236
        ("cmdline_size", ctypes.c_uint32),  # 0x238
        ("hardware_subarch", ctypes.c_uint32),  # 0x23C
        ("hardware_subarch_data", ctypes.c_uint64),  # 0x240
        ("payload_offset", ctypes.c_uint32),  # 0x248
        ("payload_length", ctypes.c_uint32),  # 0x24C
        ("setup_data", ctypes.c_uint64),  # 0x250
        ("pref_address", ctypes.c_uint64),  # 0x258
        ("init_size", ctypes.c_uint32),  # 0x260
        ("handover_offset", ctypes.c_uint32),  # 0x264
        ("kernel_info_offset", ctypes.c_uint32),  # 0x268
    ]


SETUP_HEADER_END = SETUP_HEADER_OFFSET + ctypes.sizeof(SetupHeader)
"""First byte after the newest setup header we know (0x26C)."""


class BootE820Entry(ctypes.LittleEndianStructure):
    """One e820 memory map entry as the zero page stores it (20 bytes)."""

    _pack_ = 1
    _fields_ = [
        ("addr", ctypes.c_uint64),
        ("size", ctypes.c_uint64),
        ("type", ctypes.c_uint32),
    ]


class BootParams(ctypes.LittleEndianStructure):
    """``struct boot_params``, the 4096-byte zero page handed to the kernel in RSI.

    Only the fields a direct-boot loader fills are named; the rest are opaque byte arrays
    kept at their documented offsets.
    """

    _pack_ = 1
    _fields_ = [
        ("screen_info", ctypes.c_uint8 * 0x40),  # 0x000
        ("apm_bios_info", ctypes.c_uint8 * 0x14),  # 0x040
        ("_pad2", ctypes.c_uint8 * 4),  # 0x054
        ("tboot_addr", ctypes.c_uint64),  # 0x058
        ("ist_info", ctypes.c_uint8 * 0x10),  # 0x060
        ("acpi_rsdp_addr", ctypes.c_uint64),  # 0x070
        ("_pad3", ctypes.c_uint8 * 8),  # 0x078
        ("hd0_info", ctypes.c_uint8 * 0x10),  # 0x080
        ("hd1_info", ctypes.c_uint8 * 0x10),  # 0x090
        ("sys_desc_table", ctypes.c_uint8 * 0x10),  # 0x0A0
        ("olpc_ofw_header", ctypes.c_uint8 * 0x10),  # 0x0B0
        ("ext_ramdisk_image", ctypes.c_uint32),  # 0x0C0
        ("ext_ramdisk_size", ctypes.c_uint32),  # 0x0C4
        ("ext_cmd_line_ptr", ctypes.c_uint32),  # 0x0C8
        ("_pad4", ctypes.c_uint8 * 112),  # 0x0CC
        ("cc_blob_address", ctypes.c_uint32),  # 0x13C
        ("edid_info", ctypes.c_uint8 * 0x80),  # 0x140
        ("efi_info", ctypes.c_uint8 * 0x20),  # 0x1C0
        ("alt_mem_k", ctypes.c_uint32),  # 0x1E0
        ("scratch", ctypes.c_uint32),  # 0x1E4
        ("e820_entries", ctypes.c_uint8),  # 0x1E8
        ("eddbuf_entries", ctypes.c_uint8),  # 0x1E9
        ("edd_mbr_sig_buf_entries", ctypes.c_uint8),  # 0x1EA
        ("kbd_status", ctypes.c_uint8),  # 0x1EB
        ("secure_boot", ctypes.c_uint8),  # 0x1EC
        ("_pad5", ctypes.c_uint8 * 2),  # 0x1ED
        ("sentinel", ctypes.c_uint8),  # 0x1EF
        ("_pad6", ctypes.c_uint8 * 1),  # 0x1F0
        ("hdr", SetupHeader),  # 0x1F1
        ("_pad7", ctypes.c_uint8 * (0x290 - SETUP_HEADER_END)),  # 0x26C
        ("edd_mbr_sig_buffer", ctypes.c_uint32 * 16),  # 0x290
        ("e820_table", BootE820Entry * E820_MAX_ENTRIES_ZEROPAGE),  # 0x2D0
        ("_pad8", ctypes.c_uint8 * 48),  # 0xCD0
        ("eddbuf", ctypes.c_uint8 * (6 * 82)),  # 0xD00
        ("_pad9", ctypes.c_uint8 * 276),  # 0xEEC
    ]


assert ctypes.sizeof(BootParams) == BOOT_PARAMS_SIZE
