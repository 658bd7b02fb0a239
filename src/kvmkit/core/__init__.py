"""Core runtime: run states, the big lock, the main loop, the worker pool and vCPU threads."""

from kvmkit.core.bql import Bql, DeviceLock
from kvmkit.core.cpus import CpuSet, VcpuThread
from kvmkit.core.main_loop import MainLoop, TimerHandle
from kvmkit.core.runstate import RunState
from kvmkit.core.worker_pool import WorkerPool

__all__ = ["Bql", "CpuSet", "DeviceLock", "MainLoop", "RunState", "TimerHandle", "VcpuThread", "WorkerPool"]
