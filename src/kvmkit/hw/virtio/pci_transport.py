"""The virtio 1.x ("modern") PCI transport: capabilities, common config, ISR, notify and device config."""

from __future__ import annotations

import ctypes
import functools
import logging
import os
from typing import Protocol

from kvmkit.hw.device import MsiSink
from kvmkit.hw.pci.bar import BarKind, PciBar
from kvmkit.hw.pci.config_space import CAP_ID_VENDOR
from kvmkit.hw.pci.device import PciDevice
from kvmkit.hw.pci.msix import NO_VECTOR, Msix
from kvmkit.hw.virtio.device import (
    STATUS_DEVICE_NEEDS_RESET,
    STATUS_DRIVER_OK,
    STATUS_FEATURES_OK,
    VIRTIO_F_VERSION_1,
    VirtioDevice,
    feature_bit,
)
from kvmkit.hw.virtio.pci_layout import (
    COMMON_CFG_OFFSET,
    DEVICE_CFG_OFFSET,
    ISR_CFG_OFFSET,
    ISR_CONFIG,
    ISR_QUEUE,
    MSIX_PBA_OFFSET,
    MSIX_TABLE_OFFSET,
    NOTIFY_CFG_OFFSET,
    NOTIFY_OFF_MULTIPLIER,
    REGION_SIZE,
    VIRTIO_BAR_INDEX,
    VIRTIO_BAR_SIZE,
    VIRTIO_PCI_CAP_COMMON_CFG,
    VIRTIO_PCI_CAP_DEVICE_CFG,
    VIRTIO_PCI_CAP_ISR_CFG,
    VIRTIO_PCI_CAP_NOTIFY_CFG,
    VIRTIO_PCI_MODERN_DEVICE_ID_BASE,
    VIRTIO_PCI_VENDOR_ID,
    VirtioPciCap,
    VirtioPciCommonCfg,
    VirtioPciNotifyCap,
    common_cfg_field_at,
)
from kvmkit.hw.virtio.virtqueue import Virtqueue, VirtqueueError

log = logging.getLogger(__name__)

CLASS_FOR_DEVICE_TYPE = {1: 0x020000, 2: 0x010000, 3: 0x078000, 4: 0xFF0000}
NOTIFY_WRITE_SIZE = 2  # Linux kicks with a 16-bit write of the queue index


class KvmVmLike(Protocol):
    """The part of kvmkit.accel.kvm.vm.KvmVm used to wire queue notifications."""

    def ioeventfd(
        self,
        efd: int,
        addr: int,
        length: int,
        pio: bool,
        datamatch: int | None = None,
        deassign: bool = False,
    ) -> None: ...


class MainLoopLike(Protocol):
    def add_reader(self, fd: int, cb: object) -> None: ...


