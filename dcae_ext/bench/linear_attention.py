"""Benchmark of the fused ReLU linear attention against its PyTorch reference (float32 math).

Shapes (head dim 32): Sana's C=1152 transformer (36 heads, 64x64 tokens) and the three
EfficientViT stages of DC-AE f32c32 at a 1024x1024 input (16 heads at 64x64 tokens, 32 at 32x32,
32 at 16x16). Two layouts: `separate` (three contiguous leaf tensors: the op alone) and
`qkv_views` (views of one interleaved (B, heads, 3d, N) tensor, the layout the model produces; its
backward also pays autograd's slicing glue, the same for both implementations: each view's
gradient is scattered into a zero-filled qkv-sized buffer and the three are summed).
Memory-bound floor: forward reads q, k, v once and writes out once; forward + backward adds
reading q, k, v and grad and writing dq, dk, dv (11 tensors in all).
"""
from __future__ import annotations

import functools

import torch

from dcae_ext import ops
from dcae_ext.bench.harness import Case, Work, Workload

HEAD_DIM = 32
LAYOUTS = ("separate", "qkv_views")


def cases(device: str, quick: bool) -> list[Case]:
    on_gpu = device != "cpu"
    stage_batch = 8 if on_gpu else 2
    sana_batch = 16 if on_gpu and not quick else 1
    shapes = [("sana_1152", sana_batch, 36, 64 * 64),
              ("dcae_stage_64x64", stage_batch, 16, 64 * 64),
              ("dcae_stage_32x32", stage_batch, 32, 32 * 32),
              ("dcae_stage_16x16", stage_batch, 32, 16 * 16)]
    return [Case("linear_attention",
                 {"case": name, "B": batch, "heads": heads, "d": HEAD_DIM, "N": tokens, "layout": layout},
                 functools.partial(_workloads, layout, (batch, heads, HEAD_DIM, tokens)),
                 Work("memory", fwd=4 * batch * heads * HEAD_DIM * tokens,
                      fwdbwd=11 * batch * heads * HEAD_DIM * tokens))
            for name, batch, heads, tokens in shapes for layout in LAYOUTS]


def _workloads(layout: str, shape: tuple, device, dtype) -> dict[str, Workload]:
    gen = torch.Generator(device=device).manual_seed(0)
    if layout == "separate":
        inputs = tuple(torch.randn(shape, device=device, dtype=dtype, generator=gen).requires_grad_(True)
                       for _ in range(3))
        q, k, v = inputs
    else:
        batch, heads, dim, tokens = shape
        qkv = torch.randn((batch, heads, 3 * dim, tokens), device=device, dtype=dtype,
                          generator=gen).requires_grad_(True)
        inputs = (qkv,)
        q, k, v = qkv[:, :, :dim], qkv[:, :, dim:2 * dim], qkv[:, :, 2 * dim:]
    grad = torch.randn(shape, device=device, dtype=dtype, generator=gen)
    return {impl: Workload(functools.partial(fn, q, k, v), inputs, (grad,))
            for impl, fn in (("fast", ops.linear_attention), ("reference", ops.reference.linear_attention))}
