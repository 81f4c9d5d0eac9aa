"""The one benchmark harness: warm-up, median of repeated timed runs, peak memory, JSONL records.

Timing: CUDA events around each run on the current stream (synchronised), perf_counter on CPU;
the median is reported. Peak memory: torch.cuda.max_memory_allocated above what was allocated
before the run (CUDA); on CPU the larger of the peak of tensor allocations the profiler tracks
during one run and the rise of the process's peak resident size (reset through /proc on Linux).
"""
from __future__ import annotations

import contextlib
import datetime
import json
import os
import statistics
import sys
import time
from typing import Any, Callable

import torch

from dcae_ext.bench.hardware import device_name


def _is_oom(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


def _time_ms(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            begin = time.perf_counter()
            fn()
            times.append((time.perf_counter() - begin) * 1e3)
    return statistics.median(times)


@contextlib.contextmanager
def _quiet_stderr():
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


def cpu_tracked_peak_mb(fn: Callable[[], Any]) -> float:
    """Peak MB of CPU tensor memory alive at once while `fn` runs (profiler allocation events).

    Buffers an op allocates and frees inside itself net out of its events; cpu_peak_mb adds the
    process's peak-RSS rise, which sees them."""
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # Each event's own (self) allocations minus frees: allocations land on the innermost op that
    # made them (counted at its start), frees outside any op on "[memory]" events, and the frees
    # an autograd node makes of its inputs on that node (counted at its end, after its outputs).
    changes = sorted((e.time_range.start if e.self_cpu_memory_usage > 0 else e.time_range.end,
                      e.self_cpu_memory_usage) for e in prof.events() if e.self_cpu_memory_usage)
    # Frees of memory allocated before the call (e.g. an old .grad) lower the floor: the peak is
    # the largest rise above the lowest level reached before it.
    current = lowest = peak = 0
    for _, change in changes:
        current += change
        lowest = min(lowest, current)
        peak = max(peak, current - lowest)
    return peak / 2**20


def _proc_status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Linux: writing 5 to clear_refs resets the process's peak resident size (VmHWM)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


def cpu_peak_mb(fn: Callable[[], Any]) -> float:
    """The larger of the tracked tensor peak and the peak-RSS rise while `fn` runs (the RSS rise
    misses memory the allocator reuses, the tracked peak misses buffers freed inside one op)."""
    rss_before = _proc_status_kb("VmRSS") if _reset_peak_rss() else None
    tracked = cpu_tracked_peak_mb(fn)
    hwm = _proc_status_kb("VmHWM")
    if rss_before is None or hwm is None:
        return tracked
    return max(tracked, (hwm - rss_before) / 1024)


def _peak_mb(fn: Callable[[], Any], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    return cpu_peak_mb(fn)


def measure(forward: Callable[[], Any], forward_backward: Callable[[], Any] | None = None, *,
            device: torch.device | str, warmup: int = 2, repeats: int = 10) -> dict:
    """Median fwd_ms (under no_grad), fwdbwd_ms, and peak_mem_mb of the heaviest measured call.

    An out-of-memory failure is recorded (oom=True) instead of raised.
    """
    device = torch.device(device)
    result: dict[str, Any] = {"fwd_ms": None, "fwdbwd_ms": None, "peak_mem_mb": None, "oom": False}

    def no_grad_forward():
        with torch.no_grad():
            forward()

    try:
        result["fwd_ms"] = _time_ms(no_grad_forward, device, warmup, repeats)
        heaviest = no_grad_forward
        if forward_backward is not None:
            result["fwdbwd_ms"] = _time_ms(forward_backward, device, warmup, repeats)
            heaviest = forward_backward
        result["peak_mem_mb"] = _peak_mb(heaviest, device)
    except (RuntimeError, torch.OutOfMemoryError) as error:
        if not _is_oom(error):
            raise
        result["oom"] = True
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return result


def results_path(device: torch.device | str, results_dir: str = os.path.join("benchmarks", "results")) -> str:
    dev = torch.device(device)
    if dev.type == "cpu":
        name = "cpu"
    else:
        slug = "".join(c if c.isalnum() else "-" for c in device_name(dev).lower()).strip("-")
        name = f"{dev.type}-{slug}"
    return os.path.join(results_dir, f"{name}.jsonl")


def make_record(op: str, impl: str, device: torch.device | str, dtype: torch.dtype, shape: dict,
                measurement: dict, **extra) -> dict:
    dev = torch.device(device)
    record = {
        "op": op,
        "impl": impl,
        "device": dev.type,
        "device_name": device_name(dev),
        "dtype": str(dtype).replace("torch.", ""),
        "shape": shape,
        **measurement,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    record.update(extra)
    return record


def append_records(records: list[dict], path: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")


def speedup(reference_ms: float | None, fast_ms: float | None) -> float | None:
    if not reference_ms or not fast_ms:
        return None
    return reference_ms / fast_ms
