from kvmkit.boot.layout import PD_ADDR, PDPT_ADDR, PML4_ADDR
from kvmkit.boot.page_tables import PageFlag, build_identity_page_tables, write_identity_page_tables

GIB = 1 << 30
MIB = 1 << 20


def _tables():
    return dict(build_identity_page_tables())


def test_tables_sit_at_the_layout_addresses():
    assert sorted(_tables()) == [
        PML4_ADDR,
        PDPT_ADDR,
        PD_ADDR,
        PD_ADDR + 0x1000,
        PD_ADDR + 0x2000,
        PD_ADDR + 0x3000,
    ]


def test_pml4_has_a_single_entry_pointing_at_the_pdpt():
    entries = list(_tables()[PML4_ADDR].entries)
    assert entries[0] == PDPT_ADDR | PageFlag.PRESENT | PageFlag.WRITABLE
    assert not any(entries[1:])


def test_pdpt_points_at_four_page_directories():
    entries = list(_tables()[PDPT_ADDR].entries)
    assert entries[:4] == [(PD_ADDR + i * 0x1000) | 0x3 for i in range(4)]
    assert not any(entries[4:])


def test_pd_entries_identity_map_2mib_pages():
    tables = _tables()
    flags = PageFlag.PRESENT | PageFlag.WRITABLE | PageFlag.PAGE_SIZE
    assert tables[PD_ADDR].entries[0] == flags
    assert tables[PD_ADDR].entries[1] == 2 * MIB | flags
    assert tables[PD_ADDR + 0x3000].entries[511] == (4 * GIB - 2 * MIB) | flags


def test_every_2mib_page_below_4g_is_mapped_exactly_once():
    tables = _tables()
    mapped = [tables[PD_ADDR + i * 0x1000].entries[j] & ~0xFFF for i in range(4) for j in range(512)]
    assert mapped == [n * 2 * MIB for n in range(2048)]


def test_write_returns_cr3_and_stores_pml4(fake_ram_factory):
    ram = fake_ram_factory([(0, 1 * MIB)])
    assert write_identity_page_tables(ram) == PML4_ADDR
    assert int.from_bytes(ram.view(PML4_ADDR, 8), "little") == PDPT_ADDR | 0x3
