"""The monitor of a `kvmkit run` whose Linux guest really runs: run control seen on the guest's console.

One guest boot for everything (the lab is slow): start with -S, `cont` boots it, `stop` freezes its console,
`cont` resumes it, `system_reset` reboots it, the queries describe its disk, `quit` ends it.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

import pytest
from qemu.qmp import QMPClient

from harness.monitored_run import HmpSession, MonitoredRun, start_monitored_run, with_qmp
from kvmkit.guest.build import GuestAssets

pytestmark = pytest.mark.lab

BOOT_TIMEOUT = 180.0
FROZEN_SECONDS = 3.0
# Reads a little of the disk (so blockstats move), then ticks every 0.2 s for five minutes.
TICKER = """
dd if=/dev/vda of=/dev/null bs=4096 count=8 2>/dev/null && echo disk-read-ok
i=0
while [ $i -lt 1500 ]; do echo "tick $i"; i=$((i+1)); sleep 0.2; done
"""
TICK = re.compile(r"^tick (\d+)\r?$", re.MULTILINE)


def _ticks(run: MonitoredRun) -> list[int]:
    return [int(number) for number in TICK.findall(run.output())]


async def _until(condition: Any, what: str, run: MonitoredRun, timeout: float = BOOT_TIMEOUT) -> None:
    started = time.monotonic()
    deadline = started + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; console:\n{run.output()[-3000:]}")
        assert run.process.poll() is None, f"kvmkit exited while waiting for {what}:\n{run.output()[-3000:]}"
        await asyncio.sleep(0.2)
    print(f"{what}: {time.monotonic() - started:.1f} s")


async def _event(client: QMPClient, name: str, timeout: float = 60) -> dict[str, Any]:
    async def wait() -> dict[str, Any]:
        while True:
            event = await client.events.get()
            if event["event"] == name:
                return dict(event)

    return await asyncio.wait_for(wait(), timeout)


def test_run_control_of_a_running_guest(generic_guest: GuestAssets, tmp_path: Path) -> None:
    disk = tmp_path / "disk.raw"
    disk.write_bytes(b"\xab" * (1 << 20))
    started = time.monotonic()
    run = start_monitored_run(generic_guest, TICKER, "-drive", f"file={disk},if=virtio,format=raw,id=disk0",
                              paused=True, no_reboot=False)
    print(f"kvmkit run -S ready for monitors: {time.monotonic() - started:.1f} s")
    try:
        async def body(client: QMPClient) -> dict[str, Any]:
            seen: dict[str, Any] = {"prelaunch": await client.execute("query-status")}
            await client.execute("cont")  # -S then cont: the guest boots
            seen["resume"] = await _event(client, "RESUME")
            await _until(lambda: len(_ticks(run)) >= 3, "the guest's first ticks", run)
            seen["running"] = await client.execute("query-status")
            seen["block"] = await client.execute("query-block")
            seen["blockstats"] = await client.execute("query-blockstats")
            seen["pci"] = await client.execute("query-pci")

            await client.execute("stop")
            seen["stop"] = await _event(client, "STOP")
            seen["paused"] = await client.execute("query-status")
            await asyncio.sleep(0.5)  # a line already on its way out may still land
            frozen_at = _ticks(run)
            await asyncio.sleep(FROZEN_SECONDS)
            seen["frozen"] = (frozen_at, _ticks(run))
            hmp = HmpSession(run.hmp_path)
            try:
                seen["hmp-status"] = hmp.command("info status")
                seen["hmp-registers"] = hmp.command("info registers")
                seen["hmp-block"] = hmp.command("info block")
            finally:
                hmp.close()

            await client.execute("cont")
            seen["resume-again"] = await _event(client, "RESUME")
            last = frozen_at[-1]
            await _until(lambda: _ticks(run)[-1] >= last + 3, "ticks after cont", run, timeout=60)

            await client.execute("system_reset")
            seen["reset"] = await _event(client, "RESET")
            seen["after-reset"] = await client.execute("query-status")
            await _until(lambda: _ticks(run).count(1) >= 2, "the guest ticking again after the reset", run)

            await client.execute("quit")
            seen["shutdown"] = await _event(client, "SHUTDOWN")
            return seen

        seen = with_qmp(run.qmp_path, body, timeout=4 * BOOT_TIMEOUT, expect_hangup=True)
        assert run.wait_exit(60) == 0, run.output()[-3000:]
    finally:
        run.close()

    assert seen["prelaunch"]["status"] == "prelaunch"
    assert seen["running"] == {"running": True, "singlestep": False, "status": "running"}
    assert seen["paused"] == {"running": False, "singlestep": False, "status": "paused"}
    assert seen["stop"]["data"] == {} and seen["resume"]["data"] == {}

    before, after = seen["frozen"]
    assert before == after, f"the guest printed while stopped: {before[-3:]} -> {after[-3:]}"

    assert seen["hmp-status"] == "VM status: paused\n"
    assert "RIP=" in seen["hmp-registers"] and "CR0=" in seen["hmp-registers"]
    assert seen["hmp-block"].startswith(f"disk0: {disk} (raw)")

    (block,) = seen["block"]
    assert block["device"] == "disk0" and block["inserted"]["image"]["virtual-size"] == 1 << 20
    (stats,) = seen["blockstats"]
    assert stats["stats"]["rd_operations"] > 0 and stats["stats"]["rd_bytes"] >= 8 * 4096
    devices = seen["pci"][0]["devices"]
    blk = [d for d in devices if d["id"]["vendor"] == 0x1AF4 and d["class_info"]["class"] == 0x0100]
    assert len(blk) == 1 and blk[0]["regions"]

    assert seen["reset"]["data"] == {"guest": False, "reason": "host-qmp-system-reset"}
    assert seen["after-reset"]["status"] == "running"
    assert seen["shutdown"]["data"] == {"guest": False, "reason": "host-qmp-quit"}
