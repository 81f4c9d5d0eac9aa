"""Benchmark of the IBQ quantizer: fused tiled op vs the N x K PyTorch formulation (docs/ibq.md).

Variants: `quantize` (ibq_quantize) and `quantize+entropy` (ibq_quantize_with_entropy, T = 0.01),
each forward and forward+backward. The limit is GEMM throughput: 2*N*K*D flops per GEMM, with
2 (forward) / 6 (forward+backward) GEMMs for quantize and 3 / 7 with the entropy; memory
O((N + K) D) for the fused op, while the reference builds several N x K tensors (OOM recorded).
"""
from __future__ import annotations

import torch

from dcae_ext import ops
from dcae_ext.bench.harness import make_record, measure
from dcae_ext.bench.hardware import matmul_tflops

TEMPERATURE = 0.01
GEMMS = {"quantize": (2, 6), "quantize+entropy": (3, 7)}  # (forward, forward+backward)


def shapes(device: str, quick: bool) -> list[tuple[int, int, int]]:
    if device == "cpu":
        return [(512, 8192, 64)] if quick else [(2048, 32768, 64)]
    if quick:
        return [(8192, 2**14, 256), (8192, 2**16, 256)]
    return [(8192, 2**k, 256) for k in (14, 16, 18)]


def _impl(variant: str, fused: bool):
    module = ops if fused else ops.reference
    if variant == "quantize":
        return lambda z, c: (module.ibq_quantize(z, c)[0], None)
    return lambda z, c: (lambda out: (out[0], out[2]))(module.ibq_quantize_with_entropy(z, c, TEMPERATURE))


def run(device: str = "cpu", dtypes=(torch.float32,), quick: bool = False) -> list[dict]:
    repeats = 3 if (quick or device == "cpu") else 10
    warmup = 1 if device == "cpu" else 2
    records = []
    for dtype in dtypes:
        tflops, tflops_source = matmul_tflops(device, dtype)
        for n, k, d in shapes(device, quick):
            gen = torch.Generator(device=device).manual_seed(0)
            z = torch.randn(n, d, device=device, dtype=dtype, generator=gen).requires_grad_(True)
            codebook = torch.randn(k, d, device=device, dtype=dtype, generator=gen).requires_grad_(True)
            grad = torch.randn(n, d, device=device, dtype=dtype, generator=gen)
            gemm_ms = 2.0 * n * k * d / (tflops * 1e12) * 1e3
            for variant, (fwd_gemms, fwdbwd_gemms) in GEMMS.items():
                for impl in ("fast", "reference"):
                    fn = _impl(variant, impl == "fast")

                    def forward():
                        return fn(z, codebook)

                    def forward_backward():
                        z.grad = codebook.grad = None
                        z_q, ent = forward()
                        loss = (z_q * grad).sum()
                        if ent is not None:
                            loss = loss + ent
                        loss.backward()

                    m = measure(forward, forward_backward, device=device, warmup=warmup, repeats=repeats)
                    floor_fwd, floor_fwdbwd = fwd_gemms * gemm_ms, fwdbwd_gemms * gemm_ms
                    records.append(make_record(
                        f"ibq_{variant}", impl, device, dtype, {"N": n, "K": k, "D": d}, m,
                        temperature=TEMPERATURE if variant != "quantize" else None,
                        floor_fwd_ms=floor_fwd, floor_fwdbwd_ms=floor_fwdbwd,
                        limit_tflops=tflops, limit_source=tflops_source,
                        tflops_fwdbwd=fwdbwd_gemms * 2.0 * n * k * d / (m["fwdbwd_ms"] * 1e-3) / 1e12
                        if m["fwdbwd_ms"] else None,
                        fraction_of_limit=floor_fwdbwd / m["fwdbwd_ms"] if m["fwdbwd_ms"] else None,
                        allow_tf32=torch.backends.cuda.matmul.allow_tf32))
                    if device == "cuda":
                        torch.cuda.empty_cache()
    return records
