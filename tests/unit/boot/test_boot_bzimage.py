import os

import pytest

from kvmkit.boot.bzimage import BzImage
from kvmkit.boot.setup_header import XLF_KERNEL_64
from kvmkit.errors import BootError


def test_parse_reads_header_fields(make_bzimage):
    image = BzImage.parse(
        make_bzimage(init_size=0x123000, initrd_addr_max=0x3FFFFFFF, cmdline_size=4095, version=0x020D)
    )
    assert (image.protocol_version, image.init_size, image.initrd_addr_max, image.cmdline_size) == (
        0x020D,
        0x123000,
        0x3FFFFFFF,
        4095,
    )
    assert image.relocatable_kernel is True
    assert image.kernel_alignment == 0x200000
    assert image.xloadflags & XLF_KERNEL_64
    assert image.protocol_text == "2.13"


def test_protected_mode_kernel_starts_after_setup_sectors(make_bzimage):
    image = BzImage.parse(make_bzimage(setup_sects=7, payload=b"PMCODE" + bytes(100)))
    assert image.protected_mode_offset == 8 * 512
    assert bytes(image.protected_mode_kernel[:6]) == b"PMCODE"


def test_zero_setup_sects_means_four(make_bzimage, bzimage_bytes, tmp_path):
    data = bytearray(bzimage_bytes(setup_sects=4, payload=b"X" * 64))
    data[0x1F1] = 0
    path = tmp_path / "k"
    path.write_bytes(bytes(data))
    assert BzImage.parse(path).protected_mode_offset == 5 * 512


def test_header_bytes_end_where_the_jump_says(bzimage_bytes, tmp_path):
    data = bytearray(bzimage_bytes())
    data[0x201] = 0x30  # header ends at 0x232
    path = tmp_path / "k"
    path.write_bytes(bytes(data))
    assert len(BzImage.parse(path).header_bytes) == 0x232 - 0x1F1


def test_missing_file_is_a_boot_error(tmp_path):
    with pytest.raises(BootError, match=r"nope.*no such file"):
        BzImage.parse(tmp_path / "nope")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read any file")
def test_unreadable_file_is_a_boot_error(make_bzimage):
    path = make_bzimage()
    path.chmod(0)
    with pytest.raises(BootError, match="cannot read"):
        BzImage.parse(path)


def test_directory_is_a_boot_error(tmp_path):
    with pytest.raises(BootError, match="cannot read"):
        BzImage.parse(tmp_path)


def test_file_shorter_than_header_is_truncated(bzimage_bytes, tmp_path):
    path = tmp_path / "short"
    path.write_bytes(bzimage_bytes()[:0x200])
    with pytest.raises(BootError, match=r"short: truncated"):
        BzImage.parse(path)


def test_payload_shorter_than_syssize_is_truncated(bzimage_bytes, tmp_path):
    path = tmp_path / "cut"
    path.write_bytes(bzimage_bytes(payload=bytes(8192))[:-4096])
    with pytest.raises(BootError, match="truncated"):
        BzImage.parse(path)


def test_missing_payload_is_truncated(bzimage_bytes, tmp_path):
    path = tmp_path / "nopayload"
    path.write_bytes(bzimage_bytes(setup_sects=4)[: 5 * 512])
    with pytest.raises(BootError, match="truncated"):
        BzImage.parse(path)


def test_missing_hdrs_magic_is_not_a_bzimage(make_bzimage):
    with pytest.raises(BootError, match=r"not a bzImage.*HdrS"):
        BzImage.parse(make_bzimage(header_magic=0x12345678))


def test_missing_boot_flag_is_not_a_bzimage(make_bzimage):
    with pytest.raises(BootError, match=r"not a bzImage.*boot flag"):
        BzImage.parse(make_bzimage(boot_flag=0))


def test_protocol_older_than_2_06_is_rejected(make_bzimage):
    with pytest.raises(BootError, match=r"protocol 2\.05 is too old"):
        BzImage.parse(make_bzimage(version=0x0205))


def test_kernel_without_64bit_entry_is_rejected(make_bzimage):
    with pytest.raises(BootError, match="no 64-bit entry"):
        BzImage.parse(make_bzimage(xloadflags=0))


def test_protocol_without_xloadflags_has_no_64bit_entry(make_bzimage):
    with pytest.raises(BootError, match="no 64-bit entry"):
        BzImage.parse(make_bzimage(version=0x020A))
