"""vCPU threads: exits handled under the BQL, pause/resume/stop, errors reported (fake vCPUs)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from kvmkit.accel.kvm.ioctls import ExitReason
from kvmkit.core.bql import Bql
from kvmkit.core.cpus import CpuSet


class FakeVcpu:
    """Exits with KVM_EXIT_IO every millisecond until kicked; records lock state while 'in the guest'."""

    def __init__(self, index: int, bql: Bql) -> None:
        self.index = index
        self.bql = bql
        self.kicked = threading.Event()
        self.in_run = False
        self.bql_held_in_run = False
        self.completed_before_park = False

    def bind_to_current_thread(self) -> None:
        pass

    def run(self) -> int:
        self.in_run = True
        self.bql_held_in_run |= self.bql.held_by_current_thread()
        try:
            if self.kicked.wait(0.001):
                self.kicked.clear()
                return ExitReason.INTR
            return ExitReason.IO
        finally:
            self.in_run = False

    def kick(self) -> None:
        self.kicked.set()

    def complete_pending_exit(self) -> None:
        self.completed_before_park = True


class Recorder:
    def __init__(self, bql: Bql) -> None:
        self.bql = bql
        self.exits: dict[int, int] = {}
        self.bql_held: set[bool] = set()
        self.errors: list[tuple[int, BaseException]] = []
        self.lock = threading.Lock()

    def handle_exit(self, vcpu: FakeVcpu) -> bool:
        self.bql_held.add(self.bql.held_by_current_thread())
        with self.lock:
            self.exits[vcpu.index] = self.exits.get(vcpu.index, 0) + 1
        return True

    def on_error(self, index: int, error: BaseException) -> None:
        self.errors.append((index, error))

    def total(self) -> int:
        with self.lock:
            return sum(self.exits.values())


def wait_for(condition, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.005)
    return False


@dataclass
class Rig:
    bql: Bql
    recorder: Recorder
    vcpus: list[FakeVcpu]
    cpus: CpuSet


@pytest.fixture
def rig() -> Iterator[Rig]:
    bql = Bql()
    recorder = Recorder(bql)
    vcpus = [FakeVcpu(i, bql) for i in range(3)]
    cpus = CpuSet(vcpus, bql, recorder.handle_exit, recorder.on_error)
    yield Rig(bql, recorder, vcpus, cpus)
    assert cpus.stop_all(timeout=5)


def test_exits_are_handled_holding_the_bql_and_run_happens_without_it(rig: Rig) -> None:
    recorder = rig.recorder
    vcpus = rig.vcpus
    cpus = rig.cpus
    cpus.start()
    assert wait_for(lambda: len(recorder.exits) == 3)
    assert recorder.bql_held == {True}
    assert not any(v.bql_held_in_run for v in vcpus)


def test_pause_all_returns_with_every_vcpu_parked_outside_run(rig: Rig) -> None:
    recorder = rig.recorder
    vcpus = rig.vcpus
    cpus = rig.cpus
    cpus.start()
    assert wait_for(lambda: recorder.total() > 10)
    cpus.pause_all()
    assert cpus.paused
    assert not any(v.in_run for v in vcpus)
    assert all(v.completed_before_park for v in vcpus)
    count = recorder.total()
    time.sleep(0.05)
    assert recorder.total() == count


def test_resume_all_lets_vcpus_run_again(rig: Rig) -> None:
    recorder = rig.recorder
    cpus = rig.cpus
    cpus.start()
    cpus.pause_all()
    count = recorder.total()
    cpus.resume_all()
    assert wait_for(lambda: recorder.total() > count + 10)
    assert not cpus.paused


def test_pause_all_while_holding_the_bql_does_not_deadlock(rig: Rig) -> None:
    bql = rig.bql
    recorder = rig.recorder
    cpus = rig.cpus
    cpus.start()
    assert wait_for(lambda: recorder.total() > 3)
    with bql:
        cpus.pause_all()
        assert bql.held_by_current_thread()
    assert cpus.paused


def test_pause_all_before_start_parks_vcpus_immediately(rig: Rig) -> None:
    recorder = rig.recorder
    cpus = rig.cpus
    cpus.pause_all()
    cpus.start()
    time.sleep(0.03)
    assert recorder.total() == 0
    assert wait_for(lambda: all(t.parked for t in cpus.threads))


def test_pause_all_from_an_exit_handler_pauses_every_vcpu(rig: Rig) -> None:
    cpus = rig.cpus
    paused_from_handler = threading.Event()

    def handle_exit(vcpu: FakeVcpu) -> bool:
        if vcpu.index == 1 and not paused_from_handler.is_set():
            cpus.pause_all()
            paused_from_handler.set()
        return True

    cpus.handle_exit = handle_exit
    cpus.start()
    assert paused_from_handler.wait(5)
    assert wait_for(lambda: cpus.paused)


def test_exception_in_a_handler_is_reported_with_the_vcpu_index(rig: Rig) -> None:
    recorder = rig.recorder
    cpus = rig.cpus

    def handle_exit(vcpu: FakeVcpu) -> bool:
        if vcpu.index == 2:
            raise RuntimeError("device model bug")
        return True

    cpus.handle_exit = handle_exit
    cpus.start()
    assert wait_for(lambda: recorder.errors)
    index, error = recorder.errors[0]
    assert index == 2 and str(error) == "device model bug"
    assert wait_for(lambda: cpus.threads[2].finished)
    cpus.pause_all()  # a dead vCPU does not block pausing the others
    assert cpus.paused


def test_handler_returning_false_stops_only_that_vcpu(rig: Rig) -> None:
    recorder = rig.recorder
    cpus = rig.cpus
    cpus.handle_exit = lambda vcpu: vcpu.index != 0
    cpus.start()
    assert wait_for(lambda: cpus.threads[0].finished)
    time.sleep(0.02)
    assert not cpus.threads[1].finished and not cpus.threads[2].finished
    assert recorder.errors == []


def test_stop_all_joins_every_thread(rig: Rig) -> None:
    cpus = rig.cpus
    cpus.start()
    assert cpus.stop_all(timeout=5)
    assert all(not t.thread.is_alive() for t in cpus.threads)


def test_application_processors_reach_kvm_run_before_the_bootstrap_processor_starts() -> None:
    bql = Bql()
    recorder = Recorder(bql)
    aps_ready_at_bsp_start: list[bool] = []
    holder: list[CpuSet] = []

    class OrderedVcpu(FakeVcpu):
        def run(self) -> int:
            if self.index == 0 and not aps_ready_at_bsp_start:
                aps_ready_at_bsp_start.append(all(t.entering.is_set() for t in holder[0].threads[1:]))
            return super().run()

    vcpus = [OrderedVcpu(i, bql) for i in range(4)]
    cpus = CpuSet(vcpus, bql, recorder.handle_exit, recorder.on_error)
    holder.append(cpus)
    cpus.start()
    try:
        deadline = time.monotonic() + 5
        while not aps_ready_at_bsp_start and time.monotonic() < deadline:
            time.sleep(0.01)
        assert aps_ready_at_bsp_start == [True]  # the BSP (which sends INIT/SIPI) ran only after every AP got there
    finally:
        assert cpus.stop_all(timeout=5)
