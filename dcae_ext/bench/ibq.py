"""Benchmark of the IBQ quantizer (docs/ibq.md): the fused tiled op ("fast") vs the N x K PyTorch
formulation ("reference") and, for `quantize`, vs what a user would write instead of a kernel:
`ops.ibq_quantize_sdpa` ("sdpa"), scaled_dot_product_attention plus a chunked argmax.

Variants: `quantize` (ibq_quantize) and `quantize+entropy` (ibq_quantize_with_entropy, T = 0.01),
each forward and forward+backward. The entropy has no SDPA formulation (it needs sum_k p log p and
the mean of p over rows, which no attention kernel returns): that variant races fast and reference.
The limit is GEMM throughput: 2*N*K*D flops per GEMM, with 2 (forward) / 6 (forward+backward)
GEMMs for quantize and 3 / 7 with the entropy; memory O((N + K) D) for the fused op and for SDPA's
flash and memory-efficient kernels, while the reference builds several N x K tensors. The CUDA
sweep ends at K = 2^20, N = 16384, where the reference runs out of memory (recorded as such).
"""
from __future__ import annotations

import functools

import torch

from dcae_ext import ops
from dcae_ext.bench.hardware import matmul_tf32
from dcae_ext.bench.harness import Case, Work, Workload
from dcae_ext.bench.timing import Timing
from dcae_ext.ops.ibq_sdpa import sdpa_backend

TEMPERATURE = 0.01
GEMMS = {"quantize": (2, 6), "quantize+entropy": (3, 7)}  # (forward, forward+backward)


def shapes(device: str, quick: bool) -> list[tuple[int, int, int]]:
    if device == "cpu":
        return [(512, 8192, 64)] if quick else [(2048, 32768, 64)]
    if quick:
        return [(8192, 2**14, 256), (8192, 2**16, 256)]
    return [(8192, 2**k, 256) for k in (14, 16, 18)] + [(16384, 2**20, 256)]


def cases(device: str, quick: bool) -> list[Case]:
    found = []
    for n, k, d in shapes(device, quick):
        gemm = 2.0 * n * k * d
        for variant, (fwd_gemms, fwdbwd_gemms) in GEMMS.items():
            found.append(Case(f"ibq_{variant}", {"N": n, "K": k, "D": d},
                              functools.partial(_workloads, variant, (n, k, d)),
                              Work("matmul", fwd=fwd_gemms * gemm, fwdbwd=fwdbwd_gemms * gemm),
                              extra={"temperature": TEMPERATURE if variant != "quantize" else None,
                                     "allow_tf32": matmul_tf32()}))
    return found


def timing(device: str, quick: bool) -> Timing:
    """The CPU reference takes seconds per call, and so do the GPU calls at K = 2^20 in float32:
    fewer blocks."""
    if quick:
        return Timing(min_blocks=5, max_seconds=1.0)
    if device == "cpu":
        return Timing(warmup=1, min_blocks=5, max_blocks=10, max_seconds=60.0)
    return Timing(warmup=1, min_blocks=5)


QUANTIZERS = {"fast": ops.ibq_quantize, "reference": ops.reference.ibq_quantize}
WITH_ENTROPY = {"fast": ops.ibq_quantize_with_entropy, "reference": ops.reference.ibq_quantize_with_entropy}


def _quantize(fn, z, codebook):
    return fn(z, codebook)[0]


def _quantize_with_entropy(fn, z, codebook):
    z_q, _, entropy = fn(z, codebook, TEMPERATURE)
    return z_q, entropy


def _workloads(variant: str, shape: tuple, device, dtype) -> dict[str, Workload]:
    n, k, d = shape
    gen = torch.Generator(device=device).manual_seed(0)
    z = torch.randn(n, d, device=device, dtype=dtype, generator=gen).requires_grad_(True)
    codebook = torch.randn(k, d, device=device, dtype=dtype, generator=gen).requires_grad_(True)
    grads = (torch.randn(n, d, device=device, dtype=dtype, generator=gen),)
    if variant == "quantize+entropy":
        grads = grads + (None,)  # None: a scalar's gradient is 1
        return {impl: Workload(functools.partial(_quantize_with_entropy, fn, z, codebook), (z, codebook), grads)
                for impl, fn in WITH_ENTROPY.items()}
    workloads = {impl: Workload(functools.partial(_quantize, fn, z, codebook), (z, codebook), grads)
                 for impl, fn in QUANTIZERS.items()}
    workloads["sdpa"] = Workload(functools.partial(_quantize, ops.ibq_quantize_sdpa, z, codebook), (z, codebook), grads,
                                 extra={"sdpa_backend": sdpa_backend(z, codebook)})
    return workloads
