"""What a user asked for on the command line, validated, before anything is built."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

MIN_MEMORY = 32 << 20
MAX_CPUS = 255


@dataclass
class MachineConfig:
    """Everything `kvmkit run` was told; the builder turns it into a running machine."""

    memory: int = 128 << 20
    cpus: int = 1
    kernel: Path | None = None
    initrd: Path | None = None
    append: str = ""
    name: str | None = None
    serials: list[str] = field(default_factory=list)
    chardevs: list[str] = field(default_factory=list)
    monitors: list[str] = field(default_factory=list)
    qmp: list[str] = field(default_factory=list)
    drives: list[str] = field(default_factory=list)
    devices: list[str] = field(default_factory=list)
    netdevs: list[str] = field(default_factory=list)
    nographic: bool = False
    no_reboot: bool = False
    no_shutdown: bool = False
    start_paused: bool = False
    log_file: Path | None = None
    log_items: list[str] = field(default_factory=list)
    machine_type: str = "pc"
    kernel_cache: bool = True
    auto_kernel_cmdline: bool = True
    ram_backend: str = "anonymous"
    """Guest RAM: "anonymous" (huge pages) or "memfd" (shareable); -machine ram-backend."""
    """Append kernel parameters that describe the machine (see machine/kernel_cmdline.py); -machine option."""
    """Boot the bzImage's vmlinux from kvmkit's kernel cache (no in-guest decompression); -machine kernel-cache."""
