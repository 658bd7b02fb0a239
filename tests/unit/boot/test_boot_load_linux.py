import ctypes
import os

import pytest

from kvmkit.boot.cpu_state import CR4_PAE, EFER_LMA, EFER_LME
from kvmkit.boot.e820 import E820Type
from kvmkit.boot.gdt import BOOT_CS, BOOT_DS
from kvmkit.boot.layout import CMDLINE_ADDR, GDT_ADDR, MPTABLE_ADDR, PML4_ADDR, ZERO_PAGE_ADDR
from kvmkit.boot.linux import load_linux
from kvmkit.boot.setup_header import CAN_USE_HEAP, BootParams
from kvmkit.errors import BootError

MIB = 1 << 20
GIB = 1 << 30
PAYLOAD = b"PM-KERNEL" + bytes(1000)


@pytest.fixture
def setup(make_bzimage, fake_ram_factory, tmp_path):
    """Return a loader call with defaults: 256 MiB RAM, a small kernel and a 3-page initrd."""
    initrd = tmp_path / "initrd.img"
    initrd.write_bytes(b"INITRD" + bytes(3 * 4096))

    def run(
        regions=((0, 256 * MIB),), kernel_fields=None, initrd_path=initrd, cmdline="console=ttyS0", ncpus=2
    ):
        regions = list(regions)
        ram = fake_ram_factory(regions)
        kernel = make_bzimage(payload=PAYLOAD, **(kernel_fields or {}))
        state = load_linux(ram, regions, kernel, initrd_path, cmdline, ncpus)
        return ram, state

    return run


def _zero_page(ram) -> BootParams:
    return BootParams.from_buffer_copy(ram.view(ZERO_PAGE_ADDR, ctypes.sizeof(BootParams)))


def test_entry_state_starts_64bit_kernel_with_zero_page_in_rsi(setup):
    _, state = setup()
    assert state.rip == 0x100200
    assert state.rsi == ZERO_PAGE_ADDR
    assert state.cr3 == PML4_ADDR
    assert state.cr0 & 0x80000001 == 0x80000001
    assert state.cr4 & CR4_PAE
    assert state.efer == EFER_LME | EFER_LMA
    assert state.rflags == 0x2


def test_entry_state_uses_linux_boot_selectors(setup):
    _, state = setup()
    assert (state.code.selector, state.data.selector) == (BOOT_CS, BOOT_DS)
    assert state.code.l and not state.code.db
    assert state.gdt_base == GDT_ADDR


def test_stack_is_in_low_ram_clear_of_boot_structures(setup):
    _, state = setup()
    assert 0x8000 < state.rsp <= 0x9000
    assert state.rsp % 16 == 0


def test_protected_mode_kernel_is_copied_to_1mib(setup):
    ram, _ = setup()
    assert bytes(ram.view(0x100000, len(PAYLOAD))) == PAYLOAD


def test_zero_page_carries_loader_fields(setup):
    ram, _ = setup()
    hdr = _zero_page(ram).hdr
    assert hdr.type_of_loader == 0xFF
    assert hdr.loadflags & CAN_USE_HEAP
    assert hdr.heap_end_ptr != 0
    assert hdr.cmd_line_ptr == CMDLINE_ADDR


def test_zero_page_keeps_the_image_setup_header(setup):
    ram, _ = setup(kernel_fields={"version": 0x020E, "init_size": 0x456000})
    hdr = _zero_page(ram).hdr
    assert (hdr.header, hdr.version, hdr.init_size) == (0x53726448, 0x020E, 0x456000)


def test_zero_page_e820_matches_the_ram_layout(setup):
    ram, _ = setup(regions=((0, 3 * GIB), (4 * GIB, GIB)))
    params = _zero_page(ram)
    table = [(e.addr, e.size, e.type) for e in params.e820_table[: params.e820_entries]]
    assert table == [
        (0, 0x9FC00, E820Type.RAM),
        (0x9FC00, 0x400, E820Type.RESERVED),
        (0x100000, 3 * GIB - 0x100000, E820Type.RAM),
        (4 * GIB, GIB, E820Type.RAM),
    ]


def test_command_line_is_nul_terminated_at_cmd_line_ptr(setup):
    ram, _ = setup(cmdline="root=/dev/vda rw")
    assert bytes(ram.view(CMDLINE_ADDR, 17)) == b"root=/dev/vda rw\0"


