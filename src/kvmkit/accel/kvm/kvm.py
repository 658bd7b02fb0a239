"""The KVM system device, /dev/kvm."""

from __future__ import annotations

import errno
import os

from kvmkit.accel.kvm import ioctls
from kvmkit.accel.kvm.fd import KvmFd
from kvmkit.accel.kvm.ioctls import Cap
from kvmkit.accel.kvm.kick import install_kick_handler
from kvmkit.accel.kvm.structs import KvmCpuidEntry2, cpuid2_with_entries, msr_list_with_entries
from kvmkit.accel.kvm.vm import KvmVm
from kvmkit.errors import HostError

DEFAULT_KVM_PATH = "/dev/kvm"


class Kvm(KvmFd):
    """An open /dev/kvm: capability queries, supported CPUID, and VM creation."""

    def __init__(self, path: str = DEFAULT_KVM_PATH) -> None:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError as error:
            raise HostError(f"{path} does not exist: KVM is not available on this host") from error
        except PermissionError as error:
            raise HostError(f"{path}: permission denied (add the user to the kvm group)") from error
        except OSError as error:
            raise HostError(f"{path}: cannot open: {os.strerror(error.errno or 0)}") from error
        super().__init__(fd, path)
        self.api_version = self.ioctl(ioctls.KVM_GET_API_VERSION, 0, "KVM_GET_API_VERSION")
        if self.api_version != ioctls.KVM_API_VERSION:
            self.close()
            raise HostError(
                f"{path}: KVM API version {self.api_version} is not the supported {ioctls.KVM_API_VERSION}"
            )
        install_kick_handler()
        self._vcpu_mmap_size: int | None = None

    def check_extension(self, cap: Cap | int) -> int:
        """Return KVM_CHECK_EXTENSION for `cap` (0 when unsupported)."""
        return self.ioctl(ioctls.KVM_CHECK_EXTENSION, int(cap), f"KVM_CHECK_EXTENSION({int(cap)})")

    def require(self, cap: Cap, purpose: str) -> int:
        """Return the capability value, or raise HostError explaining what needs it."""
        value = self.check_extension(cap)
        if not value:
            raise HostError(f"{self.name}: the host KVM lacks KVM_CAP_{Cap(cap).name}, needed for {purpose}")
        return value

    @property
    def vcpu_mmap_size(self) -> int:
        """Size of the per-vCPU kvm_run mapping."""
        if self._vcpu_mmap_size is None:
            self._vcpu_mmap_size = self.ioctl(ioctls.KVM_GET_VCPU_MMAP_SIZE, 0, "KVM_GET_VCPU_MMAP_SIZE")
        return self._vcpu_mmap_size

    def supported_cpuid(self) -> list[KvmCpuidEntry2]:
        """The CPUID leaves KVM can expose to a guest (KVM_GET_SUPPORTED_CPUID)."""
        count = 64
        while True:
            table = cpuid2_with_entries(count)()
            table.nent = count
            try:
                self.raw_ioctl(ioctls.KVM_GET_SUPPORTED_CPUID, table)
            except OSError as error:
                if error.errno == errno.E2BIG and count < 4096:
                    count *= 2
                    continue
                raise HostError(f"{self.name}: KVM_GET_SUPPORTED_CPUID failed: {error.strerror}") from error
            return [KvmCpuidEntry2.from_buffer_copy(table.entries[i]) for i in range(table.nent)]

    def msr_index_list(self) -> list[int]:
        """The MSRs KVM saves and restores for a vCPU (KVM_GET_MSR_INDEX_LIST)."""
        count = 256
        while True:
            table = msr_list_with_entries(count)()
            table.nmsrs = count
            try:
                self.raw_ioctl(ioctls.KVM_GET_MSR_INDEX_LIST, table)
            except OSError as error:
                if error.errno == errno.E2BIG and count < 65536:
                    count *= 2
                    continue
                raise HostError(f"{self.name}: KVM_GET_MSR_INDEX_LIST failed: {error.strerror}") from error
            return list(table.indices[: table.nmsrs])

    def create_vm(self) -> KvmVm:
        """Create an empty VM (KVM_CREATE_VM, default machine type)."""
        vm_fd = self.ioctl(ioctls.KVM_CREATE_VM, 0, "KVM_CREATE_VM")
        return KvmVm(
            vm_fd, self.vcpu_mmap_size, immediate_exit=bool(self.check_extension(Cap.IMMEDIATE_EXIT))
        )
