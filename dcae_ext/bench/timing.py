"""Timing: warm-up, then blocks of back-to-back runs of every implementation of a case, interleaved
round by round, until every spread settles under SPREAD_LIMIT or the time budget is spent.

A block is `runs_per_block` calls timed together (enough calls to last about `block_seconds`, so
the clock's overhead and launch latency are amortised); its time divided by the count is one
sample. The median over blocks is the headline; the interquartile range (IQR) and min / max are
the spread. Implementations alternate within each round (the first one rotates), so load that
comes and goes on a shared machine falls on all of them alike instead of on whichever ran last.
CUDA blocks are timed with events on the current stream, CPU blocks with time.perf_counter.
"""
from __future__ import annotations

import gc
import math
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

SPREAD_LIMIT = 0.10  # a timing whose IQR exceeds this fraction of its median is flagged noisy


@dataclass(frozen=True)
class Timing:
    """How long to time: at least `min_blocks` rounds, then stop once every spread is under
    SPREAD_LIMIT, or after `max_blocks` rounds or `max_seconds` of timed runs, whichever first."""
    warmup: int = 2
    min_blocks: int = 7
    max_blocks: int = 40
    block_seconds: float = 0.02
    max_seconds: float = 10.0


@dataclass(frozen=True)
class Stats:
    """Per-call milliseconds of each timed block."""
    block_ms: tuple[float, ...]
    runs_per_block: int

    def _quartiles(self) -> tuple[float, float, float]:
        if len(self.block_ms) == 1:
            return (self.block_ms[0],) * 3
        q1, median, q3 = statistics.quantiles(self.block_ms, n=4, method="inclusive")
        return q1, median, q3

    @property
    def median(self) -> float:
        return statistics.median(self.block_ms)

    @property
    def iqr(self) -> float:
        q1, _, q3 = self._quartiles()
        return q3 - q1

    @property
    def noisy(self) -> bool:
        return self.iqr > SPREAD_LIMIT * self.median

    def as_dict(self) -> dict:
        q1, median, q3 = self._quartiles()
        return {"median_ms": median, "q1_ms": q1, "q3_ms": q3, "iqr_ms": q3 - q1, "min_ms": min(self.block_ms),
                "max_ms": max(self.block_ms), "blocks": len(self.block_ms), "runs_per_block": self.runs_per_block}


def is_oom(error: BaseException) -> bool:
    """torch's out-of-memory error, or cuBLAS / cuDNN failing to allocate their workspace (which
    near the memory limit is the same event, reported as a RuntimeError)."""
    text = str(error)
    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and ("out of memory" in text.lower() or "ALLOC_FAILED" in text))


def release_memory(device: torch.device) -> None:
    """After an out-of-memory error has been handled (outside its except block, whose traceback
    still holds the failed call's tensors): collect them and give the cached blocks back."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def block_seconds(fn: Callable[[], Any], runs: int, device: torch.device) -> float:
    """Seconds for `runs` back-to-back calls of `fn`."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(runs):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    begin = time.perf_counter()
    for _ in range(runs):
        fn()
    return time.perf_counter() - begin


def time_interleaved(fns: dict[str, Callable[[], Any]], device: torch.device | str,
                     timing: Timing = Timing()) -> tuple[dict[str, Stats], set[str]]:
    """Stats per name, and the names whose calls ran out of memory (dropped, the others go on)."""
    device = torch.device(device)
    runs_per_block, out_of_memory = {}, set()
    for name, fn in fns.items():
        for _ in range(max(timing.warmup, 1)):
            seconds = _timed(fn, 1, device)  # the last warm-up call sizes the block
            if seconds is None:
                out_of_memory.add(name)
                break
        else:
            runs_per_block[name] = max(1, min(10_000, math.ceil(timing.block_seconds / max(seconds, 1e-9))))
    samples: dict[str, list[float]] = {name: [] for name in runs_per_block}
    spent = 0.0
    for round_index in range(timing.max_blocks):
        names = [name for name in samples if name not in out_of_memory]
        if not names:
            break
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            seconds = _timed(fns[name], runs_per_block[name], device)
            if seconds is None:
                out_of_memory.add(name)
                continue
            spent += seconds
            samples[name].append(seconds * 1e3 / runs_per_block[name])
        stats = [Stats(tuple(samples[name]), runs_per_block[name]) for name in names if samples[name]]
        if round_index + 1 >= timing.min_blocks and (
                spent >= timing.max_seconds or not any(s.noisy for s in stats)):
            break
    stats = {name: Stats(tuple(found), runs_per_block[name]) for name, found in samples.items()
             if found and name not in out_of_memory}
    return stats, out_of_memory


def _timed(fn: Callable[[], Any], runs: int, device: torch.device) -> float | None:
    """block_seconds, or None when a call ran out of memory (the CUDA cache is then released)."""
    try:
        return block_seconds(fn, runs, device)
    except (RuntimeError, torch.OutOfMemoryError) as error:
        if not is_oom(error):
            raise
    release_memory(device)
    return None


def throughput_summary(seconds: list[float], items: int) -> dict:
    """Items per second over whole runs (the dataset-encode and training-step scripts): the median,
    min and max rate, the spread (max - min) / median, and `noisy` above SPREAD_LIMIT."""
    rates = sorted(items / s for s in seconds)
    median = statistics.median(rates)
    spread = (rates[-1] - rates[0]) / median
    return {"images_per_s": {"median": median, "min": rates[0], "max": rates[-1]}, "spread": spread,
            "noisy": spread > SPREAD_LIMIT}