def test_initrd_is_loaded_high_and_recorded_in_zero_page(setup):
    ram, _ = setup()
    hdr = _zero_page(ram).hdr
    assert hdr.ramdisk_size == 6 + 3 * 4096
    assert hdr.ramdisk_image % 4096 == 0
    assert hdr.ramdisk_image + hdr.ramdisk_size <= 256 * MIB
    assert hdr.ramdisk_image > 200 * MIB
    assert bytes(ram.view(hdr.ramdisk_image, 6)) == b"INITRD"


def test_initrd_respects_initrd_addr_max(setup):
    ram, _ = setup(regions=((0, 2 * GIB),), kernel_fields={"initrd_addr_max": 0x0FFFFFFF})
    hdr = _zero_page(ram).hdr
    assert hdr.ramdisk_image + hdr.ramdisk_size <= 0x10000000


def test_no_initrd_leaves_ramdisk_fields_zero(setup):
    ram, _ = setup(initrd_path=None)
    hdr = _zero_page(ram).hdr
    assert (hdr.ramdisk_image, hdr.ramdisk_size) == (0, 0)


def test_mp_table_is_written(setup):
    ram, _ = setup(ncpus=3)
    assert bytes(ram.view(MPTABLE_ADDR, 4)) == b"_MP_"


def test_ram_below_minimum_is_rejected(setup):
    with pytest.raises(BootError, match=r"16 MiB.*at least 32 MiB"):
        setup(regions=((0, 16 * MIB),))


def test_ram_not_covering_low_memory_is_rejected(setup):
    with pytest.raises(BootError, match="must cover 0x0-0xa0000"):
        setup(regions=((0x100000, 64 * MIB),))


def test_kernel_whose_init_size_exceeds_ram_is_rejected(setup):
    with pytest.raises(BootError, match=r"kernel .*does not fit.*init_size 0x8000000"):
        setup(regions=((0, 64 * MIB),), kernel_fields={"init_size": 128 * MIB})


def test_kernel_runs_at_pref_address_for_init_size(setup):
    # 48 MiB RAM: 16 MiB pref_address + 40 MiB init_size ends past the end of RAM.
    with pytest.raises(BootError, match="does not fit"):
        setup(regions=((0, 48 * MIB),), kernel_fields={"init_size": 40 * MIB})


def test_initrd_too_big_is_rejected_with_its_size(setup, tmp_path):
    big = tmp_path / "big.img"
    big.write_bytes(bytes(48 * MIB))
    with pytest.raises(BootError, match=r"initrd .*big\.img \(48 MiB\) does not fit below"):
        setup(regions=((0, 64 * MIB),), initrd_path=big)


def test_missing_initrd_is_rejected(setup, tmp_path):
    with pytest.raises(BootError, match=r"initrd .*absent\.img: cannot read"):
        setup(initrd_path=tmp_path / "absent.img")


def test_initrd_directory_is_rejected(setup, tmp_path):
    with pytest.raises(BootError, match="cannot read"):
        setup(initrd_path=tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read any file")
def test_unreadable_initrd_is_rejected(setup, tmp_path):
    locked = tmp_path / "locked.img"
    locked.write_bytes(b"x")
    locked.chmod(0)
    with pytest.raises(BootError, match="cannot read"):
        setup(initrd_path=locked)


def test_command_line_longer_than_cmdline_size_is_rejected(setup):
    with pytest.raises(BootError, match=r"command line is 101 bytes.*at most 100"):
        setup(cmdline="x" * 101, kernel_fields={"cmdline_size": 100})


def test_command_line_of_exactly_cmdline_size_is_accepted(setup):
    ram, _ = setup(cmdline="y" * 100, kernel_fields={"cmdline_size": 100})
    assert bytes(ram.view(CMDLINE_ADDR + 99, 2)) == b"y\0"


def test_too_many_vcpus_fail_before_anything_is_written(make_bzimage, fake_ram_factory):
    regions = [(0, 256 * MIB)]
    ram = fake_ram_factory(regions)
    with pytest.raises(BootError, match="500 vCPUs"):
        load_linux(ram, regions, make_bzimage(), None, "", 500)
    assert ram.pages == {}


def test_loads_into_pc_ram_layout_regions(setup):
    from kvmkit.memory.layout import pc_ram_layout

    regions = [(r.gpa, r.size) for r in pc_ram_layout(128 * MIB).ranges]
    ram, state = setup(regions=regions)
    assert state.rip == 0x100200
    assert _zero_page(ram).e820_entries == 3
