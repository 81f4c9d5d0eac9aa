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

import itertools

import torch

from dcae_ext import ops
from dcae_ext.bench.harness import make_record, measure
from dcae_ext.bench.hardware import bandwidth_gbps

HEAD_DIM = 32
LAYOUTS = ("separate", "qkv_views")


def cases(device: str, quick: bool) -> list[tuple[str, int, int, int]]:
    """(name, batch, heads, tokens)."""
    on_gpu = device != "cpu"
    stage_batch = 8 if on_gpu else 2
    found = [("dcae_stage_64x64", stage_batch, 16, 64 * 64),
             ("dcae_stage_32x32", stage_batch, 32, 32 * 32),
             ("dcae_stage_16x16", stage_batch, 32, 16 * 16)]
    sana_batch = 16 if on_gpu else 1
    found.insert(0, ("sana_1152", sana_batch if not quick else 1, 36, 64 * 64))
    return found


def _inputs(layout, batch, heads, tokens, device, dtype):
    """(leaves to clear grads of, q, k, v, grad)."""
    gen = torch.Generator(device=device).manual_seed(0)
    if layout == "separate":
        leaves = [torch.randn((batch, heads, HEAD_DIM, tokens), device=device, dtype=dtype, generator=gen)
                  .requires_grad_(True) for _ in range(3)]
        q, k, v = leaves
    else:
        qkv = torch.randn((batch, heads, 3 * HEAD_DIM, tokens), device=device, dtype=dtype, generator=gen)
        leaves = [qkv.requires_grad_(True)]
        q, k, v = qkv[:, :, :HEAD_DIM], qkv[:, :, HEAD_DIM:2 * HEAD_DIM], qkv[:, :, 2 * HEAD_DIM:]
    grad = torch.randn(q.shape, device=device, dtype=dtype, generator=gen)
    return leaves, q, k, v, grad


def run(device: str = "cpu", dtypes=(torch.float32,), quick: bool = False) -> list[dict]:
    repeats = 3 if quick else 10
    limit_gbps, limit_source = bandwidth_gbps(device)
    records = []
    for dtype in dtypes:
        for (name, batch, heads, tokens), layout in itertools.product(cases(device, quick), LAYOUTS):
            leaves, q, k, v, grad = _inputs(layout, batch, heads, tokens, device, dtype)
            tensor_bytes = q.numel() * q.element_size()
            for impl, fn in (("fast", ops.linear_attention), ("reference", ops.reference.linear_attention)):
                def forward():
                    return fn(q, k, v)

                def forward_backward():
                    for leaf in leaves:
                        leaf.grad = None
                    forward().backward(grad)

                m = measure(forward, forward_backward, device=device, repeats=repeats)
                gbps = 4 * tensor_bytes / (m["fwd_ms"] * 1e-3) / 1e9 if m["fwd_ms"] else None
                fwdbwd_gbps = 11 * tensor_bytes / (m["fwdbwd_ms"] * 1e-3) / 1e9 if m["fwdbwd_ms"] else None
                records.append(make_record(
                    "linear_attention", impl, device, dtype,
                    {"case": name, "B": batch, "heads": heads, "d": HEAD_DIM, "N": tokens, "layout": layout},
                    m, gbps=gbps, fwdbwd_gbps=fwdbwd_gbps, limit_gbps=limit_gbps, limit_source=limit_source,
                    fraction_of_limit=gbps / limit_gbps if gbps else None,
                    fwdbwd_fraction_of_limit=fwdbwd_gbps / limit_gbps if fwdbwd_gbps else None))
    return records
