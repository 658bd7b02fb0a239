"""Main loop: timer order, fd readiness, bottom halves from other threads, callbacks under the BQL."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import pytest

from kvmkit.core.bql import Bql
from kvmkit.core.main_loop import MainLoop


@pytest.fixture
def bql() -> Bql:
    return Bql()


@pytest.fixture
def loop(bql: Bql) -> Iterator[MainLoop]:
    main_loop = MainLoop(bql)
    main_loop.call_later(5, main_loop.stop)  # watchdog: a broken test ends instead of hanging
    yield main_loop
    main_loop.close()


def run_in_thread(loop: MainLoop) -> threading.Thread:
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    return thread


def test_timers_fire_in_deadline_order(loop: MainLoop) -> None:
    fired: list[str] = []
    loop.call_later(0.03, lambda: (fired.append("third"), loop.stop()))
    loop.call_later(0.01, lambda: fired.append("first"))
    loop.call_later(0.02, lambda: fired.append("second"))
    loop.run()
    assert fired == ["first", "second", "third"]


def test_timer_does_not_fire_early(loop: MainLoop) -> None:
    start = time.monotonic()
    fired_at: list[float] = []
    loop.call_later(0.05, lambda: (fired_at.append(time.monotonic()), loop.stop()))
    loop.run()
    assert fired_at[0] - start >= 0.05


def test_cancelled_timer_does_not_fire(loop: MainLoop) -> None:
    fired: list[str] = []
    loop.call_later(0.01, lambda: fired.append("cancelled")).cancel()
    loop.call_later(0.02, loop.stop)
    loop.run()
    assert fired == []


def test_reader_callback_runs_when_fd_becomes_readable(loop: MainLoop) -> None:
    read_end, write_end = os.pipe()
    received: list[bytes] = []

    def on_readable() -> None:
        received.append(os.read(read_end, 100))
        loop.stop()

    loop.add_reader(read_end, on_readable)
    thread = run_in_thread(loop)
    time.sleep(0.02)
    assert received == []
    os.write(write_end, b"ping")
    thread.join(5)
    os.close(read_end)
    os.close(write_end)
    assert received == [b"ping"]


def test_removed_reader_is_not_called(loop: MainLoop) -> None:
    read_end, write_end = os.pipe()
    called: list[bool] = []
    loop.add_reader(read_end, lambda: called.append(True))
    loop.remove_reader(read_end)
    os.write(write_end, b"x")
    loop.call_later(0.02, loop.stop)
    loop.run()
    os.close(read_end)
    os.close(write_end)
    assert called == []


def test_a_reader_removed_by_an_earlier_callback_of_the_same_wakeup_is_not_called(loop: MainLoop) -> None:
    pipes = [os.pipe(), os.pipe()]
    called: list[int] = []

    def first_removes_the_other(index: int) -> None:
        called.append(index)
        loop.remove_reader(pipes[1 - index][0])
        loop.stop()

    for index, (read_end, write_end) in enumerate(pipes):
        loop.add_reader(read_end, lambda index=index: first_removes_the_other(index))
        os.write(write_end, b"x")  # both readable before the loop's one wait
    loop.run()
    for read_end, write_end in pipes:
        os.close(read_end)
        os.close(write_end)
    assert len(called) == 1


def test_a_reader_watched_twice_is_refused_and_a_closed_one_is_removed_quietly(loop: MainLoop) -> None:
    read_end, write_end = os.pipe()
    loop.add_reader(read_end, lambda: None)
    with pytest.raises(KeyError):
        loop.add_reader(read_end, lambda: None)
    os.close(read_end)
    os.close(write_end)
    loop.remove_reader(read_end)  # the kernel already dropped it from the epoll set
    loop.remove_reader(read_end)
    again_read, again_write = os.pipe()  # may reuse the number: watching it again works
    hits: list[bool] = []
    loop.add_reader(again_read, lambda: (hits.append(True), loop.stop()))
    os.write(again_write, b"x")
    loop.run()
    os.close(again_read)
    os.close(again_write)
    assert hits == [True]


def test_call_soon_runs_after_the_ready_fds_and_again_only_after_a_fresh_look_at_them(loop: MainLoop) -> None:
    read_end, write_end = os.pipe()
    order: list[str] = []

    def readable() -> None:
        os.read(read_end, 1)
        order.append("fd")
        loop.call_soon(first_look)

    def first_look() -> None:
        order.append("soon")
        os.write(write_end, b"y")  # readable again before the next bottom half
        loop.remove_reader(read_end)
        loop.add_reader(read_end, lambda: (os.read(read_end, 1), order.append("fd again")))
        loop.call_soon(lambda: (order.append("soon again"), loop.stop()))

    loop.add_reader(read_end, readable)
    os.write(write_end, b"x")
    loop.run()
    os.close(read_end)
    os.close(write_end)
    assert order == ["fd", "soon", "fd again", "soon again"]
    assert len(loop._timers) == 1  # only the fixture's watchdog: call_soon queued no timer


def test_call_soon_threadsafe_wakes_the_loop_and_runs_in_the_loop_thread(loop: MainLoop) -> None:
    ran_in: list[int] = []
    thread = run_in_thread(loop)
    time.sleep(0.02)

    def bottom_half() -> None:
        ran_in.append(threading.get_ident())
        loop.stop()

    threading.Thread(target=loop.call_soon_threadsafe, args=(bottom_half,)).start()
    thread.join(5)
    assert ran_in == [thread.ident]


def test_call_later_from_another_thread_wakes_a_sleeping_loop(loop: MainLoop) -> None:
    fired_at: list[float] = []
    thread = run_in_thread(loop)
    time.sleep(0.02)
    start = time.monotonic()
    loop.call_later(0.01, lambda: (fired_at.append(time.monotonic()), loop.stop()))
    thread.join(5)
    assert fired_at and fired_at[0] - start < 1.0


def test_every_callback_runs_holding_the_bql(bql: Bql, loop: MainLoop) -> None:
    held: list[bool] = []
    read_end, write_end = os.pipe()
    os.write(write_end, b"x")

    def on_readable() -> None:
        os.read(read_end, 1)
        held.append(bql.held_by_current_thread())
        loop.remove_reader(read_end)

    loop.add_reader(read_end, on_readable)
    loop.call_soon_threadsafe(lambda: held.append(bql.held_by_current_thread()))
    loop.call_later(0.01, lambda: (held.append(bql.held_by_current_thread()), loop.stop()))
    loop.run()
    os.close(read_end)
    os.close(write_end)
    assert held == [True, True, True]


def test_the_loop_waits_without_the_bql(bql: Bql, loop: MainLoop) -> None:
    thread = run_in_thread(loop)
    time.sleep(0.02)
    assert bql.acquire(timeout=1)
    bql.release()
    loop.stop()
    thread.join(5)
    assert not thread.is_alive()


def test_a_failing_callback_is_reported_and_the_loop_continues(bql: Bql) -> None:
    errors: list[BaseException] = []
    loop = MainLoop(bql, on_error=errors.append)
    loop.call_soon_threadsafe(lambda: 1 / 0)
    loop.call_later(0.01, loop.stop)
    loop.run()
    loop.close()
    assert len(errors) == 1 and isinstance(errors[0], ZeroDivisionError)
