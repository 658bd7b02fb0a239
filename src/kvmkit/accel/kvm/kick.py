"""The signal used to knock a vCPU thread out of KVM_RUN.

KVM_RUN returns -EINTR (exit reason KVM_EXIT_INTR) when a signal is pending for the thread.
The signal needs a handler (the default action of a real-time signal kills the process, and an
ignored signal is never delivered); Python's handler runs later in the main thread and does
nothing. fcntl.ioctl does not retry on EINTR, so the vCPU loop sees InterruptedError.
"""

from __future__ import annotations

import signal
import threading

from kvmkit.errors import HostError

KICK_SIGNAL = signal.SIGRTMIN + 3

_installed = False


def _ignore_kick(signum: int, frame: object) -> None:
    """The Python-level handler: the interruption of KVM_RUN is all we wanted."""


def install_kick_handler() -> None:
    """Install the no-op handler for KICK_SIGNAL (must first happen on the main thread)."""
    global _installed
    if _installed:
        return
    if threading.current_thread() is not threading.main_thread():
        if signal.getsignal(KICK_SIGNAL) is _ignore_kick:
            _installed = True
            return
        raise HostError("the vCPU kick signal handler must be installed from the main thread: open Kvm there")
    signal.signal(KICK_SIGNAL, _ignore_kick)
    signal.siginterrupt(KICK_SIGNAL, True)
    _installed = True


def kick_thread(thread_ident: int) -> None:
    """Send KICK_SIGNAL to one thread (a no-op if the thread has already exited)."""
    if not _installed:
        return
    try:
        signal.pthread_kill(thread_ident, KICK_SIGNAL)
    except ProcessLookupError:
        pass
