"""The transport-independent virtio device: type, features, config structure, queues, reset."""

from __future__ import annotations

import ctypes
import logging
from typing import Any, ClassVar, Protocol

from kvmkit.hw.virtio.virtqueue import DmaLike, Virtqueue, VirtqueueError

log = logging.getLogger(__name__)

# device-independent feature bits (virtio 1.x, 6)
VIRTIO_F_INDIRECT_DESC = 28
VIRTIO_F_EVENT_IDX = 29
VIRTIO_F_VERSION_1 = 32
VIRTIO_F_ACCESS_PLATFORM = 33

# device status bits (2.1)
STATUS_ACKNOWLEDGE = 1
STATUS_DRIVER = 2
STATUS_DRIVER_OK = 4
STATUS_FEATURES_OK = 8
STATUS_DEVICE_NEEDS_RESET = 64
STATUS_FAILED = 128

# device types (5)
VIRTIO_ID_NET = 1
VIRTIO_ID_BLOCK = 2
VIRTIO_ID_CONSOLE = 3
VIRTIO_ID_RNG = 4


def feature_bit(bit: int) -> int:
    return 1 << bit


class VirtioTransport(Protocol):
    """What a device asks of its transport (PCI today)."""

    def queue_interrupt(self, index: int) -> None: ...

    def config_interrupt(self) -> None: ...

    def set_needs_reset(self, reason: str) -> None: ...


class EmptyConfig(ctypes.LittleEndianStructure):
    """Config structure of devices without device-specific configuration."""

    _pack_ = 1
    _fields_: ClassVar[list[tuple[str, Any]]] = []


class VirtioDevice:
    """Base of every virtio device model.

    Subclasses set `device_type` and `config_type`, extend `device_features()`, implement
    `handle_queue(index)` and, if they keep state, `reset()` and `migratable_state()`.
    Queue processing runs with the BQL held; `transport` is set when plugged.
    """

    device_type: ClassVar[int] = 0
    config_type: ClassVar[type[ctypes.LittleEndianStructure]] = EmptyConfig

    def __init__(self, name: str, dma: DmaLike, num_queues: int, queue_max_size: int = 256) -> None:
        self.name = name
        self.dma = dma
        self.queues = [Virtqueue(i, queue_max_size, dma) for i in range(num_queues)]
        self.config = self.config_type()
        self.driver_features = 0
        self.transport: VirtioTransport | None = None

    # features ------------------------------------------------------------------------------------

    def device_features(self) -> int:
        """Offered feature bits; subclasses OR in their own."""
        return (
            feature_bit(VIRTIO_F_VERSION_1)
            | feature_bit(VIRTIO_F_INDIRECT_DESC)
            | feature_bit(VIRTIO_F_EVENT_IDX)
        )

    def has_feature(self, bit: int) -> bool:
        return bool(self.driver_features & feature_bit(bit))

    def set_driver_features(self, features: int) -> None:
        """Called once FEATURES_OK is accepted."""
        self.driver_features = features
        for queue in self.queues:
            queue.event_idx = self.has_feature(VIRTIO_F_EVENT_IDX)
            queue.indirect = self.has_feature(VIRTIO_F_INDIRECT_DESC)

    # configuration space -------------------------------------------------------------------------

    @property
    def config_size(self) -> int:
        return ctypes.sizeof(self.config)

    def read_config(self, offset: int, size: int) -> int:
        raw = bytes(self.config)
        if offset < 0 or offset + size > len(raw):
            return 0
        return int.from_bytes(raw[offset : offset + size], "little")

    def write_config(self, offset: int, size: int, value: int) -> None:
        """Driver writes to the config structure: read-only unless a subclass says otherwise."""

    # queues --------------------------------------------------------------------------------------

    def handle_queue(self, index: int) -> None:
        """The driver kicked queue `index`: pop and serve chains (may raise VirtqueueError)."""
        raise NotImplementedError

    def activate(self) -> None:
        """DRIVER_OK was set: queues are configured."""

    def notify_queue(self, index: int) -> None:
        """Interrupt the driver for queue `index` if its suppression settings allow it."""
        if self.transport is None:
            return
        try:
            if self.queues[index].notify_needed():
                self.transport.queue_interrupt(index)
        except VirtqueueError as err:
            self.transport.set_needs_reset(str(err))

    def fail(self, reason: str) -> None:
        """The driver broke the protocol: the device stops until the driver resets it."""
        log.warning("virtio device %s: %s", self.name, reason)
        if self.transport is not None:
            self.transport.set_needs_reset(reason)

    def reset(self) -> None:
        """Device reset (status 0): queues forgotten, features cleared."""
        self.driver_features = 0
        for queue in self.queues:
            queue.reset()
            queue.event_idx = queue.indirect = False

    # migration -----------------------------------------------------------------------------------

    def migratable_state(self) -> dict[str, Any]:
        """What must move with the device: features, config bytes and each queue's indices."""
        return {
            "driver_features": self.driver_features,
            "config": bytes(self.config).hex(),
            "queues": [queue.migratable_state() for queue in self.queues],
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.set_driver_features(state["driver_features"])
        ctypes.memmove(ctypes.addressof(self.config), bytes.fromhex(state["config"]), self.config_size)
        for queue, queue_state in zip(self.queues, state["queues"], strict=True):
            queue.load_state(queue_state)
