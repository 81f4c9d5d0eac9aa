"""The one benchmark harness: a suite is a list of Cases; each Case builds one Workload per
implementation; the harness times them side by side, measures their peak memory, compares them
with the hardware limit and returns one record per implementation.

A suite module holds `cases(device, quick) -> list[Case]` (and, when its calls are slow,
`timing(device, quick) -> Timing`); nothing else.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from dcae_ext.bench import hardware
from dcae_ext.bench.memory import peak_mb
from dcae_ext.bench.records import make_record
from dcae_ext.bench.timing import Stats, Timing, is_oom, release_memory, time_interleaved


class SuiteUnavailable(Exception):
    """Raised by a suite's cases() when this install cannot run it (e.g. an optional dependency
    is missing); the bench command skips the suite and prints the message."""


@dataclass(frozen=True)
class Workload:
    """One implementation of a case. `forward()` returns the output(s); forward+backward is
    `torch.autograd.grad(outputs, inputs, grad_outputs)`, so no run leaves a .grad behind and every
    run (and the peak-memory one) starts from the same memory. No `inputs`: forward only.
    `extra` adds fields to this implementation's record (the case's `extra` goes to all of them).
    `skip`: why this implementation is not run here (e.g. the memory it would need is more than
    the machine can spare); its record then says so (`"skipped"`) and holds no measurement."""
    forward: Callable[[], Any]
    inputs: tuple[torch.Tensor, ...] = ()
    grad_outputs: tuple[torch.Tensor | None, ...] = ()
    extra: dict = field(default_factory=dict)
    skip: str | None = None

    def run_forward(self) -> Any:
        with torch.no_grad():
            return self.forward()

    def run_forward_backward(self) -> tuple[torch.Tensor, ...]:
        outputs = self.forward()
        outputs = tuple(outputs) if isinstance(outputs, (tuple, list)) else (outputs,)
        return torch.autograd.grad(outputs, self.inputs, self.grad_outputs)


@dataclass(frozen=True)
class Work:
    """The least one call must do: elements read plus written (kind "memory"), or FLOPs ("matmul",
    "conv"), for the forward and for forward+backward."""
    kind: str
    fwd: float
    fwdbwd: float | None = None


@dataclass(frozen=True)
class Case:
    """`build(device, dtype)` makes the inputs and returns implementation name -> Workload
    ("fast" and "reference", and any other baseline raced beside them, e.g. "sdpa"); `extra` adds
    fields to the records; `timing` replaces the suite's for this case (one whose calls take far
    longer than the others')."""
    op: str
    shape: dict
    build: Callable[[torch.device, torch.dtype], dict[str, Workload]]
    work: Work | None = None
    extra: dict = field(default_factory=dict)
    timing: Timing | None = None


def default_timing(quick: bool) -> Timing:
    if quick:
        return Timing(min_blocks=5, max_seconds=1.0)
    return Timing()


def run_cases(cases: list[Case], device: torch.device | str, dtypes, timing: Timing,
              on_case: Callable[[list[dict]], None] | None = None) -> list[dict]:
    """The records of every case in every dtype; `on_case(records)` receives each case's as it ends."""
    device = torch.device(device)
    records = []
    for dtype in dtypes:
        for case in cases:
            case_records = measure_case(case, device, dtype, case.timing or timing)
            if on_case is not None:
                on_case(case_records)
            records += case_records
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return records


