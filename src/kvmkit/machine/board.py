"""The legacy PC devices kvmkit puts on the PIO bus: UARTs, CMOS RTC, i8042, port 0x92 and quiet sinks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from kvmkit.chardev.base import Chardev
from kvmkit.hw.char.serial import (
    COM1_IRQ,
    COM1_PORT,
    COM2_IRQ,
    COM2_PORT,
    UART_PORT_COUNT,
    Scheduler,
    Serial16550A,
)
from kvmkit.hw.device import IrqLine
from kvmkit.hw.misc.i8042 import I8042, KEYBOARD_IRQ, MOUSE_IRQ, i8042_port_handlers
from kvmkit.hw.misc.ioport_sink import LEGACY_PORT_SINKS
from kvmkit.hw.misc.port92 import Port92
from kvmkit.hw.timer.rtc import RTC_PORT_BASE, RTC_PORT_COUNT, CmosRtc
from kvmkit.memory.address_space import IoBus

SERIAL_PORTS = ((COM1_PORT, COM1_IRQ), (COM2_PORT, COM2_IRQ))


@dataclass
class LegacyDevices:
    """The board's fixed devices, kept so the machine can reset and describe them."""

    serials: list[Serial16550A] = field(default_factory=list)
    rtc: CmosRtc | None = None
    i8042: I8042 | None = None
    port92: Port92 | None = None

    def flush_output(self) -> None:
        """Write out console bytes the UARTs are still gathering (before the backends close)."""
        for uart in self.serials:
            uart.flush_tx()

    def reset(self) -> None:
        for device in (*self.serials, self.rtc, self.i8042, self.port92):
            if device is not None:
                device.reset()


def attach_legacy_devices(pio: IoBus, serial_backends: list[Chardev | None], irq: Callable[[int], IrqLine],
                          reset_requested: Callable[[], None], memory_below_4g: int, memory_above_4g: int,
                          cpus: int, schedule: Scheduler | None = None) -> LegacyDevices:
    """Create the devices and register their port windows on the PIO bus."""
    devices = LegacyDevices()
    for index, backend in enumerate(serial_backends[:len(SERIAL_PORTS)]):
        port, gsi = SERIAL_PORTS[index]
        uart = Serial16550A(irq(gsi), backend, name=f"serial{index}", schedule=schedule)
        pio.register(port, UART_PORT_COUNT, uart, f"serial{index}")
        devices.serials.append(uart)
    devices.rtc = CmosRtc()
    devices.rtc.set_memory_size(memory_below_4g, memory_above_4g)
    devices.rtc.set_cpu_count(cpus)
    pio.register(RTC_PORT_BASE, RTC_PORT_COUNT, devices.rtc, "rtc")
    # With its IRQs wired, Linux's AUX port check gets its interrupt at once instead of waiting 250 ms for it.
    devices.i8042 = I8042(reset_requested=reset_requested, keyboard_irq=irq(KEYBOARD_IRQ), mouse_irq=irq(MOUSE_IRQ))
    for port, handler in i8042_port_handlers(devices.i8042).items():
        pio.register(port, 1, handler, f"i8042@{port:#x}")
    devices.port92 = Port92(reset_requested)
    pio.register(0x92, 1, devices.port92, "port92")
    for sink in LEGACY_PORT_SINKS:
        if pio.lookup(sink.base, 1) is None:
            pio.register(sink.base, sink.length, sink.make_handler(), sink.name)
    return devices
