"""PCI type-0 configuration space: a 256-byte register file declared as a register map with write masks."""

from __future__ import annotations

from typing import NamedTuple

from kvmkit.errors import KvmkitError

CONFIG_SPACE_SIZE = 256
FIRST_CAPABILITY_OFFSET = 0x40


class ConfigRegister(NamedTuple):
    """One named register of the configuration header: byte offset and width."""

    offset: int
    size: int


TYPE0_HEADER: dict[str, ConfigRegister] = {
    "vendor_id": ConfigRegister(0x00, 2),
    "device_id": ConfigRegister(0x02, 2),
    "command": ConfigRegister(0x04, 2),
    "status": ConfigRegister(0x06, 2),
    "revision_id": ConfigRegister(0x08, 1),
    "prog_if": ConfigRegister(0x09, 1),
    "subclass": ConfigRegister(0x0A, 1),
    "class_code": ConfigRegister(0x0B, 1),
    "cache_line_size": ConfigRegister(0x0C, 1),
    "latency_timer": ConfigRegister(0x0D, 1),
    "header_type": ConfigRegister(0x0E, 1),
    "bist": ConfigRegister(0x0F, 1),
    **{f"bar{i}": ConfigRegister(0x10 + 4 * i, 4) for i in range(6)},
    "cardbus_cis": ConfigRegister(0x28, 4),
    "subsystem_vendor_id": ConfigRegister(0x2C, 2),
    "subsystem_id": ConfigRegister(0x2E, 2),
    "expansion_rom": ConfigRegister(0x30, 4),
    "capabilities_pointer": ConfigRegister(0x34, 1),
    "interrupt_line": ConfigRegister(0x3C, 1),
    "interrupt_pin": ConfigRegister(0x3D, 1),
    "min_gnt": ConfigRegister(0x3E, 1),
    "max_lat": ConfigRegister(0x3F, 1),
}

# COMMAND register bits
COMMAND_IO = 0x0001
COMMAND_MEMORY = 0x0002
COMMAND_BUS_MASTER = 0x0004
COMMAND_PARITY = 0x0040
COMMAND_SERR = 0x0100
COMMAND_INTX_DISABLE = 0x0400
COMMAND_WRITABLE = (
    COMMAND_IO | COMMAND_MEMORY | COMMAND_BUS_MASTER | COMMAND_PARITY | COMMAND_SERR | COMMAND_INTX_DISABLE
)

# STATUS register bits
STATUS_INTERRUPT = 0x0008
STATUS_CAP_LIST = 0x0010
STATUS_ERRORS_W1C = 0xF900  # parity / target / master abort / SERR / detected parity: write 1 to clear

# capability ids
CAP_ID_MSIX = 0x11
CAP_ID_VENDOR = 0x09


class PciConfigSpace:
    """The configuration space of one PCI function.

    Guest writes go through `write`, which honours the per-byte write mask (read-only bits stay
    read-only) and write-one-to-clear mask; the device model initialises registers with `set`.
    """

    def __init__(self) -> None:
        self.data = bytearray(CONFIG_SPACE_SIZE)
        self.write_mask = bytearray(CONFIG_SPACE_SIZE)
        self.w1c_mask = bytearray(CONFIG_SPACE_SIZE)
        self._next_capability_offset = FIRST_CAPABILITY_OFFSET
        self._last_capability: int | None = None
        self.set_write_mask_of("command", COMMAND_WRITABLE)
        self.set_write_mask_of("cache_line_size", 0xFF)
        self.set_write_mask_of("latency_timer", 0xFF)
        self.set_write_mask_of("interrupt_line", 0xFF)
        self._set_mask(self.w1c_mask, TYPE0_HEADER["status"].offset, 2, STATUS_ERRORS_W1C)

    # device-side access (ignores masks) -----------------------------------------------------

    def get(self, name: str) -> int:
        reg = TYPE0_HEADER[name]
        return self.get_bytes(reg.offset, reg.size)

    def set(self, name: str, value: int) -> None:
        reg = TYPE0_HEADER[name]
        self.set_bytes(reg.offset, reg.size, value)

    def get_bytes(self, offset: int, size: int) -> int:
        return int.from_bytes(self.data[offset : offset + size], "little")

    def set_bytes(self, offset: int, size: int, value: int) -> None:
        self.data[offset : offset + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")

    def set_write_mask_of(self, name: str, mask: int) -> None:
        reg = TYPE0_HEADER[name]
        self._set_mask(self.write_mask, reg.offset, reg.size, mask)

    def set_write_mask(self, offset: int, size: int, mask: int) -> None:
        self._set_mask(self.write_mask, offset, size, mask)

    @staticmethod
    def _set_mask(mask: bytearray, offset: int, size: int, value: int) -> None:
        mask[offset : offset + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")

    # guest-side access -----------------------------------------------------------------------

    def read(self, offset: int, size: int) -> int:
        """A guest read; out-of-range bytes read as all-ones."""
        if size not in (1, 2, 4) or offset < 0 or offset + size > CONFIG_SPACE_SIZE:
            return (1 << (8 * size)) - 1 if size in (1, 2, 4) else 0xFFFFFFFF
        return self.get_bytes(offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        """A guest write; bits outside the write mask keep their value, W1C bits clear on 1."""
        if size not in (1, 2, 4) or offset < 0 or offset + size > CONFIG_SPACE_SIZE:
            return
        for i in range(size):
            byte = (value >> (8 * i)) & 0xFF
            pos = offset + i
            wmask, w1c = self.write_mask[pos], self.w1c_mask[pos]
            new = (self.data[pos] & ~wmask) | (byte & wmask)
            new &= ~(byte & w1c)
            self.data[pos] = new & 0xFF

    # capabilities ----------------------------------------------------------------------------

    def add_capability(self, cap_id: int, length: int) -> int:
        """Reserve `length` bytes for a capability, link it at the end of the list; returns its offset."""
        if length < 2:
            raise KvmkitError(f"PCI capability 0x{cap_id:02x}: length {length} is too short")
        offset = self._next_capability_offset
        if offset + length > CONFIG_SPACE_SIZE:
            raise KvmkitError(f"PCI capability 0x{cap_id:02x}: no room left in configuration space")
        self._next_capability_offset = (offset + length + 3) & ~3
        self.data[offset] = cap_id
        self.data[offset + 1] = 0
        if self._last_capability is None:
            self.set("capabilities_pointer", offset)
            self.set("status", self.get("status") | STATUS_CAP_LIST)
        else:
            self.data[self._last_capability + 1] = offset
        self._last_capability = offset
        return offset

    def capabilities(self) -> list[tuple[int, int]]:
        """(capability id, offset) of each capability, in list order."""
        found: list[tuple[int, int]] = []
        if not self.get("status") & STATUS_CAP_LIST:
            return found
        offset = self.get("capabilities_pointer") & ~3
        while offset and len(found) < CONFIG_SPACE_SIZE // 4:
            found.append((self.data[offset], offset))
            offset = self.data[offset + 1] & ~3
        return found

    def touches(self, offset: int, size: int, name: str) -> bool:
        """Whether an access [offset, offset+size) overlaps the named header register."""
        reg = TYPE0_HEADER[name]
        return offset < reg.offset + reg.size and reg.offset < offset + size
