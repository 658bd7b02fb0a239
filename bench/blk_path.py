"""Host-side microbenchmark of the virtio-blk request path (no guest, no KVM).

    .venv/bin/python -m bench.blk_path [--requests N] [--profile] [--jobs rand-read-4K,...] [--formats raw,qcow2]

A fake guest driver (Linux-like: indirect descriptors, EVENT_IDX, MSI-X) keeps `iodepth` requests in flight on a
virtio-blk device plugged into the qtest machine, with the real BQL, main loop (kicks arrive through an eventfd,
like a KVM ioeventfd) and worker pool. Reported: microseconds of wall time per request, end to end (avail ring ->
used ring + interrupt). The driver side is a few struct.pack_into calls per request, so nearly all of the time is
kvmkit's. `--profile` runs the same requests synchronously (no pool, kick handled inline) under cProfile.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import random
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from bench.block import make_images
from harness.qtest import QtestMachine, VirtioPciDriver
from kvmkit.block.open import open_image
from kvmkit.core.bql import Bql
from kvmkit.core.main_loop import MainLoop
from kvmkit.core.worker_pool import WorkerPool
from kvmkit.hw.virtio.blk import VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VirtioBlk
from kvmkit.hw.virtio.pci_transport import VirtioPciTransport
from kvmkit.hw.virtio.virtqueue import VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE

DISK_MIB = 64
QUEUE_SIZE = 256
# name -> (request type, block size, iodepth, random offsets)
JOBS = {
    "rand-read-4K": (VIRTIO_BLK_T_IN, 4096, 32, True),
    "rand-read-4K-qd1": (VIRTIO_BLK_T_IN, 4096, 1, True),
    "seq-read-1M": (VIRTIO_BLK_T_IN, 1 << 20, 8, False),
    "seq-write-1M": (VIRTIO_BLK_T_OUT, 1 << 20, 8, False),
}
_DESC = struct.Struct("<QIHH")
_HDR = struct.Struct("<IIQ")


class _FakeVm:
    """Accepts ioeventfd registrations (the bench kicks the eventfd itself)."""

    def ioeventfd(self, *args: object, **kwargs: object) -> None:
        pass


class _Interrupts:
    """MsiSink that wakes the fake guest."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.count = 0

    def send_msi(self, address: int, data: int) -> None:
        self.count += 1
        self.event.set()


def need_event(event: int, new: int, old: int) -> bool:
    return ((new - event - 1) & 0xFFFF) < ((new - old) & 0xFFFF)


