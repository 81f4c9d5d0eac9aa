"""The hardware limit a case is measured against: memory bandwidth for memory-bound ops, matmul
throughput for GEMM- and convolution-bound ones.

Known GPUs: the vendor's dense data-sheet peaks, a true ceiling. Elsewhere (CPUs, GPUs not in the
table) probes measure the limit: a read (sum) and a copy of as many bytes as the case's forward
moves, or a square GEMM in the case's dtype. The harness times them interleaved with the case, on
the same threads, so they see the same cache sizes and the same load; the limit is the faster
probe's best block. A fixed-size probe timed apart would not: on a shared machine its median
lands on a busy moment (a limit too low), and a working set that stays in cache outruns a DRAM-sized
copy, both of which showed fractions above 100%.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class Peaks:
    """Dense (no sparsity) peaks: TFLOP/s per math mode and memory bandwidth in GB/s."""
    bf16_tflops: float
    tf32_tflops: float
    fp32_tflops: float
    bandwidth_gbps: float


# Exact device names (torch.cuda.get_device_name); a variant not listed is probed, never guessed:
# the H100 NVL's 3.9 TB/s and the GH200's 4.9 TB/s would exceed an "H100" or "H200" match.
GPU_PEAKS = {
    r"NVIDIA H200": Peaks(989.0, 494.0, 67.0, 4800.0),
    r"NVIDIA H200 NVL": Peaks(835.0, 418.0, 60.0, 4800.0),
    r"NVIDIA H100 80GB HBM3": Peaks(989.0, 494.0, 67.0, 3350.0),
    r"NVIDIA H100 PCIe": Peaks(756.0, 378.0, 51.0, 2000.0),
    r"NVIDIA H100 NVL": Peaks(835.0, 418.0, 60.0, 3900.0),
    r"NVIDIA A100-SXM4-80GB": Peaks(312.0, 156.0, 19.5, 2039.0),
    r"NVIDIA A100-(SXM4|PCIE)-40GB": Peaks(312.0, 156.0, 19.5, 1555.0),
    r"NVIDIA A100 80GB PCIe": Peaks(312.0, 156.0, 19.5, 1935.0),
}
KINDS = ("memory", "matmul", "conv")


def device_name(device: torch.device | str) -> str:
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    import platform

    return platform.processor() or platform.machine() or "cpu"


def machine_description(device: torch.device | str) -> str:
    """The GPU's name, or the CPU model with its logical CPUs and torch's threads (for records of
    whole-command benchmarks, where the threads matter)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    import os

    model = device_name(dev)
    try:
        with open("/proc/cpuinfo") as stream:
            model = next(line.split(":", 1)[1].strip() for line in stream if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} logical CPUs, torch threads {torch.get_num_threads()}"


def datasheet_peaks(name: str) -> Peaks | None:
    for pattern, peaks in GPU_PEAKS.items():
        if re.fullmatch(pattern, name.strip()):
            return peaks
    return None


def matmul_tf32() -> bool:
    """Whether float32 matmuls on CUDA may run in TF32: torch's per-backend setting, which also
    reflects allow_tf32 and set_float32_matmul_precision ("high" and "medium" are TF32 on CUDA);
    the legacy getters throw once the new API was used."""
    return torch.backends.cuda.matmul.fp32_precision == "tf32"


def datasheet_limit(gpu_name: str | None, kind: str, dtype: torch.dtype) -> float | None:
    """GB/s (memory) or TFLOP/s (matmul, conv) from the data sheet of the GPU named; None (CPUs,
    unknown GPUs) where a probe must measure it."""
    peaks = datasheet_peaks(gpu_name) if gpu_name else None
    if peaks is None:
        return None
    if kind == "memory":
        return peaks.bandwidth_gbps
    if dtype in (torch.bfloat16, torch.float16):
        return peaks.bf16_tflops
    if dtype != torch.float32:
        return None
    # float32 may run on tensor cores: TF32 when torch allows it (convolutions allow it by default)
    if matmul_tf32() or (
            kind == "conv" and torch.backends.cudnn.conv.fp32_precision == "tf32"):
        return peaks.tf32_tflops
    return peaks.fp32_tflops


def probes(kind: str, device: torch.device | str, dtype: torch.dtype,
           moved_bytes: int) -> dict[str, tuple[Callable[[], object], float]]:
    """name -> (call, work per call: bytes or FLOPs) for the limit of `kind` when no data sheet applies."""
    dev = torch.device(device)
    if kind == "memory":
        elements = max(moved_bytes // 4, 2)
        source = torch.ones(elements, device=dev)
        half = source[: elements // 2]
        target = torch.empty_like(half)
        return {"limit: read": (source.sum, elements * 4.0),
                "limit: copy": (lambda: target.copy_(half), 2.0 * half.numel() * 4)}
    # Large enough that one call outlasts a scheduler time slice: on a shared CPU each call's
    # parallel region waits for every thread to get a core, which small GEMMs cannot amortise.
    n = 4096 if dev.type == "cuda" else 2048
    a = torch.randn(n, n, device=dev, dtype=dtype)
    b = torch.randn(n, n, device=dev, dtype=dtype)
    return {"limit: gemm": (lambda: a @ b, 2.0 * n**3)}
