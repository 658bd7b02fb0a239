"""Parse a real distribution kernel if the lab has cached one; skipped otherwise."""

from pathlib import Path

import pytest

from kvmkit.boot.bzimage import BzImage
from kvmkit.boot.setup_header import XLF_KERNEL_64

CACHED_KERNELS = sorted((Path.home() / ".cache" / "kvmkit").glob("**/vmlinuz*"))


@pytest.mark.skipif(not CACHED_KERNELS, reason="no kernel cached under ~/.cache/kvmkit")
@pytest.mark.parametrize("path", CACHED_KERNELS, ids=str)
def test_cached_distribution_kernel_parses_as_64bit_bzimage(path):
    image = BzImage.parse(path)
    assert image.xloadflags & XLF_KERNEL_64
    assert image.protocol_version >= 0x020C
    assert image.init_size > len(image.protected_mode_kernel) // 2
    assert image.cmdline_size >= 255
