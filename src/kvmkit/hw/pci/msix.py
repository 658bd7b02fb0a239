"""MSI-X: the capability, the vector table and pending-bit array living in a BAR, masking and delivery.

Delivery goes to a `MsiSink` (the machine gives one that calls KVM_SIGNAL_MSI, or an irqfd-backed
sink); machines that keep KVM GSI routes per vector subscribe with `add_vector_listener` and are
told whenever a vector's address, data or mask changes.
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Callable

from kvmkit.errors import KvmkitError
from kvmkit.hw.device import MsiSink
from kvmkit.hw.pci.config_space import CAP_ID_MSIX
from kvmkit.hw.pci.device import PciDevice

MSIX_CONTROL_ENABLE = 0x8000
MSIX_CONTROL_FUNCTION_MASK = 0x4000
VECTOR_CONTROL_MASKED = 0x1
NO_VECTOR = 0xFFFF
MAX_VECTORS = 2048


class MsixCapabilityLayout(ctypes.LittleEndianStructure):
    """The MSI-X capability structure in configuration space."""

    _pack_ = 1
    _fields_ = [
        ("cap_id", ctypes.c_uint8),
        ("cap_next", ctypes.c_uint8),
        ("message_control", ctypes.c_uint16),
        ("table_offset_bir", ctypes.c_uint32),
        ("pba_offset_bir", ctypes.c_uint32),
    ]


class MsixTableEntry(ctypes.LittleEndianStructure):
    """One 16-byte entry of the MSI-X vector table."""

    _pack_ = 1
    _fields_ = [
        ("address_lo", ctypes.c_uint32),
        ("address_hi", ctypes.c_uint32),
        ("data", ctypes.c_uint32),
        ("vector_control", ctypes.c_uint32),
    ]


ENTRY_SIZE = ctypes.sizeof(MsixTableEntry)
_unpack_entry = struct.Struct("<IIII").unpack_from
CONTROL_OFFSET = MsixCapabilityLayout.message_control.offset

VectorListener = Callable[[int, int, int, bool], None]  # (vector, address, data, masked)


class Msix:
    """MSI-X state of one PCI function with `vectors` vectors; table and PBA in BAR `bar_index`.

    The owner maps `table_read/table_write` at `table_offset` and `pba_read` at `pba_offset`
    within its BAR, and forwards `config_written` from its configuration-space hook.
    """

    def __init__(
        self,
        device: PciDevice,
        vectors: int,
        bar_index: int,
        table_offset: int,
        pba_offset: int,
        sink: MsiSink,
    ) -> None:
        if not 1 <= vectors <= MAX_VECTORS:
            raise KvmkitError(f"MSI-X on {device.name}: {vectors} vectors is not within 1..{MAX_VECTORS}")
        self.device = device
        self.vectors = vectors
        self.sink = sink
        self.table_offset = table_offset
        self.pba_offset = pba_offset
        self.table_size = vectors * ENTRY_SIZE
        self.pba_size = ((vectors + 63) // 64) * 8
        self._table = bytearray(self.table_size)
        self._entries = (MsixTableEntry * vectors).from_buffer(self._table)
        self._pending = bytearray(self.pba_size)
        self._listeners: list[VectorListener] = []
        self.cap_offset = device.config.add_capability(CAP_ID_MSIX, ctypes.sizeof(MsixCapabilityLayout))
        cfg = device.config
        cfg.set_bytes(self.cap_offset + CONTROL_OFFSET, 2, vectors - 1)
        cfg.set_write_mask(
            self.cap_offset + CONTROL_OFFSET, 2, MSIX_CONTROL_ENABLE | MSIX_CONTROL_FUNCTION_MASK
        )
        cfg.set_bytes(
            self.cap_offset + MsixCapabilityLayout.table_offset_bir.offset, 4, table_offset | bar_index
        )
        cfg.set_bytes(self.cap_offset + MsixCapabilityLayout.pba_offset_bir.offset, 4, pba_offset | bar_index)
        self._last_control = 0
        self.reset()

    # state ---------------------------------------------------------------------------------------

    @property
    def control(self) -> int:
        return self.device.config.get_bytes(self.cap_offset + CONTROL_OFFSET, 2)

    @property
    def enabled(self) -> bool:
        return bool(self.control & MSIX_CONTROL_ENABLE)

    @property
    def function_masked(self) -> bool:
        return bool(self.control & MSIX_CONTROL_FUNCTION_MASK)

    def vector_masked(self, vector: int) -> bool:
        return bool(self._entries[vector].vector_control & VECTOR_CONTROL_MASKED) or self.function_masked

    def is_pending(self, vector: int) -> bool:
        return bool(self._pending[vector // 8] & (1 << (vector % 8)))

    def message(self, vector: int) -> tuple[int, int]:
        entry = self._entries[vector]
        return (entry.address_hi << 32) | entry.address_lo, entry.data

    def add_vector_listener(self, listener: VectorListener) -> None:
        self._listeners.append(listener)

    def reset(self) -> None:
        """Every vector masked, nothing pending, MSI-X disabled."""
        ctypes.memset(self._entries, 0, self.table_size)
        for entry in self._entries:
            entry.vector_control = VECTOR_CONTROL_MASKED
        self._pending[:] = bytes(self.pba_size)
        self.device.config.set_bytes(self.cap_offset + CONTROL_OFFSET, 2, self.vectors - 1)
        self._last_control = self.control

    # delivery ------------------------------------------------------------------------------------

    def notify(self, vector: int) -> bool:
        """Signal `vector`; pends it while masked. False when MSI-X is off or the vector is invalid."""
        control = self.device.config.get_bytes(self.cap_offset + CONTROL_OFFSET, 2)  # read once (hot path)
        if not control & MSIX_CONTROL_ENABLE or not 0 <= vector < self.vectors:
            return False
        address_lo, address_hi, data, vector_control = _unpack_entry(self._table, ENTRY_SIZE * vector)
        if vector_control & VECTOR_CONTROL_MASKED or control & MSIX_CONTROL_FUNCTION_MASK:
            self._pending[vector // 8] |= 1 << (vector % 8)
            return True
        self.sink.send_msi((address_hi << 32) | address_lo, data)
        return True

    def _deliver_unmasked_pending(self) -> None:
        if not self.enabled:
            return
        for vector in range(self.vectors):
            if self.is_pending(vector) and not self.vector_masked(vector):
                self._pending[vector // 8] &= ~(1 << (vector % 8)) & 0xFF
                address, data = self.message(vector)
                self.sink.send_msi(address, data)

    def _announce(self, vector: int) -> None:
        address, data = self.message(vector)
        for listener in self._listeners:
            listener(vector, address, data, self.vector_masked(vector))

    # guest access --------------------------------------------------------------------------------

    def config_written(self, offset: int, size: int) -> None:
        """Call after every configuration write: reacts to enable / function-mask changes."""
        if (
            offset + size <= self.cap_offset + CONTROL_OFFSET
            or offset >= self.cap_offset + CONTROL_OFFSET + 2
        ):
            return
        control = self.control
        if control != self._last_control:
            self._last_control = control
            for vector in range(self.vectors):
                self._announce(vector)
            self._deliver_unmasked_pending()

    def table_read(self, offset: int, size: int) -> int:
        if size not in (4, 8) or offset % size or offset + size > self.table_size:
            return 0
        return int.from_bytes(self._table[offset : offset + size], "little")

    def table_write(self, offset: int, size: int, value: int) -> None:
        if size not in (4, 8) or offset % size or offset + size > self.table_size:
            return
        self._table[offset : offset + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
        vector = offset // ENTRY_SIZE
        self._announce(vector)
        self._deliver_unmasked_pending()

    def pba_read(self, offset: int, size: int) -> int:
        if size not in (4, 8) or offset % size or offset + size > self.pba_size:
            return 0
        return int.from_bytes(self._pending[offset : offset + size], "little")
