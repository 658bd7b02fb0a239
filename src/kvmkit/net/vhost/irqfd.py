"""vhost "call" eventfds as KVM irqfds: the kernel injects a queue's MSI-X interrupt without waking kvmkit.

As in QEMU, each data queue's call eventfd is bound with KVM_IRQFD to a GSI whose route (KVM_SET_GSI_ROUTING, an
MSI entry) is the MSI-X message of the queue's vector. While that vector cannot fire (masked, function-masked,
MSI-X disabled, no vector assigned) the irqfd is unbound and the main loop reads the eventfd instead, through the
transport: a masked vector gets its pending bit, INTx raises the line. Unmasking binds the irqfd again (KVM
injects a signal that arrived meanwhile at once) and the MSI-X code delivers what was pending.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any, Protocol

from kvmkit.accel.kvm.vm import IrqRoute, MsiRoute
from kvmkit.errors import HostError

log = logging.getLogger(__name__)

FIRST_MSI_GSI = 24  # GSIs 0-23 are the IOAPIC pins (and the PIC's ISA IRQs)
MAX_GSI = 4096  # KVM_MAX_IRQ_ROUTES


class IrqfdVm(Protocol):
    """The part of kvmkit.accel.kvm.vm.KvmVm used here."""

    def set_gsi_routing(self, entries: Sequence[IrqRoute]) -> None: ...

    def irqfd(self, efd: int, gsi: int, resample_fd: int | None = None, deassign: bool = False) -> None: ...


class GsiRoutes:
    """The VM's GSI routing table: the board's fixed routes plus MSI routes handed out from FIRST_MSI_GSI."""

    def __init__(self, vm: IrqfdVm, base: Sequence[IrqRoute]) -> None:
        self.vm = vm
        self.base = list(base)
        self.msi: dict[int, tuple[int, int]] = {}
        self._free: list[int] = []
        self._next = FIRST_MSI_GSI

    def allocate(self) -> int:
        if self._free:
            return self._free.pop()
        if self._next >= MAX_GSI:
            raise RuntimeError("no free GSI for an MSI route")
        self._next += 1
        return self._next - 1

    def set_msi(self, gsi: int, address: int, data: int) -> None:
        """Route `gsi` to an MSI message (the whole table is committed only when something changed)."""
        if self.msi.get(gsi) != (address, data):
            self.msi[gsi] = (address, data)
            self._commit()

    def release(self, gsi: int) -> None:
        if self.msi.pop(gsi, None) is not None:
            self._commit()
        self._free.append(gsi)

    def _commit(self) -> None:
        routes = [MsiRoute(gsi, address, data) for gsi, (address, data) in sorted(self.msi.items())]
        self.vm.set_gsi_routing([*self.base, *routes])


class QueueNotifier:
    """One queue's call eventfd: an irqfd on the route of its MSI-X vector while that vector can fire, otherwise
    read on the main loop and turned into `transport.queue_interrupt` (pending bit or INTx)."""

    def __init__(self, efd: int, index: int, transport: Any, loop: Any, vm: IrqfdVm | None,
                 routes: GsiRoutes | None) -> None:
        self.efd = efd
        self.index = index
        self.transport = transport
        self.loop = loop
        self.vm = vm
        self.routes = routes
        self.gsi: int | None = None
        self.bound = False  # KVM injects from the eventfd
        self.reading = False  # the main loop reads the eventfd
        self.irqfd_usable = True

    def _direct_message(self) -> tuple[int, int] | None:
        """The MSI message the irqfd should send, or None when the vector cannot fire now."""
        if self.vm is None or self.routes is None or not self.irqfd_usable:
            return None
        msix = getattr(self.transport, "msix", None)
        if msix is None or not msix.enabled:
            return None
        vector = self.transport.device.queues[self.index].msix_vector
        if not 0 <= vector < msix.vectors or msix.vector_masked(vector):
            return None
        return msix.message(vector)

    def update(self) -> None:
        """Re-evaluate after a change of MSI-X enable, mask, address/data or the queue's vector."""
        message = self._direct_message()
        if message is not None:
            try:
                self._bind(*message)
                return
            except (HostError, RuntimeError) as error:  # no irqfd support, GSIs exhausted: stay in userspace
                log.warning("vhost queue %d: interrupts go through the main loop: %s", self.index, error)
                self.irqfd_usable = False
        if self.bound:
            assert self.vm is not None and self.gsi is not None
            self.vm.irqfd(self.efd, self.gsi, deassign=True)
            self.bound = False
        if not self.reading:
            self.loop.add_reader(self.efd, self._signalled)  # a count left in the eventfd wakes the loop
            self.reading = True

    def _bind(self, address: int, data: int) -> None:
        assert self.vm is not None and self.routes is not None
        if self.gsi is None:
            self.gsi = self.routes.allocate()
        self.routes.set_msi(self.gsi, address, data)
        if not self.bound:
            self.vm.irqfd(self.efd, self.gsi)  # a count already in the eventfd is injected at once
            self.bound = True
        if self.reading:
            self.loop.remove_reader(self.efd)
            self.reading = False

    def _signalled(self) -> None:
        try:
            os.eventfd_read(self.efd)
        except BlockingIOError:
            return
        self.transport.queue_interrupt(self.index)

    def stop(self) -> None:
        if self.bound and self.vm is not None and self.gsi is not None:
            self.vm.irqfd(self.efd, self.gsi, deassign=True)
        self.bound = False
        if self.reading:
            self.loop.remove_reader(self.efd)
            self.reading = False
        if self.gsi is not None and self.routes is not None:
            self.routes.release(self.gsi)
        self.gsi = None
