"""Direct Linux boot: bzImage parsing, zero page, e820, MP table and the 64-bit entry state."""

from kvmkit.boot.bzimage import BzImage
from kvmkit.boot.cpu_state import BootCpuState, Segment
from kvmkit.boot.linux import load_linux

__all__ = ["BootCpuState", "BzImage", "Segment", "load_linux"]
