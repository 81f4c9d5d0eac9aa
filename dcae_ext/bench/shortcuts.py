"""Benchmark of the DC-AE shortcut ops on the f32c32 stage tensors at 1024x1024 input.

Fast (fused kernel, residual add included) vs the reference chain (pixel_unshuffle + view +
mean, or repeat_interleave + pixel_shuffle, then + residual). Memory-bound: the floor is
reading x and the residual once and writing y once.
"""
from __future__ import annotations

import torch

from dcae_ext import ops
from dcae_ext.bench.harness import make_record, measure
from dcae_ext.bench.hardware import bandwidth_gbps

# f32c32 at 1024x1024: the downsample shortcuts of stages 0-4 (width in -> width out, factor 2),
# the encoder output (1024 -> 32 channels, factor 1), and the mirrored decoder shortcuts.
F32C32_WIDTHS = [128, 256, 512, 512, 1024, 1024]


def stage_cases(resolution: int = 1024, batch: int = 1):
    cases = []
    size = resolution
    for stage in range(5):
        c_in, c_out = F32C32_WIDTHS[stage], F32C32_WIDTHS[stage + 1]
        cases.append(("pixel_unshuffle_mean", f"down{stage}", (batch, c_in, size, size), 2, c_out))
        cases.append(("pixel_shuffle_repeat", f"up{stage}", (batch, c_out, size // 2, size // 2), 2, c_in))
        size //= 2
    cases.append(("pixel_unshuffle_mean", "encoder_out", (batch, 1024, size, size), 1, 32))
    cases.append(("pixel_shuffle_repeat", "decoder_in", (batch, 32, size, size), 1, 1024))
    return cases


def _out_shape(op, shape, factor, out_channels):
    b, _, h, w = shape
    if op == "pixel_unshuffle_mean":
        return (b, out_channels, h // factor, w // factor)
    return (b, out_channels, h * factor, w * factor)


def run(device: str = "cpu", dtypes=(torch.float32,), quick: bool = False) -> list[dict]:
    resolution = 256 if quick else (1024 if device != "cpu" else 512)
    repeats = 3 if quick else 10
    limit_gbps, limit_source = bandwidth_gbps(device)
    records = []
    for dtype in dtypes:
        for op_name, stage, shape, factor, out_channels in stage_cases(resolution):
            x = torch.randn(shape, device=device, dtype=dtype, requires_grad=True)
            residual = torch.randn(_out_shape(op_name, shape, factor, out_channels), device=device,
                                   dtype=dtype, requires_grad=True)
            grad = torch.randn_like(residual)
            bytes_moved = (x.numel() + 2 * residual.numel()) * x.element_size()
            for impl, fn in (("fast", getattr(ops, op_name)), ("reference", getattr(ops.reference, op_name))):
                def forward():
                    return fn(x, factor, out_channels, residual=residual)

                def forward_backward():
                    x.grad = residual.grad = None
                    forward().backward(grad)

                m = measure(forward, forward_backward, device=device, repeats=repeats)
                gbps = bytes_moved / (m["fwd_ms"] * 1e-3) / 1e9 if m["fwd_ms"] else None
                records.append(make_record(
                    op_name, impl, device, dtype,
                    {"stage": stage, "x": list(shape), "factor": factor, "out_channels": out_channels,
                     "residual": True},
                    m, gbps=gbps, limit_gbps=limit_gbps, limit_source=limit_source,
                    fraction_of_limit=gbps / limit_gbps if gbps else None))
    return records