class FakeGuest:
    """The driver half: prebuilt indirect chains, one per in-flight slot; submit/harvest through raw ring views."""

    def __init__(self, path: str, fmt: str, threaded: bool) -> None:
        self.machine = m = QtestMachine(ram_size=256 << 20)
        self.irqs = _Interrupts()
        m.msi = self.irqs  # type: ignore[assignment]
        self.bql = Bql()
        self.threaded = threaded
        self.pool = WorkerPool(self.bql, max_workers=4) if threaded else None
        self.driver = open_image(path, fmt)
        self.blk = VirtioBlk("vda", self.driver, m.dma, bql=self.bql, pool=self.pool, queue_size=QUEUE_SIZE)
        self.transport = VirtioPciTransport(self.blk, self.irqs)
        devfn = m.plug(self.transport)
        pci = VirtioPciDriver(m, devfn)
        self.queue = pci.initialize(msix=True)[0]
        self.loop: MainLoop | None = None
        if threaded:
            self.loop = MainLoop(self.bql)
            self.efd = self.transport.attach_ioeventfds(_FakeVm(), self.loop)[0]
            self.loop_thread = threading.Thread(target=self.loop.run, daemon=True)
            self.loop_thread.start()
        q = self.queue
        self.size = q.size
        self.avail = m.memory.view(q.avail, q.layout.avail_bytes)
        self.used = m.memory.view(q.used, q.layout.used_bytes)
        self.avail_idx = 0
        self.last_used = 0
        self.used_event_at = q.layout.used_event_offset
        self.avail_event_at = q.layout.avail_event_offset

    def close(self) -> None:
        if self.loop is not None:
            self.loop.stop()
            self.loop_thread.join()
            self.loop.close()
        if self.pool is not None:
            self.pool.shutdown()
        self.driver.close()
        self.machine.memory.close()

    def build_slots(self, depth: int, kind: int, block: int) -> list[int]:
        """One indirect chain per slot (header, data, status); returns the header addresses."""
        m, q = self.machine, self.queue
        m.allocator.next = max(m.allocator.next, 2 << 20)  # above the 640K-1M hole: 1 MiB buffers stay whole
        headers = []
        pages = max(1, block // 4096)  # like Linux: one descriptor per (non-contiguous) 4 KiB page
        data_flags = VIRTQ_DESC_F_WRITE if kind == VIRTIO_BLK_T_IN else 0
        for slot in range(depth):
            hdr = m.allocator.alloc(16, 16)
            data = m.allocator.alloc(2 * block if pages > 1 else block, 4096)
            status = m.allocator.alloc(1, 1)
            table = m.allocator.alloc(16 * (pages + 2), 16)
            view = m.memory.view(table, 16 * (pages + 2))
            _DESC.pack_into(view, 0, hdr, 16, VIRTQ_DESC_F_NEXT, 1)
            for page in range(pages):
                addr = data + 2 * 4096 * page if pages > 1 else data
                _DESC.pack_into(view, 16 * (1 + page), addr, min(block, 4096) if pages > 1 else block,
                                data_flags | VIRTQ_DESC_F_NEXT, 2 + page)
            _DESC.pack_into(view, 16 * (1 + pages), status, 1, VIRTQ_DESC_F_WRITE, 0)
            _DESC.pack_into(m.memory.view(q.desc + 16 * slot, 16), 0, table, 16 * (pages + 2),
                            VIRTQ_DESC_F_INDIRECT, 0)
            headers.append(hdr)
        return headers

    def kick(self) -> None:
        if self.threaded:
            os.eventfd_write(self.efd, 1)
        else:
            with self.bql:
                self.transport.handle_notify(0)

    def submit(self, slots: list[int]) -> None:
        avail, size, old = self.avail, self.size, self.avail_idx
        idx = old
        for slot in slots:
            struct.pack_into("<H", avail, 4 + 2 * (idx % size), slot)
            idx = (idx + 1) & 0xFFFF
        struct.pack_into("<H", avail, 2, idx)
        self.avail_idx = idx
        event = struct.unpack_from("<H", self.used, self.avail_event_at)[0]
        if need_event(event, idx, old):
            self.kick()

    def harvest(self) -> list[int]:
        """Used slots since the last call; re-arms the interrupt (used_event = last seen), like Linux."""
        used, size, done = self.used, self.size, []
        while True:
            idx = struct.unpack_from("<H", used, 2)[0]
            while self.last_used != idx:
                done.append(struct.unpack_from("<I", used, 4 + 8 * (self.last_used % size))[0])
                self.last_used = (self.last_used + 1) & 0xFFFF
            struct.pack_into("<H", self.avail, self.used_event_at, self.last_used)
            if struct.unpack_from("<H", used, 2)[0] == idx:
                return done

    def run(self, job: str, requests: int) -> float:
        """Serve `requests` requests of `job`; returns microseconds per request."""
        kind, block, depth, rand = JOBS[job]
        headers = self.build_slots(depth, kind, block)
        disk_blocks = self.driver.size // block
        rng = random.Random(1)
        mem = self.machine.memory
        position = 0

        def prepare(slot: int) -> None:
            nonlocal position
            if rand:
                sector = rng.randrange(disk_blocks) * block // 512
            else:
                sector, position = position * block // 512, (position + 1) % disk_blocks
            _HDR.pack_into(mem.view(headers[slot], 16), 0, kind, 0, sector)

        submitted = completed = 0
        started = time.perf_counter()
        first = list(range(min(depth, requests)))
        for slot in first:
            prepare(slot)
        submitted += len(first)
        outstanding = set(first)
        self.submit(first)
        deadline = time.monotonic() + 120
        while completed < requests:
            if self.threaded:
                if not self.irqs.event.wait(5):
                    raise TimeoutError(f"{job}: {completed}/{requests} done, no interrupt for 5 s")
                self.irqs.event.clear()
            done = self.harvest()
            for slot in done:
                if slot not in outstanding:
                    raise AssertionError(f"{job}: used id {slot} is not an outstanding head ({sorted(outstanding)})")
                outstanding.discard(slot)
            completed += len(done)
            again = done[: max(0, requests - submitted)]
            for slot in again:
                prepare(slot)
            submitted += len(again)
            if again:
                outstanding.update(again)
                self.submit(again)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{job}: too slow")
        elapsed = time.perf_counter() - started
        self.queue.last_used = self.last_used
        return elapsed / requests * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=4000, help="requests per 4K job (1M jobs: a tenth)")
    parser.add_argument("--jobs", default=",".join(JOBS))
    parser.add_argument("--formats", default="raw,qcow2")
    parser.add_argument("--profile", action="store_true", help="synchronous run under cProfile")
    parser.add_argument("--sync", action="store_true", help="synchronous run (no pool, no main loop thread)")
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kvmkit-blk-path-") as tmp:
        images = make_images(Path(tmp), DISK_MIB)
        for fmt in args.formats.split(","):
            for job in args.jobs.split(","):
                count = args.requests if JOBS[job][1] <= 4096 else max(args.requests // 10, 50)
                guest = FakeGuest(str(images[fmt]), fmt, threaded=not (args.profile or args.sync))
                try:
                    guest.run(job, min(count, 200))  # warm up (L2 cache, page cache)
                    if args.profile:
                        prof = cProfile.Profile()
                        prof.enable()
                        us = guest.run(job, count)
                        prof.disable()
                        print(f"== {fmt} {job}: {us:.1f} us/request (synchronous, profiled)")
                        pstats.Stats(prof).sort_stats("tottime").print_stats(args.top)
                    else:
                        us = guest.run(job, count)
                        irqs = guest.irqs.count
                        print(f"{fmt:6} {job:18} {us:8.1f} us/request  ({count} requests, {irqs} interrupts total)")
                finally:
                    guest.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
