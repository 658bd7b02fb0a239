"""vCPU threads: KVM_RUN without the BQL, exit dispatch with it, and clean pause/resume/stop.

Each vCPU thread loops: check for a pause/stop request, run the guest (no BQL, the GIL is
released by the ioctl), then take the BQL and hand the exit to `handle_exit(vcpu)`. Exits caused
by a kick (ExitReason.INTR) never reach the handler. A request is posted under the CpuSet's
condition and followed by vcpu.kick(); a parked thread waits on that condition.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from kvmkit.accel.kvm.ioctls import ExitReason
from kvmkit.core.bql import Bql

log = logging.getLogger(__name__)

_EXIT_INTR = int(ExitReason.INTR)


class RunnableVcpu(Protocol):
    """What a vCPU thread needs from a vCPU (KvmVcpu satisfies it)."""

    index: int

    def bind_to_current_thread(self) -> None: ...

    def run(self) -> int: ...

    def kick(self) -> None: ...

    def complete_pending_exit(self) -> None: ...


ExitHandler = Callable[[RunnableVcpu], bool]
ErrorHandler = Callable[[int, BaseException], None]


class VcpuThread:
    """One thread running one vCPU."""

    def __init__(self, vcpu: RunnableVcpu, cpus: CpuSet) -> None:
        self.vcpu = vcpu
        self.index = vcpu.index
        self._cpus = cpus
        self.pause_requested = False
        self.stop_requested = False
        self.request_pending = False  # pause_requested or stop_requested: the one flag the hot loop reads
        self.parked = False
        self.finished = False
        self.entering = threading.Event()  # set just before the first KVM_RUN (or when the thread ends)
        self.thread = threading.Thread(target=self._main, name=f"vcpu{self.index}", daemon=True)

    @property
    def quiescent(self) -> bool:
        """Out of KVM_RUN and staying out: parked, finished or never started."""
        return self.parked or self.finished or not self.thread.is_alive()

    def _main(self) -> None:
        cpus = self._cpus
        try:
            self.vcpu.bind_to_current_thread()
            self._loop(self.vcpu, cpus.bql, cpus.handle_exit)
        except BaseException as error:
            self._report(error)
        finally:
            self.entering.set()
            with cpus.condition:
                self.finished = True
                self.parked = False
                cpus.condition.notify_all()

    def _loop(self, vcpu: RunnableVcpu, bql: Bql, handle_exit: ExitHandler) -> None:
        run = vcpu.run
        lock = bql.lock  # the raw RLock: no Python frame per exit
        self.entering.set()
        while True:
            if self.request_pending and not self._park():
                return
            if run() == _EXIT_INTR:
                continue
            with lock:
                if not handle_exit(vcpu):
                    return

    def _park(self) -> bool:
        """Wait while paused; False when the thread must stop."""
        condition = self._cpus.condition
        if self.pause_requested and not self.stop_requested:
            self.vcpu.complete_pending_exit()  # saved state must not miss a half-done PIO/MMIO
        with condition:
            while self.pause_requested and not self.stop_requested:
                if not self.parked:
                    self.parked = True
                    condition.notify_all()
                condition.wait()
            self.parked = False
            return not self.stop_requested

    def _report(self, error: BaseException) -> None:
        log.error("vcpu%d: exit handling failed", self.index, exc_info=error)
        try:
            with self._cpus.bql:
                self._cpus.on_error(self.index, error)
        except BaseException:
            log.exception("vcpu%d: the error callback itself failed", self.index)


class CpuSet:
    """All vCPU threads of a machine; pause_all/resume_all implement stop/cont."""

    def __init__(
        self,
        vcpus: Sequence[RunnableVcpu],
        bql: Bql,
        handle_exit: ExitHandler,
        on_error: ErrorHandler,
    ) -> None:
        self.bql = bql
        self.handle_exit = handle_exit
        self.on_error = on_error
        self.condition = threading.Condition(threading.Lock())
        self.threads = [VcpuThread(vcpu, self) for vcpu in vcpus]

    def start(self, timeout: float = 30.0) -> None:
        """Start every vCPU thread (a pause requested before start parks them at once).

        The application processors start first and the bootstrap processor only once each of them is about to
        enter KVM_RUN (as QEMU waits for each vCPU thread to be created): a guest that boots in a fraction of a
        second must not send its INIT/SIPI to a vCPU whose thread has not reached KVM yet.
        """
        for vcpu_thread in self.threads[1:]:
            vcpu_thread.thread.start()
        deadline = time.monotonic() + timeout
        for vcpu_thread in self.threads[1:]:
            if not vcpu_thread.entering.wait(max(0.0, deadline - time.monotonic())):
                log.warning("vcpu%d: its thread did not start within %.0f s", vcpu_thread.index, timeout)
        if self.threads:
            self.threads[0].thread.start()

    def pause_all(self) -> None:
        """Return once every vCPU is out of KVM_RUN and parked (or finished).

        Safe to call holding the BQL: it is dropped while waiting so exits in flight can finish.
        Called from a vCPU thread (in an exit handler), that vCPU parks when its handler returns.
        """
        with self.condition:
            for vcpu_thread in self.threads:
                vcpu_thread.pause_requested = True
                vcpu_thread.request_pending = True
        for vcpu_thread in self.threads:
            vcpu_thread.vcpu.kick()
        self._wait_until(lambda t: t.quiescent)

    @property
    def paused(self) -> bool:
        """True when every vCPU is parked or finished."""
        with self.condition:
            return all(t.quiescent for t in self.threads)

    def resume_all(self) -> None:
        """Let parked vCPUs run again."""
        with self.condition:
            for vcpu_thread in self.threads:
                vcpu_thread.pause_requested = False
                vcpu_thread.request_pending = vcpu_thread.stop_requested
            self.condition.notify_all()

    def kick_all(self) -> None:
        """Make every vCPU leave KVM_RUN once (e.g. to notice a changed flag)."""
        for vcpu_thread in self.threads:
            vcpu_thread.vcpu.kick()

    def stop_all(self, timeout: float | None = 5.0) -> bool:
        """Ask every vCPU thread to finish and join them; False if one is still running."""
        with self.condition:
            for vcpu_thread in self.threads:
                vcpu_thread.stop_requested = True
                vcpu_thread.request_pending = True
            self.condition.notify_all()
        self.kick_all()
        return self.join(timeout)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the threads to end (without the BQL); False if one is still running."""
        current = threading.current_thread()
        own = [t.thread for t in self.threads if t.thread is not current and t.thread.is_alive()]

        def wait() -> None:
            for thread in own:
                thread.join(timeout)

        if self.bql.held_by_current_thread():
            with self.bql.released():
                wait()
        else:
            wait()
        return not any(thread.is_alive() for thread in own)

    def _wait_until(self, done: Callable[[VcpuThread], bool]) -> None:
        current = threading.current_thread()
        others = [t for t in self.threads if t.thread is not current]

        def wait() -> None:
            with self.condition:
                while not all(done(t) for t in others):
                    self.condition.wait(0.1)
                    for vcpu_thread in others:
                        if not done(vcpu_thread):
                            vcpu_thread.vcpu.kick()

        if self.bql.held_by_current_thread():
            with self.bql.released():
                wait()
        else:
            wait()
