"""What the supervisor reads about and does to processes: memory, GPU memory, descriptors, niceness."""

from __future__ import annotations

import contextlib
import logging
import os

import psutil

log = logging.getLogger(__name__)


def rss_mb(pid: int | None) -> float | None:
    """Resident memory of a process (None: this one) in MiB, one decimal; None if it is gone."""
    try:
        return round(psutil.Process(pid).memory_info().rss / 2**20, 1)
    except (psutil.Error, ValueError):
        return None


def gpu_memory_mb(pid: int) -> float | None:
    """GPU memory a process holds in MiB, through NVML when `nvidia-ml-py` and a driver are present; else None."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        try:
            total = 0
            for i in range(pynvml.nvmlDeviceGetCount()):
                handle = pynvml.nvmlDeviceGetHandleByIndex(i)
                for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                    if proc.pid == pid and proc.usedGpuMemory:
                        total += proc.usedGpuMemory
            return round(total / 2**20, 1)
        finally:
            pynvml.nvmlShutdown()
    except pynvml.NVMLError:
        return None


def process_health(pid: int) -> dict[str, float] | None:
    """`{"rss_mb", "fds", "threads"}` plus `"gpu_mb"` where NVML reports it; None if the process is gone."""
    try:
        p = psutil.Process(pid)
        health: dict[str, float] = {
            "rss_mb": round(p.memory_info().rss / 2**20, 1), "fds": p.num_fds(), "threads": p.num_threads(),
        }  # fmt: skip
    except psutil.Error:
        return None
    gpu = gpu_memory_mb(pid)
    if gpu is not None:
        health["gpu_mb"] = gpu
    return health


def set_nice(pid: int, value: int) -> int | None:
    """Set the niceness of every thread of a process; returns the previous value, or None if not permitted.

    Linux niceness is per thread: renicing only the main thread would leave ONNX Runtime's pool threads
    (created while the standby loaded) at the standby priority forever.
    """
    try:
        before = os.getpriority(os.PRIO_PROCESS, pid)
        tids = [t.id for t in psutil.Process(pid).threads()]
        for tid in tids:
            with contextlib.suppress(ProcessLookupError):
                os.setpriority(os.PRIO_PROCESS, tid, value)
        return before
    except (OSError, psutil.Error) as exc:
        log.debug("cannot renice %d to %d: %s", pid, value, exc)
        return None
