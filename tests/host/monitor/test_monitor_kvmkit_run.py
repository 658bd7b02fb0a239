"""QMP and HMP against a real `kvmkit run -S` process, driven with QEMU's own client library (qemu.qmp).

`kvmkit run -S` builds the whole machine (KVM VM, irqchip, PIT, memory, PCI, virtio-blk) and parks its vCPUs,
which works on any /dev/kvm, PVM included, so these tests run on the host.  The vCPUs only run for an instant
here (cont/stop); a guest that really runs is the lab's job (tests/lab/monitor).
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from qemu.qmp import ExecuteError, QMPClient

from harness.monitored_run import HmpSession, MonitoredRun, start_monitored_run, with_qmp
from kvmkit.guest.build import GuestAssets

pytestmark = pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK),
                                reason="needs a /dev/kvm this user can open (any KVM, PVM included)")

DISK_BYTES = 4 << 20
QUERY_COMMANDS = ("query-status", "query-version", "query-name", "query-commands", "query-kvm",
                  "query-cpus-fast", "query-chardev", "query-pci", "query-block", "query-blockstats",
                  "query-qmp-schema")
RUN_CONTROL = ("stop", "cont", "system_reset", "system_powerdown", "quit", "human-monitor-command")
VIRTIO_VENDOR, VIRTIO_BLK_DEVICE = 0x1AF4, 0x1042  # modern (virtio 1.0) virtio-blk


@pytest.fixture(scope="module")
def disk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("disk") / "disk.raw"
    path.write_bytes(b"\0" * DISK_BYTES)
    return path


def _start(generic_guest: GuestAssets, disk: Path, *, no_reboot: bool = False) -> MonitoredRun:
    return start_monitored_run(generic_guest, "", "-name", "monitor-test", "-smp", "2",
                               "-drive", f"file={disk},if=virtio,format=raw,id=disk0", no_reboot=no_reboot)


@pytest.fixture(scope="module")
def vmm(generic_guest: GuestAssets, disk: Path) -> Iterator[MonitoredRun]:
    run = _start(generic_guest, disk)
    yield run
    run.close()


async def _next_event(client: QMPClient, name: str, timeout: float = 20) -> dict[str, Any]:
    """The next event called `name` (others are skipped)."""
    async def wait() -> dict[str, Any]:
        while True:
            event = await client.events.get()
            if event["event"] == name:
                return dict(event)

    return await asyncio.wait_for(wait(), timeout)


def test_every_query_answers_in_qemus_shapes(vmm: MonitoredRun, disk: Path) -> None:
    async def body(client: QMPClient) -> dict[str, Any]:
        return {name: await client.execute(name) for name in QUERY_COMMANDS}

    answers = with_qmp(vmm.qmp_path, body)
    assert answers["query-status"] == {"running": False, "singlestep": False, "status": "prelaunch"}
    assert answers["query-version"]["package"].startswith("kvmkit ")
    assert set(answers["query-version"]["qemu"]) == {"major", "minor", "micro"}
    assert answers["query-name"] == {"name": "monitor-test"}
    assert answers["query-kvm"] == {"enabled": True, "present": True}
    names = {entry["name"] for entry in answers["query-commands"]}
    assert names >= {*QUERY_COMMANDS, *RUN_CONTROL, "qmp_capabilities"}

    cpus = answers["query-cpus-fast"]
    assert [cpu["cpu-index"] for cpu in cpus] == [0, 1]
    for cpu in cpus:
        assert cpu["target"] == "x86_64" and cpu["qom-path"].startswith("/machine/")
        assert isinstance(cpu["thread-id"], int) and cpu["thread-id"] > 0

    chardevs = answers["query-chardev"]
    assert chardevs and all({"label", "filename", "frontend-open"} <= set(c) for c in chardevs)
    assert any(c["filename"] == "stdio" for c in chardevs), chardevs

    (bus,) = answers["query-pci"]
    assert bus["bus"] == 0
    devices = {(d["id"]["vendor"], d["id"]["device"]): d for d in bus["devices"]}
    blk = devices[(VIRTIO_VENDOR, VIRTIO_BLK_DEVICE)]
    assert blk["class_info"]["class"] == 0x0100
    assert blk["regions"] and all(r["size"] > 0 and r["type"] in ("io", "memory") for r in blk["regions"])
    assert any(d["slot"] == 0 for d in bus["devices"])  # the host bridge

    (block,) = answers["query-block"]
    assert block["device"] == "disk0" and block["locked"] is False and block["removable"] is False
    inserted = block["inserted"]
    assert inserted["file"] == str(disk) and inserted["drv"] == "raw" and inserted["ro"] is False
    assert inserted["image"]["virtual-size"] == DISK_BYTES

    (stats,) = answers["query-blockstats"]
    assert stats["device"] == "disk0"
    assert stats["stats"]["rd_operations"] == 0 and stats["stats"]["wr_bytes"] == 0

    schema = answers["query-qmp-schema"]
    by_name = {(entry["name"], entry["meta-type"]) for entry in schema}
    for name in (*QUERY_COMMANDS, *RUN_CONTROL):
        assert (name, "command") in by_name
    for event in ("STOP", "RESUME", "RESET", "SHUTDOWN", "POWERDOWN", "BLOCK_IO_ERROR"):
        assert (event, "event") in by_name


def test_hmp_through_qmp(vmm: MonitoredRun) -> None:
    async def body(client: QMPClient) -> list[str]:
        return [await client.execute("human-monitor-command", {"command-line": line})
                for line in ("info status", "info block", "info pci", "info cpus", "info nonsense", "bogus")]

    status, block, pci, cpus, unknown_info, unknown = with_qmp(vmm.qmp_path, body)
    assert status == "VM status: paused (prelaunch)\n"
    assert block.startswith("disk0: ") and "(raw)" in block
    assert "PCI device 1af4:1042" in pci
    assert "CPU #0" in cpus and "CPU #1" in cpus
    assert "unknown info command" in unknown_info
    assert unknown == "unknown command: 'bogus'\n"


def test_powerdown_is_a_clear_error_without_acpi(vmm: MonitoredRun) -> None:
    async def body(client: QMPClient) -> ExecuteError:
        with pytest.raises(ExecuteError) as info:
            await client.execute("system_powerdown")
        return info.value

    error = with_qmp(vmm.qmp_path, body)
    assert error.error.error.class_ == "GenericError"
    assert "ACPI" in error.error.error.desc


def test_run_control_events_reach_another_connection(vmm: MonitoredRun) -> None:
    """One client changes the run state, another sees STOP/RESUME/RESET; state answers follow."""
    async def body(watcher: QMPClient) -> dict[str, Any]:
        actor = QMPClient("actor")
        await actor.connect(vmm.qmp_path)
        seen: dict[str, Any] = {}
        try:
            await actor.execute("stop")  # stop in prelaunch: nothing happens, no event
            seen["after-noop-stop"] = await watcher.execute("query-status")
            await actor.execute("cont")
            seen["resume"] = await _next_event(watcher, "RESUME")
            seen["running"] = await watcher.execute("query-status")
            await actor.execute("stop")
            seen["stop"] = await _next_event(watcher, "STOP")
            seen["paused"] = await watcher.execute("query-status")
            await actor.execute("cont")  # cont twice: the second is a no-op without an event
            await actor.execute("cont")
            await _next_event(watcher, "RESUME")
            await actor.execute("system_reset")  # while running: the machine keeps running
            seen["reset-running"] = await _next_event(watcher, "RESET")
            seen["after-reset-running"] = await watcher.execute("query-status")
            await actor.execute("stop")
            await _next_event(watcher, "STOP")
            await actor.execute("system_reset")  # while paused: back to prelaunch, as QEMU does
            seen["reset-paused"] = await _next_event(watcher, "RESET")
            seen["after-reset-paused"] = await watcher.execute("query-status")
            seen["leftover"] = [event["event"] for event in watcher.events.clear()]
        finally:
            await actor.disconnect()
        return seen

    seen = with_qmp(vmm.qmp_path, body)
    assert seen["after-noop-stop"]["status"] == "prelaunch"
    assert seen["resume"]["data"] == {} and set(seen["resume"]["timestamp"]) == {"seconds", "microseconds"}
    assert seen["running"] == {"running": True, "singlestep": False, "status": "running"}
    assert seen["stop"]["data"] == {}
    assert seen["paused"] == {"running": False, "singlestep": False, "status": "paused"}
    assert seen["reset-running"]["data"] == {"guest": False, "reason": "host-qmp-system-reset"}
    assert seen["after-reset-running"]["status"] == "running"
    assert seen["reset-paused"]["data"] == {"guest": False, "reason": "host-qmp-system-reset"}
    assert seen["after-reset-paused"]["status"] == "prelaunch"
    assert "RESUME" not in seen["leftover"] and "STOP" not in seen["leftover"]


def test_hmp_socket_session(vmm: MonitoredRun) -> None:
    session = HmpSession(vmm.hmp_path)
    try:
        assert "monitor" in session.banner
        assert session.command("info status") == "VM status: paused (prelaunch)\n"
        assert "1af4:1042" in session.command("info pci")
        registers = session.command("info registers")
        assert "RIP=" in registers and "CR0=" in registers
        assert "CS=" in session.command("info registers 1")
        assert session.command("cont") == ""
        assert session.command("info status") == "VM status: running\n"
        assert session.command("stop") == ""
        assert session.command("info status") == "VM status: paused\n"
        assert session.command("info registers 7").startswith("Error: ")
        assert "info status" in session.command("help")
    finally:
        session.close()


def test_quit_sends_shutdown_and_the_process_exits_cleanly(generic_guest: GuestAssets, disk: Path) -> None:
    run = _start(generic_guest, disk)
    try:
        async def body(client: QMPClient) -> dict[str, Any]:
            reply = await client.execute("quit")
            event = await _next_event(client, "SHUTDOWN")
            return {"reply": reply, "event": event}

        seen = with_qmp(run.qmp_path, body, expect_hangup=True)
        assert seen["reply"] == {}
        assert seen["event"]["data"] == {"guest": False, "reason": "host-qmp-quit"}
        assert run.wait_exit(30) == 0, run.output()
        assert not os.path.exists(run.qmp_path) and not os.path.exists(run.hmp_path)
    finally:
        run.close()


def test_system_reset_with_no_reboot_ends_the_vmm(generic_guest: GuestAssets, disk: Path) -> None:
    """QEMU's -no-reboot turns every reset into an exit, system_reset included: SHUTDOWN, no RESET."""
    run = _start(generic_guest, disk, no_reboot=True)
    try:
        async def body(client: QMPClient) -> dict[str, Any]:
            await client.execute("system_reset")
            event = await _next_event(client, "SHUTDOWN")
            return {"event": event, "others": [e["event"] for e in client.events.clear()]}

        seen = with_qmp(run.qmp_path, body, expect_hangup=True)
        assert seen["event"]["data"] == {"guest": False, "reason": "host-qmp-system-reset"}
        assert "RESET" not in seen["others"]
        assert run.wait_exit(30) == 0, run.output()
    finally:
        run.close()


def test_sigterm_is_a_clean_shutdown(generic_guest: GuestAssets, disk: Path) -> None:
    """As QEMU: a terminating signal gives SHUTDOWN (host-signal), exit status 0 and no stale sockets."""
    run = _start(generic_guest, disk)
    try:
        async def body(client: QMPClient) -> dict[str, Any]:
            run.process.send_signal(signal.SIGTERM)
            return await _next_event(client, "SHUTDOWN")

        event = with_qmp(run.qmp_path, body, expect_hangup=True)
        assert event["data"] == {"guest": False, "reason": "host-signal"}
        assert run.wait_exit(30) == 0, run.output()
        assert "terminating on signal 15" in run.output()
        assert not os.path.exists(run.qmp_path) and not os.path.exists(run.hmp_path)
    finally:
        run.close()
