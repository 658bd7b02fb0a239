"""Hold one idle KVM VM open for the lab's whole life: `python -m kvmkit.lab.keeper` (the lab's job script starts it).

The lab's kernel (Linux 6.1) switches SVM on in every CPU when the first VM is created and off when the last one is
destroyed, each time with an IPI that every CPU must answer; and a vCPU's local APIC moves two kernel static keys,
which rewrites kernel code on all CPUs. Most failures of the lab machine seen so far came as a nested guest was
created or destroyed (a CPU soft-locked-up in `kvm_destroy_vm` waiting for the other CPU's answer, which sat in an
int3 handler; a reset and a silent hang as guests booted). With this VM alive (in-kernel irqchip, one vCPU that never
runs) the usage count never drops to zero and the keys stay put, so guests come and go without either. (Another
failure, a corrupted GS base inside a QEMU guest's KVM_RUN, is not of this kind.)
"""

from __future__ import annotations

import signal
import sys

from kvmkit.accel.kvm.kvm import Kvm
from kvmkit.errors import HostError


def main() -> int:
    try:
        kvm = Kvm()
        vm = kvm.create_vm()
        vm.create_irqchip()
        vcpu = vm.create_vcpu(0)
    except (HostError, OSError) as error:
        print(f"kvmkit lab keeper: no idle VM ({error}); guests will enable and disable KVM themselves",
              file=sys.stderr)
        return 1
    signal.pause()  # until the lab powers off (or a signal ends us)
    vcpu.close()
    vm.close()
    kvm.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
