"""vhost call eventfds as irqfds: MSI routes per vector, fallback to the main loop while masked or without MSI-X."""

from __future__ import annotations

import os
import socket

import pytest

from harness.net_rig import MAC, FakeLoop
from harness.qtest import QtestMachine, VirtioPciDriver
from kvmkit.accel.kvm.vm import IrqchipRoute, MsiRoute
from kvmkit.errors import HostError
from kvmkit.hw.pci.msix import ENTRY_SIZE
from kvmkit.hw.virtio.net import VirtioNet
from kvmkit.hw.virtio.pci_transport import VirtioPciTransport
from kvmkit.net.sockets import StreamBackend
from kvmkit.net.vhost.irqfd import FIRST_MSI_GSI, GsiRoutes, QueueNotifier

BASE_ROUTES = [IrqchipRoute(4, 2, 4)]


class FakeVm:
    def __init__(self) -> None:
        self.tables: list[list[object]] = []
        self.irqfds: dict[int, int] = {}  # efd -> gsi

    def set_gsi_routing(self, entries) -> None:  # type: ignore[no-untyped-def]
        self.tables.append(list(entries))

    def irqfd(self, efd: int, gsi: int, resample_fd: int | None = None, deassign: bool = False) -> None:
        if deassign:
            assert self.irqfds.pop(efd) == gsi
        else:
            assert efd not in self.irqfds
            self.irqfds[efd] = gsi


class Setup:
    def __init__(self, msix: bool = True) -> None:
        self.machine = QtestMachine(ram_size=32 << 20)
        self.loop = FakeLoop()
        ours, self.peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.device = VirtioNet("net0", self.machine.dma, StreamBackend("n0", sock=ours), MAC, self.loop)
        self.transport = VirtioPciTransport(self.device, self.machine.msi)
        self.devfn = self.machine.plug(self.transport)
        self.driver = VirtioPciDriver(self.machine, self.devfn)
        self.driver.initialize(queues=3, msix=msix)
        self.vm = FakeVm()
        self.routes = GsiRoutes(self.vm, BASE_ROUTES)
        self.efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.notifier = QueueNotifier(self.efd, 0, self.transport, self.loop, self.vm, self.routes)
        self.transport.msix.add_vector_listener(lambda *_: self.notifier.update())

    def table_entry(self, vector: int) -> int:
        assert self.driver.msix_cap is not None
        table = self.machine.cfg_read(self.devfn, self.driver.msix_cap + 4, 4)
        return self.driver.bar_addresses[table & 7] + (table & ~7) + ENTRY_SIZE * vector

    def set_masked(self, vector: int, masked: bool) -> None:
        self.machine.mmio.write(self.table_entry(vector) + 12, 4, int(masked))

    def close(self) -> None:
        self.notifier.stop()
        os.close(self.efd)


@pytest.fixture
def setup():
    made = Setup()
    yield made
    made.close()


def test_an_unmasked_vector_gets_an_msi_route_and_an_irqfd_not_a_main_loop_reader(setup):
    setup.notifier.update()
    vector = setup.device.queues[0].msix_vector
    gsi = setup.vm.irqfds[setup.efd]
    assert gsi == FIRST_MSI_GSI and setup.efd not in setup.loop.readers
    assert setup.vm.tables[-1] == [*BASE_ROUTES, MsiRoute(gsi, 0xFEE0_0000, 0x40 + vector)]


def test_masking_falls_back_to_the_pending_bit_and_unmasking_delivers_it(setup):
    setup.notifier.update()
    vector = setup.device.queues[0].msix_vector
    setup.set_masked(vector, True)
    assert setup.efd not in setup.vm.irqfds and setup.efd in setup.loop.readers
    os.eventfd_write(setup.efd, 1)  # vhost signals while the vector is masked
    setup.loop.pump()
    assert setup.transport.msix.is_pending(vector) and setup.machine.msi.messages == []
    setup.set_masked(vector, False)
    assert setup.vm.irqfds[setup.efd] == FIRST_MSI_GSI and setup.efd not in setup.loop.readers
    assert setup.machine.msi.messages == [(0xFEE0_0000, 0x40 + vector)]
    assert not setup.transport.msix.is_pending(vector)


def test_a_new_message_updates_the_route_without_rebinding(setup):
    setup.notifier.update()
    vector = setup.device.queues[0].msix_vector
    tables = len(setup.vm.tables)
    setup.machine.mmio.write(setup.table_entry(vector) + 8, 4, 0x77)
    assert setup.vm.irqfds[setup.efd] == FIRST_MSI_GSI
    assert setup.vm.tables[-1][-1] == MsiRoute(FIRST_MSI_GSI, 0xFEE0_0000, 0x77)
    setup.machine.mmio.write(setup.table_entry(vector + 1) + 8, 4, 0x99)  # another vector: no commit
    assert len(setup.vm.tables) == tables + 1


def test_without_msix_the_main_loop_raises_intx():
    made = Setup(msix=False)
    try:
        made.notifier.update()
        assert made.vm.irqfds == {} and made.efd in made.loop.readers
        os.eventfd_write(made.efd, 1)
        made.loop.pump()
        assert made.transport.isr & 1 and any(line.level for line in made.machine.irq_lines.values())
    finally:
        made.close()


def test_stop_unbinds_and_frees_the_gsi_for_reuse(setup):
    setup.notifier.update()
    setup.notifier.stop()
    assert setup.vm.irqfds == {} and setup.routes.msi == {} and setup.vm.tables[-1] == BASE_ROUTES
    assert setup.routes.allocate() == FIRST_MSI_GSI


def test_a_kernel_without_irqfd_leaves_the_queue_on_the_main_loop(setup):
    def refuse(*_args, **_kwargs):  # type: ignore[no-untyped-def]
        raise HostError("kvm-vm: KVM_IRQFD failed: Invalid argument")

    setup.vm.irqfd = refuse
    setup.notifier.update()
    assert setup.efd in setup.loop.readers and not setup.notifier.bound
    setup.notifier.update()  # later MSI-X changes do not retry
    assert setup.efd in setup.loop.readers
