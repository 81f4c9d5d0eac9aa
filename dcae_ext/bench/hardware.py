"""The hardware limits a benchmark is measured against: memory bandwidth and matmul peak.

GPUs: the vendor's dense peaks for the cards we know, else measured rates. CPU: measured here
(a large copy and a float32 GEMM), cached per process.
"""
from __future__ import annotations

import functools
import time

import torch

# Dense (no sparsity) peaks from the vendors' data sheets: TFLOP/s and GB/s.
GPU_PEAKS = {
    "H200": {"bf16_tflops": 989.0, "tf32_tflops": 494.0, "fp32_tflops": 67.0, "bandwidth_gbps": 4800.0},
    "H100 PCIe": {"bf16_tflops": 756.0, "tf32_tflops": 378.0, "fp32_tflops": 51.0, "bandwidth_gbps": 2000.0},
    "H100": {"bf16_tflops": 989.0, "tf32_tflops": 494.0, "fp32_tflops": 67.0, "bandwidth_gbps": 3350.0},
    "A100": {"bf16_tflops": 312.0, "tf32_tflops": 156.0, "fp32_tflops": 19.5, "bandwidth_gbps": 2039.0},
}


def _seconds(fn, repeats: int, device: torch.device) -> float:
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]


@functools.lru_cache(maxsize=None)
def measured_copy_gbps(device: str = "cpu") -> float:
    """Bytes read + written per second by a large device-to-device copy."""
    dev = torch.device(device)
    numel = (256 if dev.type == "cuda" else 64) * 2**20 // 4
    src = torch.ones(numel, device=dev)
    dst = torch.empty_like(src)
    seconds = _seconds(lambda: dst.copy_(src), 5, dev)
    return 2 * src.numel() * 4 / seconds / 1e9


@functools.lru_cache(maxsize=None)
def measured_matmul_tflops(device: str = "cpu", dtype: torch.dtype = torch.float32) -> float:
    dev = torch.device(device)
    n = 4096 if dev.type == "cuda" else 1024
    a = torch.randn(n, n, device=dev, dtype=dtype)
    b = torch.randn(n, n, device=dev, dtype=dtype)
    seconds = _seconds(lambda: a @ b, 5, dev)
    return 2 * n**3 / seconds / 1e12


def device_name(device: torch.device | str) -> str:
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    import platform

    return platform.processor() or platform.machine() or "cpu"


def _gpu_peaks(device: torch.device) -> dict | None:
    name = torch.cuda.get_device_name(device)
    for key, peaks in GPU_PEAKS.items():  # ordered: "H100 PCIe" before "H100"
        if key in name:
            return peaks
    return None


def bandwidth_gbps(device: torch.device | str) -> tuple[float, str]:
    """(GB/s, source): the data-sheet peak for known GPUs, else a measured copy rate."""
    dev = torch.device(device)
    if dev.type == "cuda":
        peaks = _gpu_peaks(dev)
        if peaks:
            return peaks["bandwidth_gbps"], "datasheet"
    return measured_copy_gbps(str(dev)), "measured copy"


def matmul_tflops(device: torch.device | str, dtype: torch.dtype) -> tuple[float, str]:
    """(TFLOP/s, source): dense matmul peak for `dtype` (fp32 counts TF32 only when torch allows it)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        peaks = _gpu_peaks(dev)
        if peaks:
            if dtype in (torch.bfloat16, torch.float16):
                return peaks["bf16_tflops"], "datasheet"
            if torch.backends.cuda.matmul.allow_tf32:
                return peaks["tf32_tflops"], "datasheet"
            return peaks["fp32_tflops"], "datasheet"
    return measured_matmul_tflops(str(dev), torch.float32 if dev.type == "cpu" else dtype), "measured matmul"