class _VirtioBarWindow:
    """IoHandler of the virtio BAR: dispatches to the structure at each offset."""

    def __init__(self, transport: VirtioPciTransport) -> None:
        self.transport = transport

    def read(self, offset: int, size: int) -> int:
        return self.transport.bar_read(offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        self.transport.bar_write(offset, size, value)


class VirtioPciTransport(PciDevice):
    """A virtio device exposed as a modern virtio PCI function (vendor 0x1AF4, device 0x1040 + type).

    Kicks: an MMIO write to the notify region runs `handle_queue` directly; with KVM, call
    `attach_ioeventfds(vm, main_loop)` once and the queues are kicked through ioeventfds read on
    the main loop (re-registered whenever the guest moves the BAR). Interrupts: MSI-X vectors when
    the driver enables MSI-X, otherwise INTx + ISR.
    """

    def __init__(self, device: VirtioDevice, msi_sink: MsiSink, name: str | None = None) -> None:
        super().__init__(
            name or device.name,
            VIRTIO_PCI_VENDOR_ID,
            VIRTIO_PCI_MODERN_DEVICE_ID_BASE + device.device_type,
            CLASS_FOR_DEVICE_TYPE.get(device.device_type, 0xFF0000),
            revision=1,
            subsystem_vendor_id=VIRTIO_PCI_VENDOR_ID,
            subsystem_id=0x40 + device.device_type,
            interrupt_pin=1,
        )
        self.device = device
        device.transport = self
        self.bar = self.add_bar(
            PciBar(VIRTIO_BAR_INDEX, BarKind.MEM64, VIRTIO_BAR_SIZE, _VirtioBarWindow(self), self.name, True)
        )
        self.msix = Msix(
            self, len(device.queues) + 1, VIRTIO_BAR_INDEX, MSIX_TABLE_OFFSET, MSIX_PBA_OFFSET, msi_sink
        )
        self._add_virtio_cap(VIRTIO_PCI_CAP_COMMON_CFG, COMMON_CFG_OFFSET, ctypes.sizeof(VirtioPciCommonCfg))
        self._add_virtio_cap(VIRTIO_PCI_CAP_ISR_CFG, ISR_CFG_OFFSET, 1)
        self._add_virtio_cap(VIRTIO_PCI_CAP_DEVICE_CFG, DEVICE_CFG_OFFSET, max(device.config_size, 4))
        self._add_virtio_cap(
            VIRTIO_PCI_CAP_NOTIFY_CFG, NOTIFY_CFG_OFFSET, NOTIFY_OFF_MULTIPLIER * len(device.queues)
        )
        self._ioeventfds: list[int] = []
        self._ioeventfd_base: int | None = None
        self._vm: KvmVmLike | None = None
        self.config_generation = 0
        self._reset_transport_state()

    def _add_virtio_cap(self, cfg_type: int, offset: int, length: int) -> None:
        is_notify = cfg_type == VIRTIO_PCI_CAP_NOTIFY_CFG
        layout = VirtioPciNotifyCap() if is_notify else VirtioPciCap()
        cap = layout.cap if isinstance(layout, VirtioPciNotifyCap) else layout
        at = self.config.add_capability(CAP_ID_VENDOR, ctypes.sizeof(layout))
        cap.cap_vndr, cap.cap_len, cap.cfg_type = CAP_ID_VENDOR, ctypes.sizeof(layout), cfg_type
        cap.bar, cap.offset, cap.length = VIRTIO_BAR_INDEX, offset, length
        if isinstance(layout, VirtioPciNotifyCap):
            layout.notify_off_multiplier = NOTIFY_OFF_MULTIPLIER
        raw = bytearray(bytes(layout))
        raw[1] = self.config.data[at + 1]  # keep the list link add_capability wrote
        self.config.data[at : at + len(raw)] = raw

    def _reset_transport_state(self) -> None:
        self.status = 0
        self.isr = 0
        self.device_feature_select = 0
        self.driver_feature_select = 0
        self.driver_features = 0
        self.queue_select = 0
        self.config_msix_vector = NO_VECTOR
        self.needs_reset_reason: str | None = None

    # resets ------------------------------------------------------------------------------------

    def virtio_reset(self) -> None:
        """The driver wrote 0 to device_status."""
        self.device.reset()
        self._reset_transport_state()
        self.set_intx_level(False)

    def reset(self) -> None:
        self.virtio_reset()
        self.msix.reset()
        super().reset()

    def config_written(self, offset: int, size: int) -> None:
        self.msix.config_written(offset, size)

    # BAR dispatch ------------------------------------------------------------------------------

    def bar_read(self, offset: int, size: int) -> int:
        region, rel = offset & ~(REGION_SIZE - 1), offset & (REGION_SIZE - 1)
        if region == COMMON_CFG_OFFSET:
            return self._common_read(rel, size)
        if region == ISR_CFG_OFFSET:
            return self._isr_read() if rel == 0 else 0
        if region == DEVICE_CFG_OFFSET:
            return self.device.read_config(rel, size)
        if MSIX_TABLE_OFFSET <= offset < MSIX_TABLE_OFFSET + self.msix.table_size:
            return self.msix.table_read(offset - MSIX_TABLE_OFFSET, size)
        if MSIX_PBA_OFFSET <= offset < MSIX_PBA_OFFSET + self.msix.pba_size:
            return self.msix.pba_read(offset - MSIX_PBA_OFFSET, size)
        return 0

    def bar_write(self, offset: int, size: int, value: int) -> None:
        region, rel = offset & ~(REGION_SIZE - 1), offset & (REGION_SIZE - 1)
        if region == COMMON_CFG_OFFSET:
            self._common_write(rel, size, value)
        elif region == DEVICE_CFG_OFFSET:
            self.device.write_config(rel, size, value)
        elif region == NOTIFY_CFG_OFFSET:
            if rel % NOTIFY_OFF_MULTIPLIER == 0:
                self.handle_notify(rel // NOTIFY_OFF_MULTIPLIER)
        elif MSIX_TABLE_OFFSET <= offset < MSIX_TABLE_OFFSET + self.msix.table_size:
            self.msix.table_write(offset - MSIX_TABLE_OFFSET, size, value)

    # common configuration ----------------------------------------------------------------------

    def _selected_queue(self) -> Virtqueue | None:
        queues = self.device.queues
        return queues[self.queue_select] if self.queue_select < len(queues) else None

    def _common_snapshot(self) -> VirtioPciCommonCfg:
        cfg = VirtioPciCommonCfg()
        cfg.device_feature_select = self.device_feature_select
        select = self.device_feature_select
        cfg.device_feature = (
            (self.device.device_features() >> (32 * select)) & 0xFFFFFFFF if select < 2 else 0
        )
        cfg.driver_feature_select = self.driver_feature_select
        select = self.driver_feature_select
        cfg.driver_feature = (self.driver_features >> (32 * select)) & 0xFFFFFFFF if select < 2 else 0
        cfg.config_msix_vector = self.config_msix_vector
        cfg.num_queues = len(self.device.queues)
        cfg.device_status = self.status
        cfg.config_generation = self.config_generation & 0xFF
        cfg.queue_select = self.queue_select
        queue = self._selected_queue()
        if queue is not None:
            cfg.queue_size = queue.size
            cfg.queue_msix_vector = queue.msix_vector
            cfg.queue_enable = int(queue.ready)
            cfg.queue_notify_off = queue.index
            cfg.queue_desc, cfg.queue_driver, cfg.queue_device = (
                queue.desc_addr,
                queue.driver_addr,
                queue.device_addr,
            )
        else:
            cfg.queue_msix_vector = NO_VECTOR
        return cfg

    def _common_read(self, offset: int, size: int) -> int:
        raw = bytes(self._common_snapshot())
        if offset + size > len(raw):
            return 0
        return int.from_bytes(raw[offset : offset + size], "little")

    def _common_write(self, offset: int, size: int, value: int) -> None:
        found = common_cfg_field_at(offset)
        if found is None or offset + size > found[1] + found[2]:
            return
        name, start, field_size = found
        raw = bytearray(bytes(self._common_snapshot())[start : start + field_size])
        rel = offset - start
        raw[rel : rel + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
        self._apply_common(name, int.from_bytes(raw, "little"))

    def _apply_common(self, name: str, value: int) -> None:
        queue = self._selected_queue()
        if name == "device_feature_select":
            self.device_feature_select = value
        elif name == "driver_feature_select":
            self.driver_feature_select = value
        elif name == "driver_feature":
            if self.driver_feature_select < 2 and not self.status & STATUS_FEATURES_OK:
                shift = 32 * self.driver_feature_select
                self.driver_features = (self.driver_features & ~(0xFFFFFFFF << shift)) | (value << shift)
        elif name == "config_msix_vector":
            self.config_msix_vector = value if value < self.msix.vectors else NO_VECTOR
        elif name == "device_status":
            self._write_status(value)
        elif name == "queue_select":
            self.queue_select = value
        elif queue is not None and name == "queue_msix_vector":
            queue.msix_vector = value if value < self.msix.vectors else NO_VECTOR
        elif queue is not None and not queue.ready:
            self._apply_queue_setup(queue, name, value)

    def _apply_queue_setup(self, queue: Virtqueue, name: str, value: int) -> None:
        if name == "queue_size":
            if 1 <= value <= queue.max_size:
                queue.size = value
        elif name == "queue_desc":
            queue.desc_addr = value
        elif name == "queue_driver":
            queue.driver_addr = value
        elif name == "queue_device":
            queue.device_addr = value
        elif name == "queue_enable" and value == 1:
            try:
                queue.validate()
            except VirtqueueError as err:
                self.set_needs_reset(str(err))
                return
            queue.ready = True

    def _write_status(self, value: int) -> None:
        if value == 0:
            self.virtio_reset()
            return
        value &= 0xFF & ~STATUS_DEVICE_NEEDS_RESET
        newly = value & ~self.status
        if newly & STATUS_FEATURES_OK and not self._features_acceptable():
            value &= ~STATUS_FEATURES_OK
            newly &= ~STATUS_FEATURES_OK
        if newly & STATUS_FEATURES_OK:
            self.device.set_driver_features(self.driver_features)
        if newly & STATUS_DRIVER_OK and not value & STATUS_FEATURES_OK:
            log.warning("virtio %s: DRIVER_OK without FEATURES_OK ignored", self.name)
            value &= ~STATUS_DRIVER_OK
            newly &= ~STATUS_DRIVER_OK
        self.status = value | (self.status & STATUS_DEVICE_NEEDS_RESET)
        if newly & STATUS_DRIVER_OK:
            self.device.activate()

    def _features_acceptable(self) -> bool:
        offered = self.device.device_features()
        if self.driver_features & ~offered:
            log.warning(
                "virtio %s: driver accepted features %#x that were not offered",
                self.name,
                self.driver_features & ~offered,
            )
            return False
        if not self.driver_features & feature_bit(VIRTIO_F_VERSION_1):
            log.warning("virtio %s: driver did not accept VIRTIO_F_VERSION_1", self.name)
            return False
        return True

    def debug_state(self) -> str:
        """One line per queue: the driver's and our ring indices (for `kill -USR1`, when a guest seems stuck)."""
        lines = [f"virtio {self.name}: status {self.status:#x} msix {'on' if self.msix.enabled else 'off'}"]
        for queue in self.device.queues:
            if not queue.ready:
                continue
            try:
                avail = queue.avail_idx()
            except VirtqueueError as err:
                avail = f"? ({err})"  # type: ignore[assignment]
            pending = [v for v in range(self.msix.vectors) if self.msix.is_pending(v)] if self.msix.enabled else []
            lines.append(f"  queue {queue.index}: size {queue.size} avail.idx {avail} "
                         f"last_avail {queue.last_avail_idx} used {queue.used_idx} "
                         f"published {queue.published_used_idx} in_flight {queue.in_flight} "
                         f"event_idx {queue.event_idx} vector {queue.msix_vector} pending-vectors {pending}")
        return "\n".join(lines)

    # notifications and interrupts --------------------------------------------------------------

    def handle_notify(self, index: int) -> None:
        """The driver kicked queue `index` (MMIO write or ioeventfd)."""
        if index >= len(self.device.queues) or not self.status & STATUS_DRIVER_OK:
            return
        if self.status & STATUS_DEVICE_NEEDS_RESET or not self.device.queues[index].ready:
            return
        try:
            self.device.handle_queue(index)
        except VirtqueueError as err:
            self.set_needs_reset(str(err))

    def _isr_read(self) -> int:
        value, self.isr = self.isr, 0
        self.set_intx_level(False)
        return value

    def _interrupt(self, vector: int, isr_bit: int) -> None:
        if self.msix.enabled:
            if vector != NO_VECTOR:
                self.msix.notify(vector)
            return
        self.isr |= isr_bit
        self.set_intx_level(True)

    def queue_interrupt(self, index: int) -> None:
        self._interrupt(self.device.queues[index].msix_vector, ISR_QUEUE)

    def config_interrupt(self) -> None:
        self._interrupt(self.config_msix_vector, ISR_CONFIG)

    def config_changed(self) -> None:
        """The device changed its config structure: bump the generation and tell the driver."""
        self.config_generation = (self.config_generation + 1) & 0xFF
        if self.status & STATUS_DRIVER_OK:
            self.config_interrupt()

    def set_needs_reset(self, reason: str) -> None:
        """The driver broke the ring protocol: stop the device and tell the driver to reset it."""
        if self.status & STATUS_DEVICE_NEEDS_RESET:
            return
        log.warning("virtio %s: device needs reset: %s", self.name, reason)
        self.needs_reset_reason = reason
        self.status |= STATUS_DEVICE_NEEDS_RESET
        if self.status & STATUS_DRIVER_OK:
            self.config_interrupt()

    # KVM ioeventfd wiring ----------------------------------------------------------------------

    def attach_ioeventfds(self, vm: KvmVmLike, main_loop: MainLoopLike) -> list[int]:
        """Create one eventfd per queue, read on `main_loop`, bound by KVM to the queue's notify
        address whenever the BAR is mapped. Returns the eventfds (queue order)."""
        self._vm = vm
        for queue in self.device.queues:
            efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self._ioeventfds.append(efd)
            main_loop.add_reader(efd, functools.partial(self._eventfd_kicked, efd, queue.index))
        self.bar.map_listeners.append(self._rebind_ioeventfds)
        self._rebind_ioeventfds(self.bar, self.bar.mapped_address)
        return list(self._ioeventfds)

    def notify_address(self, index: int) -> int | None:
        base = self.bar.mapped_address
        return None if base is None else base + NOTIFY_CFG_OFFSET + NOTIFY_OFF_MULTIPLIER * index

    def _rebind_ioeventfds(self, bar: PciBar, address: int | None) -> None:
        if self._vm is None or address == self._ioeventfd_base:
            return
        for index, efd in enumerate(self._ioeventfds):
            old, new = self._ioeventfd_base, address
            if old is not None:
                addr = old + NOTIFY_CFG_OFFSET + NOTIFY_OFF_MULTIPLIER * index
                self._vm.ioeventfd(efd, addr, NOTIFY_WRITE_SIZE, False, deassign=True)
            if new is not None:
                addr = new + NOTIFY_CFG_OFFSET + NOTIFY_OFF_MULTIPLIER * index
                self._vm.ioeventfd(efd, addr, NOTIFY_WRITE_SIZE, False)
        self._ioeventfd_base = address

    def _eventfd_kicked(self, efd: int, index: int) -> None:
        try:
            os.eventfd_read(efd)
        except BlockingIOError:
            return
        self.handle_notify(index)
