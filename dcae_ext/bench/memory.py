"""Peak memory of one call above what was allocated before it (the inputs), from a clean baseline.

CUDA: torch.cuda.max_memory_allocated after reset_peak_memory_stats, minus memory_allocated before.
CPU: the larger of two lower bounds, each from its own call so that neither disturbs the other:
the rise of the process's peak resident size (VmHWM, reset through /proc/self/clear_refs on Linux)
over one plain call, and the peak of tensor bytes alive at once replayed from the profiler's
allocation events over a second call. The resident size sees buffers an op allocates and frees
inside itself but misses memory the allocator reuses; the profiler sees every tensor allocation
but nets out an op's internal buffers. The profiler's own memory (about 150 MB the first time it
starts) stays out of the resident-size window; the harness measures after the timed runs, so the
library code and lazy state a first call maps in are resident already.
"""
from __future__ import annotations

import contextlib
import gc
import os
import sys
from typing import Any, Callable

import torch


def peak_mb(fn: Callable[[], Any], device: torch.device | str) -> float:
    device = torch.device(device)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    return max(resident_rise_mb(fn) or 0.0, tracked_peak_mb(fn))


def resident_rise_mb(fn: Callable[[], Any]) -> float | None:
    """Rise of the peak resident size over one call of `fn`; None where it cannot be reset or read."""
    if not _reset_peak_resident():
        return None
    before = _proc_status_kb("VmRSS")
    fn()
    peak = _proc_status_kb("VmHWM")
    if before is None or peak is None:
        return None
    return max(peak - before, 0) / 1024


def tracked_peak_mb(fn: Callable[[], Any]) -> float:
    """Peak MB of CPU tensor memory alive at once while `fn` runs (profiler allocation events)."""
    from torch.profiler import ProfilerActivity, profile

    with quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # Each event's own (self) allocations minus frees: allocations land on the innermost op that
    # made them (counted at its start), frees outside any op on "[memory]" events, and the frees
    # an autograd node makes of its inputs on that node (counted at its end, after its outputs).
    changes = sorted((e.time_range.start if e.self_cpu_memory_usage > 0 else e.time_range.end,
                      e.self_cpu_memory_usage) for e in prof.events() if e.self_cpu_memory_usage)
    # Frees of memory allocated before the call lower the floor: the peak is the largest rise
    # above the lowest level reached before it.
    current = lowest = peak = 0
    for _, change in changes:
        current += change
        lowest = min(lowest, current)
        peak = max(peak, current - lowest)
    return peak / 2**20


@contextlib.contextmanager
def quiet_stderr():
    """Silence the profiler backend's start/stop lines, written straight to file descriptor 2."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _proc_status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_resident() -> bool:
    """Linux: writing 5 to clear_refs resets the process's peak resident size (VmHWM)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as refs:
            refs.write("5")
        return True
    except OSError:
        return False
