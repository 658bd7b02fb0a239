"""`kvmkit host-check`: can this host's KVM boot unmodified guests, and if not, what to do instead."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

KVM_DEVICE = Path("/dev/kvm")


@dataclass(frozen=True)
class HostVerdict:
    """Whether the host can boot unmodified guests, and one or two sentences saying why."""

    can_boot: bool
    message: str


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def check_host() -> HostVerdict:
    """Look at /dev/kvm, its permissions, the KVM flavour (PVM or hardware) and the CPU's virtualisation flags."""
    lab_hint = "Run guests inside the lab instead: `kvmkit lab -- kvmkit run ...` (or `make demo`)."
    if not KVM_DEVICE.exists():
        return HostVerdict(False, f"This host has no {KVM_DEVICE}, so kvmkit cannot run guests on it. {lab_hint}")
    if not os.access(KVM_DEVICE, os.R_OK | os.W_OK):
        return HostVerdict(False, f"{KVM_DEVICE} exists but this user cannot open it read-write; "
                                  "add the user to the 'kvm' group or run as root.")
    if Path("/sys/module/kvm_pvm").exists():
        return HostVerdict(False, "This host's /dev/kvm is PVM (kvm_pvm), which runs only PVM-built kernels, "
                                  f"so it cannot boot unmodified Linux guests. {lab_hint}")
    flags = cpu_flags()
    if not flags & {"vmx", "svm"}:
        return HostVerdict(False, "This host's CPU shows neither VT-x (vmx) nor AMD-V (svm), so its /dev/kvm "
                                  f"cannot run unmodified guests. {lab_hint}")
    kind = "AMD-V" if "svm" in flags else "VT-x"
    return HostVerdict(True, f"This host can boot unmodified guests: {KVM_DEVICE} is hardware KVM ({kind}) "
                             "and this user can open it.")