def measure_case(case: Case, device: torch.device, dtype: torch.dtype, timing: Timing) -> list[dict]:
    workloads = case.build(device, dtype)
    skipped = {impl: workload.skip for impl, workload in workloads.items() if workload.skip}
    limit, probes = _limit_setup(case.work, device, dtype)
    forward = {impl: workload.run_forward for impl, workload in workloads.items() if impl not in skipped}
    fwd_stats, fwd_oom = time_interleaved({**forward, **{name: fn for name, (fn, _) in probes.items()}},
                                          device, timing)
    if probes:
        limit = _probed_limit(case.work.kind, probes, fwd_stats)
        del probes  # free the probes' buffers before the backward is timed
    backward = {impl: w.run_forward_backward for impl, w in workloads.items()
                if w.inputs and impl not in fwd_oom and impl not in skipped}
    fwdbwd_stats, fwdbwd_oom = time_interleaved(backward, device, timing) if backward else ({}, set())
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    records = []
    for impl, workload in workloads.items():
        oom = impl in fwd_oom or impl in fwdbwd_oom
        m = {"fwd_ms": None, "fwdbwd_ms": None, "peak_mem_mb": None, "oom": oom}
        for phase, stats in (("fwd", fwd_stats.get(impl)), ("fwdbwd", fwdbwd_stats.get(impl))):
            if stats is not None:
                m[f"{phase}_ms"] = stats.median
                m[f"{phase}_spread"] = stats.as_dict()
        m["noisy"] = any(s.noisy for s in (fwd_stats.get(impl), fwdbwd_stats.get(impl)) if s is not None)
        if impl in skipped:
            m["skipped"] = skipped[impl]
        elif not oom:
            m["peak_mem_mb"], m["oom"] = _peak(workload, device)
        records.append(make_record(case.op, impl, device, dtype, case.shape, m, **case.extra, **workload.extra,
                                   **_limit_fields(case.work, dtype, limit, m),
                                   cpu_threads=torch.get_num_threads(), load_1min=load))
    return records


def _peak(workload: Workload, device: torch.device) -> tuple[float | None, bool]:
    heaviest = workload.run_forward_backward if workload.inputs else workload.run_forward
    try:
        return peak_mb(heaviest, device), False
    except (RuntimeError, torch.OutOfMemoryError) as error:
        if not is_oom(error):
            raise
    release_memory(device)
    return None, True


def _limit_setup(work: Work | None, device, dtype):
    """(limit, source) from the data sheet, or the probes that will measure it."""
    if work is None:
        return None, {}
    gpu_name = hardware.device_name(device) if device.type == "cuda" else None
    datasheet = hardware.datasheet_limit(gpu_name, work.kind, dtype)
    if datasheet is not None:
        return (datasheet, "datasheet"), {}
    moved_bytes = int(work.fwd * _itemsize(dtype)) if work.kind == "memory" else 0
    return None, hardware.probes(work.kind, device, dtype, moved_bytes)


def _probed_limit(kind: str, probe_fns: dict, stats: dict[str, Stats]):
    """The fastest probe's best block, in GB/s or TFLOP/s."""
    scale = 1e9 if kind == "memory" else 1e12
    rates = {name: amount / (stats[name].as_dict()["min_ms"] * 1e-3) / scale
             for name, (_, amount) in probe_fns.items() if name in stats}
    if not rates:
        return None
    best = max(rates, key=rates.get)
    return rates[best], "probe: " + best.removeprefix("limit: ")


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _limit_fields(work: Work | None, dtype: torch.dtype, limit, m: dict) -> dict:
    """Achieved rate and fraction of the limit for each timed phase, with the work and the limit."""
    if work is None or limit is None:
        return {}
    value, source = limit
    memory = work.kind == "memory"
    unit, scale = ("gbps", 1e9) if memory else ("tflops", 1e12)
    amounts = {"fwd": work.fwd, "fwdbwd": work.fwdbwd}
    if memory:
        amounts = {phase: None if amount is None else amount * _itemsize(dtype) for phase, amount in amounts.items()}
    fields: dict[str, Any] = {"work": {"kind": work.kind, "unit": "bytes" if memory else "flops", **amounts},
                              f"limit_{unit}": value, "limit_source": source}
    for phase, amount in amounts.items():
        ms = m.get(f"{phase}_ms")
        if amount is not None and ms:
            rate = amount / (ms * 1e-3) / scale
            fields[f"{phase}_{unit}"] = rate
            fields[f"{phase}_fraction_of_limit"] = rate / value
    return fields
