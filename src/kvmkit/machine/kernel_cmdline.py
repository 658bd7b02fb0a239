"""Kernel parameters that describe kvmkit's pc machine to Linux (`-machine pc,auto-kernel-cmdline=on`, the default).

kvmkit boots without firmware or ACPI, so Linux cannot learn some facts about the board and probes for them. Where a
probe is slow and kvmkit knows the answer, kvmkit says it on the command line, as QEMU's microvm appends its
virtio-mmio devices. A parameter the user already set (by name) is never overridden.

- `pci=noearly`: the board has no chipset that Linux's early PCI quirks look for. Without it, on an AMD family 0Fh
  CPU model (what nested hosts often report) Linux's AGP/GART aperture probe reads the vendor register of every
  slot on all 256 buses, twice: 16,384 configuration cycles before the console is up, a few seconds of exits in a
  nested lab. The normal PCI scan later is unaffected: virtio devices are found as before.
"""

from __future__ import annotations

MACHINE_PARAMETERS = (("pci", "noearly"),)


def machine_kernel_cmdline(user_cmdline: str) -> str:
    """The user's command line followed by the machine's parameters the user did not set themselves."""
    given = {word.split("=", 1)[0] for word in user_cmdline.split()}
    extra = [f"{name}={value}" for name, value in MACHINE_PARAMETERS if name not in given]
    return " ".join([user_cmdline.strip(), *extra]).strip()
