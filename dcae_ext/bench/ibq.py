"""Benchmark of the IBQ quantizer: fused tiled op vs the N x K PyTorch formulation (docs/ibq.md).

Variants: `quantize` (ibq_quantize) and `quantize+entropy` (ibq_quantize_with_entropy, T = 0.01),
each forward and forward+backward. The limit is GEMM throughput: 2*N*K*D flops per GEMM, with
2 (forward) / 6 (forward+backward) GEMMs for quantize and 3 / 7 with the entropy; memory
O((N + K) D) for the fused op, while the reference builds several N x K tensors (OOM recorded).
"""
from __future__ import annotations

import functools

import torch

from dcae_ext import ops
from dcae_ext.bench.harness import Case, Work, Workload
from dcae_ext.bench.timing import Timing

TEMPERATURE = 0.01
GEMMS = {"quantize": (2, 6), "quantize+entropy": (3, 7)}  # (forward, forward+backward)


def shapes(device: str, quick: bool) -> list[tuple[int, int, int]]:
    if device == "cpu":
        return [(512, 8192, 64)] if quick else [(2048, 32768, 64)]
    if quick:
        return [(8192, 2**14, 256), (8192, 2**16, 256)]
    return [(8192, 2**k, 256) for k in (14, 16, 18)]


def cases(device: str, quick: bool) -> list[Case]:
    found = []
    for n, k, d in shapes(device, quick):
        gemm = 2.0 * n * k * d
        for variant, (fwd_gemms, fwdbwd_gemms) in GEMMS.items():
            found.append(Case(f"ibq_{variant}", {"N": n, "K": k, "D": d},
                              functools.partial(_workloads, variant, (n, k, d)),
                              Work("matmul", fwd=fwd_gemms * gemm, fwdbwd=fwdbwd_gemms * gemm),
                              extra={"temperature": TEMPERATURE if variant != "quantize" else None,
                                     "allow_tf32": torch.backends.cuda.matmul.allow_tf32}))
    return found


def timing(device: str, quick: bool) -> Timing:
    """The CPU reference takes seconds per call: fewer blocks."""
    if device == "cpu" and not quick:
        return Timing(warmup=1, min_blocks=5, max_blocks=10, max_seconds=60.0)
    return Timing(min_blocks=5, max_seconds=1.0) if quick else Timing()


def _quantize(module, z, codebook):
    return module.ibq_quantize(z, codebook)[0]


def _quantize_with_entropy(module, z, codebook):
    z_q, _, entropy = module.ibq_quantize_with_entropy(z, codebook, TEMPERATURE)
    return z_q, entropy


def _workloads(variant: str, shape: tuple, device, dtype) -> dict[str, Workload]:
    n, k, d = shape
    gen = torch.Generator(device=device).manual_seed(0)
    z = torch.randn(n, d, device=device, dtype=dtype, generator=gen).requires_grad_(True)
    codebook = torch.randn(k, d, device=device, dtype=dtype, generator=gen).requires_grad_(True)
    grads = (torch.randn(n, d, device=device, dtype=dtype, generator=gen),)
    fn = _quantize
    if variant == "quantize+entropy":
        fn, grads = _quantize_with_entropy, grads + (None,)  # None: a scalar's gradient is 1
    return {impl: Workload(functools.partial(fn, module, z, codebook), (z, codebook), grads)
            for impl, module in (("fast", ops), ("reference", ops.reference))}
