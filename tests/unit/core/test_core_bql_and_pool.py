"""BQL ownership rules and the worker pool's needs_bql / bql_released contract."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from kvmkit.core.bql import Bql, DeviceLock
from kvmkit.core.worker_pool import WorkerPool


@pytest.fixture
def bql() -> Bql:
    return Bql()


@pytest.fixture
def pool(bql: Bql) -> Iterator[WorkerPool]:
    workers = WorkerPool(bql, max_workers=2)
    yield workers
    workers.shutdown()


def held_elsewhere(lock: Bql) -> bool:
    result: list[bool] = []
    thread = threading.Thread(target=lambda: result.append(lock.held_by_current_thread()))
    thread.start()
    thread.join()
    return result[0]


def test_bql_reports_the_owning_thread_only(bql: Bql) -> None:
    with bql:
        assert bql.held_by_current_thread()
        assert not held_elsewhere(bql)
    assert not bql.held_by_current_thread()


def test_bql_is_reentrant_and_released_restores_the_depth(bql: Bql) -> None:
    with bql, bql:
        with bql.released():
            assert not bql.held_by_current_thread()
            assert bql.acquire(timeout=0)  # free now, we can take and give it back
            bql.release()
        assert bql.held_by_current_thread()
        bql.release()
        assert bql.held_by_current_thread()  # second level still held
        bql.acquire()


def test_releasing_a_lock_not_held_raises(bql: Bql) -> None:
    with pytest.raises(RuntimeError, match="BQL"):
        bql.release()


def test_device_lock_is_reentrant_and_named() -> None:
    lock = DeviceLock("virtio-blk0")
    with lock, lock:
        assert lock.held_by_current_thread()
    assert "virtio-blk0" in lock.name


def test_task_needing_bql_runs_holding_it(bql: Bql, pool: WorkerPool) -> None:
    assert pool.submit(bql.held_by_current_thread).result(timeout=5) is True


def test_task_not_needing_bql_runs_without_it(bql: Bql, pool: WorkerPool) -> None:
    assert pool.submit(bql.held_by_current_thread, needs_bql=False).result(timeout=5) is False


def test_task_not_needing_bql_runs_while_another_thread_holds_it(bql: Bql, pool: WorkerPool) -> None:
    with bql:
        assert pool.submit(lambda: "done", needs_bql=False).result(timeout=5) == "done"


def test_bql_released_lets_another_thread_take_the_bql(bql: Bql, pool: WorkerPool) -> None:
    sleeping = threading.Event()
    may_wake = threading.Event()

    def blocking_task() -> bool:
        with pool.bql_released():
            sleeping.set()
            may_wake.wait(5)
        return bql.held_by_current_thread()

    future = pool.submit(blocking_task)
    assert sleeping.wait(5)
    assert bql.acquire(timeout=2)
    bql.release()
    may_wake.set()
    assert future.result(timeout=5) is True


def test_exception_in_a_task_surfaces_in_its_future(pool: WorkerPool) -> None:
    def failing() -> None:
        raise ValueError("disk on fire")

    with pytest.raises(ValueError, match="disk on fire"):
        pool.submit(failing).result(timeout=5)


def test_exception_in_a_task_releases_the_bql(bql: Bql, pool: WorkerPool) -> None:
    pool.submit(lambda: 1 / 0).exception(timeout=5)
    assert bql.acquire(timeout=1)
    bql.release()


def test_submit_passes_arguments(pool: WorkerPool) -> None:
    assert pool.submit(pow, 2, 10).result(timeout=5) == 1024


def test_shutdown_waits_for_running_tasks(bql: Bql) -> None:
    workers = WorkerPool(bql, max_workers=1)
    finished: list[bool] = []
    workers.submit(lambda: (time.sleep(0.05), finished.append(True)), needs_bql=False)
    workers.shutdown(wait=True)
    assert finished == [True]


def test_submit_nowait_runs_without_bql_and_survives_a_failing_task(bql: Bql, pool: WorkerPool) -> None:
    seen: list[bool] = []
    done = threading.Event()
    pool.submit_nowait(lambda: 1 / 0)
    pool.submit_nowait(lambda: (seen.append(bql.held_by_current_thread()), done.set()))
    assert done.wait(5)
    assert seen == [False]


def test_shutdown_without_wait_cancels_queued_tasks(bql: Bql) -> None:
    workers = WorkerPool(bql, max_workers=1)
    gate, started = threading.Event(), threading.Event()
    running = workers.submit(lambda: (started.set(), gate.wait(5))[1], needs_bql=False)
    assert started.wait(5)
    queued = workers.submit(lambda: "never", needs_bql=False)
    workers.shutdown(wait=False)
    gate.set()
    assert running.result(timeout=5) is True
    assert queued.cancelled()
    with pytest.raises(RuntimeError):
        workers.submit(lambda: None)
