"""virtio-blk under a Linux-like driver: many requests in flight on a real worker pool, every completion checked.

The "guest" thread posts 1 MiB requests scattered over 4 KiB pages (indirect tables, some pages physically
contiguous) and 4 KiB ones (some as plain chains), recycles heads LIFO as soon as they complete (Linux's free
list), kicks and re-arms interrupts with EVENT_IDX, and checks each used entry (an outstanding head, never
twice), the data read back, and that free pages (filled with a canary) are never written behind its back.
"""

from __future__ import annotations

import os
import random
import struct
import threading
import time
from dataclasses import dataclass, field

import pytest

from harness.qtest import DriverQueue, QtestMachine, VirtioPciDriver
from kvmkit.block.formats.qcow2.create import create_qcow2
from kvmkit.block.open import open_image
from kvmkit.core.bql import Bql
from kvmkit.core.worker_pool import WorkerPool
from kvmkit.hw.virtio.blk import VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VirtioBlk
from kvmkit.hw.virtio.pci_transport import VirtioPciTransport
from kvmkit.hw.virtio.virtqueue import VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE

PAGE = 4096
BIG = 1 << 20
DISK = 24 << 20
DEPTH = 64
QUEUE_SIZE = 256
RAM = 160 << 20
POOL_PAGES = DEPTH * (BIG // PAGE) + 2048
CANARY = bytes([0xA5]) * PAGE
STATUS_UNSET = 0xEE
_desc = struct.Struct("<QIHH")
_header = struct.Struct("<IIQ")


def need_event(event: int, new: int, old: int) -> bool:
    """vring_need_event: did the index move past `event` going from `old` to `new`?"""
    return ((new - event - 1) & 0xFFFF) < ((new - old) & 0xFFFF)


@dataclass
class Posted:
    """One request the guest has in flight."""

    head: int
    descs: list[int]
    kind: int
    offset: int
    pages: list[int]
    slot: int
    table: int | None
    posted_at: int = 0
    extra: dict[str, int] = field(default_factory=dict)


class LinuxLikeGuest:
    """The driver half: descriptor free list, page pool, request slots (header + status, like virtblk_req)."""

    def __init__(self, machine: QtestMachine, queue: DriverQueue, kick: threading.Event, rng: random.Random) -> None:
        self.m, self.q, self.rng = machine, queue, rng
        self.kick_event = kick
        region = next(r for r in machine.memory.regions if r.gpa == 1 << 20)  # every test structure lives here
        self.mem, self.base = region.view, region.gpa
        alloc = machine.allocator
        self.slots = [alloc.alloc(64, 64) for _ in range(DEPTH)]  # header at +0, status at +16
        self.tables = [alloc.alloc(16 * (BIG // PAGE + 2), 16) for _ in range(DEPTH)]
        self.pool_base = alloc.alloc(POOL_PAGES * PAGE, PAGE)
        self.free_slots = list(range(DEPTH))
        self.free_descs = list(range(QUEUE_SIZE))[::-1]  # pop() takes from the end: LIFO like Linux
        chunks = [list(range(i, min(i + 8, POOL_PAGES))) for i in range(0, POOL_PAGES, 8)]
        rng.shuffle(chunks)
        self.free_pages = [p for chunk in chunks for p in reversed(chunk)]
        for p in range(POOL_PAGES):
            self._page(p)[:] = CANARY
        self.outstanding: dict[int, Posted] = {}
        self.avail_idx = 0
        self.last_used = 0
        self.irq = threading.Event()
        self.errors: list[str] = []
        self.serial = 0

    # memory helpers ------------------------------------------------------------------------------

    def _page(self, p: int) -> memoryview:
        at = self.pool_base + p * PAGE
        return self.mem[at - self.base : at - self.base + PAGE]

    def _u16(self, addr: int) -> int:
        return struct.unpack_from("<H", self.mem, addr - self.base)[0]

    def _set_u16(self, addr: int, value: int) -> None:
        struct.pack_into("<H", self.mem, addr - self.base, value)

    # submission ----------------------------------------------------------------------------------

    def can_post(self, pieces: int) -> bool:
        return bool(self.free_slots) and len(self.free_descs) >= pieces

    def post(self, kind: int, offset: int, length: int, expected: bytes, indirect: bool) -> None:
        slot = self.free_slots.pop()
        pages = [self.free_pages.pop() for _ in range(length // PAGE)]
        for p in pages:
            page = self._page(p)
            if page != CANARY:
                self.errors.append(f"free page {p} was written while free")
            if kind == VIRTIO_BLK_T_OUT:
                at = offset + (len(pages) and pages.index(p)) * PAGE
                page[:] = expected[at : at + PAGE]
        hdr = self.slots[slot]
        _header.pack_into(self.mem, hdr - self.base, kind, 0, offset // 512)
        self.mem[hdr + 16 - self.base] = STATUS_UNSET
        write = VIRTQ_DESC_F_WRITE if kind == VIRTIO_BLK_T_IN else 0
        segments = self._segments(pages, merge=self.rng.random() < 0.3)
        chain = [(hdr, 16, 0), *((addr, n, write) for addr, n in segments), (hdr + 16, 1, VIRTQ_DESC_F_WRITE)]
        desc_table = self.q.desc
        if indirect:
            table = self.tables[slot]
            for i, (addr, n, flags) in enumerate(chain):
                last = i == len(chain) - 1
                flags |= 0 if last else VIRTQ_DESC_F_NEXT
                _desc.pack_into(self.mem, table + 16 * i - self.base, addr, n, flags, i + 1)
            head = self.free_descs.pop()
            at = desc_table + 16 * head - self.base
            _desc.pack_into(self.mem, at, table, 16 * len(chain), VIRTQ_DESC_F_INDIRECT, 0)
            descs = [head]
        else:
            descs = [self.free_descs.pop() for _ in chain]
            for i, (addr, n, flags) in enumerate(chain):
                last = i == len(chain) - 1
                nxt = 0 if last else descs[i + 1]
                _desc.pack_into(self.mem, desc_table + 16 * descs[i] - self.base, addr, n,
                                flags | (0 if last else VIRTQ_DESC_F_NEXT), nxt)
            head = descs[0]
        if head in self.outstanding:
            self.errors.append(f"guest bug: head {head} reused while outstanding")
        self.outstanding[head] = Posted(head, descs, kind, offset, pages, slot, None)
        avail = self.q.avail
        self._set_u16(avail + 4 + 2 * (self.avail_idx % QUEUE_SIZE), head)
        old = self.avail_idx
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        self._set_u16(avail + 2, self.avail_idx)  # Linux: wmb, then idx
        avail_event = self._u16(self.q.used + 4 + 8 * QUEUE_SIZE)
        if need_event(avail_event, self.avail_idx, old):
            self.kick_event.set()

    def _segments(self, pages: list[int], merge: bool) -> list[tuple[int, int]]:
        """One descriptor per page, or (like the block layer) physically contiguous pages merged."""
        out: list[tuple[int, int]] = []
        for p in pages:
            addr = self.pool_base + p * PAGE
            if merge and out and out[-1][0] + out[-1][1] == addr:
                out[-1] = (out[-1][0], out[-1][1] + PAGE)
            else:
                out.append((addr, PAGE))
        return out

    # completion ----------------------------------------------------------------------------------

    def reap(self, expected: bytes) -> int:
        """Take every new used entry, check it, free its descriptors, slot and pages; re-arm used_event."""
        done = 0
        used = self.q.used
        while True:
            idx = self._u16(used + 2)
            while self.last_used != idx:
                at = used + 4 + 8 * (self.last_used % QUEUE_SIZE)
                head, length = struct.unpack_from("<II", self.mem, at - self.base)
                self.last_used = (self.last_used + 1) & 0xFFFF
                request = self.outstanding.pop(head, None)
                if request is None:
                    self.errors.append(f"used entry {(self.last_used - 1) & 0xFFFF}: id {head} is not a head")
                    return done
                self._check(request, length, expected)
                self._free(request)
                done += 1
            self._set_u16(self.q.avail + 4 + 2 * QUEUE_SIZE, self.last_used)  # virtqueue_enable_cb
            if self._u16(used + 2) == idx:
                return done

    def _check(self, request: Posted, length: int, expected: bytes) -> None:
        status = self.mem[self.slots[request.slot] + 16 - self.base]
        if status != VIRTIO_BLK_S_OK:
            self.errors.append(f"head {request.head}: status {status}")
        if request.kind == VIRTIO_BLK_T_IN:
            if length != len(request.pages) * PAGE + 1:
                self.errors.append(f"head {request.head}: used len {length}")
            for i, p in enumerate(request.pages):
                at = request.offset + i * PAGE
                if self._page(p) != expected[at : at + PAGE]:
                    self.errors.append(f"head {request.head}: read at {at:#x} (page {p}) returned wrong data")
                    break

    def _free(self, request: Posted) -> None:
        for p in request.pages:
            self._page(p)[:] = CANARY
        self.free_pages.extend(reversed(request.pages))
        self.free_descs.extend(reversed(request.descs))
        self.free_slots.append(request.slot)


def run_phase(guest: LinuxLikeGuest, kind: int, expected: bytes, deadline: float) -> None:
    """Sequential 1 MiB requests over the disk, with random 4 KiB ones mixed in, up to DEPTH in flight."""
    rng = guest.rng
    sequential = 0
    while (sequential < DISK or guest.outstanding) and not guest.errors:
        if time.monotonic() > deadline:
            guest.errors.append(f"stuck: {len(guest.outstanding)} in flight, used idx {guest._u16(guest.q.used + 2)}")
            return
        posted = False
        while sequential < DISK and len(guest.outstanding) < DEPTH and not guest.errors:
            small = rng.random() < 0.3
            indirect = not small or rng.random() < 0.5
            pieces = 1 if indirect else 3
            if not guest.can_post(pieces):
                break
            if small:
                guest.post(kind, rng.randrange(DISK // PAGE) * PAGE, PAGE, expected, indirect)
            else:
                guest.post(kind, sequential, BIG, expected, indirect)
                sequential += BIG
            posted = True
        if not guest.reap(expected) and not posted:
            guest.irq.wait(0.002)
            guest.irq.clear()


def watch_used_idx(m: QtestMachine, used: int, stop_at: int) -> tuple[int, int]:
    """Fork a "vCPU" that polls the used idx like Linux's more_used() (no GIL shared with the device) until the
    word at `stop_at` turns non-zero; it reports every time the index moved backwards. Returns (pid, read fd)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid:
        os.close(write_fd)
        return pid, read_fd
    try:
        words = m.dma.view(used, 4).cast("H")
        stop = m.dma.view(stop_at, 2).cast("H")
        backwards, prev = 0, words[1]
        while not stop[0]:
            for _ in range(1000):
                idx = words[1]
                if 0 < ((prev - idx) & 0xFFFF) < 0x8000:
                    backwards += 1
                prev = idx
        os.write(write_fd, str(backwards).encode())
    finally:
        os._exit(0)


def stress(tmp_path, fmt: str, seed: int, phases: int = 4) -> list[str]:
    path = str(tmp_path / f"disk.{fmt}")
    if fmt == "qcow2":
        create_qcow2(path, DISK)
    else:
        with open(path, "wb") as f:
            f.truncate(DISK)
    bql = Bql()
    pool = WorkerPool(bql, max_workers=4)
    driver = open_image(path, fmt)
    kick = threading.Event()
    stop = threading.Event()
    try:
        m = QtestMachine(RAM, ram_backend="memfd")
        m.allocator.next = 1 << 20
        stop_word = m.allocator.alloc(2, 2)
        blk = VirtioBlk("vda", driver, m.dma, bql=bql, pool=pool, queue_size=QUEUE_SIZE)
        transport = VirtioPciTransport(blk, m.msi)
        queue = VirtioPciDriver(m, m.plug(transport)).initialize(msix=True)[0]
        assert blk.queues[0].event_idx and blk.queues[0].indirect
        guest = LinuxLikeGuest(m, queue, kick, random.Random(seed))
        m.msi.send_msi = lambda address, data: guest.irq.set()

        def main_loop() -> None:  # the ioeventfd handler: kicks served on their own thread, holding the BQL
            while not stop.is_set():
                if kick.wait(0.01):
                    kick.clear()
                    with bql:
                        transport.handle_notify(0)

        watcher, report = watch_used_idx(m, queue.used, stop_word)  # before any thread starts
        loop = threading.Thread(target=main_loop, name="main-loop")
        loop.start()
        try:
            deadline = time.monotonic() + 60
            for phase in range(phases):
                if phase % 2 == 0:
                    expected = os.urandom(DISK)
                run_phase(guest, VIRTIO_BLK_T_OUT if phase % 2 == 0 else VIRTIO_BLK_T_IN, expected, deadline)
                if guest.errors:
                    break
        finally:
            stop.set()
            loop.join()
            m.dma.st16_le(stop_word, 1)
            backwards = int(os.read(report, 64) or b"0")
            os.close(report)
            os.waitpid(watcher, 0)
        if backwards:
            guest.errors.append(f"a polling vCPU saw the used idx move backwards {backwards} times")
        return guest.errors
    finally:
        pool.shutdown()
        driver.close()


@pytest.mark.parametrize("fmt", ["qcow2", "raw"])
def test_many_requests_in_flight_complete_once_with_the_right_data(tmp_path, fmt):
    errors = stress(tmp_path, fmt, seed=1)
    assert not errors, errors[:5]

