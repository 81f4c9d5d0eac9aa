"""Benchmark of the DC-AE shortcut ops on the f32c32 stage tensors (1024x1024 input on GPU, 512 on
CPU, 256 with --quick).

Fast (fused kernel, residual add included) vs the reference chain (pixel_unshuffle + view + mean,
or repeat_interleave + pixel_shuffle, then + residual). Memory-bound: the forward must read x and
the residual once and write y once; forward+backward adds reading the upstream gradient and
writing dx (dresidual is the upstream gradient itself).
"""
from __future__ import annotations

import functools
import math

import torch

from dcae_ext import ops
from dcae_ext.bench.harness import Case, Work, Workload

# f32c32: the downsample shortcuts of stages 0-4 (width in -> width out, factor 2), the encoder
# output (1024 -> 32 channels, factor 1), and the mirrored decoder shortcuts.
F32C32_WIDTHS = [128, 256, 512, 512, 1024, 1024]


def cases(device: str, quick: bool) -> list[Case]:
    resolution = 256 if quick else (1024 if device != "cpu" else 512)
    found = []
    size = resolution
    for stage in range(5):
        c_in, c_out = F32C32_WIDTHS[stage], F32C32_WIDTHS[stage + 1]
        found.append(_case("pixel_unshuffle_mean", f"down{stage}", (1, c_in, size, size), 2, c_out))
        found.append(_case("pixel_shuffle_repeat", f"up{stage}", (1, c_out, size // 2, size // 2), 2, c_in))
        size //= 2
    found.append(_case("pixel_unshuffle_mean", "encoder_out", (1, 1024, size, size), 1, 32))
    found.append(_case("pixel_shuffle_repeat", "decoder_in", (1, 32, size, size), 1, 1024))
    return found


def _case(op: str, stage: str, x_shape: tuple, factor: int, out_channels: int) -> Case:
    x_numel, y_numel = math.prod(x_shape), math.prod(_out_shape(op, x_shape, factor, out_channels))
    return Case(op, {"stage": stage, "x": list(x_shape), "factor": factor, "out_channels": out_channels,
                     "residual": True},
                functools.partial(_workloads, op, x_shape, factor, out_channels),
                Work("memory", fwd=x_numel + 2 * y_numel, fwdbwd=2 * x_numel + 3 * y_numel))


def _workloads(op, x_shape, factor, out_channels, device, dtype) -> dict[str, Workload]:
    x = torch.randn(x_shape, device=device, dtype=dtype, requires_grad=True)
    residual = torch.randn(_out_shape(op, x_shape, factor, out_channels), device=device, dtype=dtype,
                           requires_grad=True)
    grad = torch.randn_like(residual)
    return {impl: Workload(functools.partial(fn, x, factor, out_channels, residual=residual), (x, residual), (grad,))
            for impl, fn in (("fast", getattr(ops, op)), ("reference", getattr(ops.reference, op)))}


def _out_shape(op, shape, factor, out_channels):
    b, _, h, w = shape
    if op == "pixel_unshuffle_mean":
        return (b, out_channels, h // factor, w // factor)
    return (b, out_channels, h * factor, w * factor)

