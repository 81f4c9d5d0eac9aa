"""DC-AE residual shortcuts (DESIGN.md 2.3): space-to-channel averaging and its inverse.

The registered ops carry an extra `scale` (y = residual + scale * f(x)) so that each serves as
the other's backward: d(unshuffle_mean)/dx = shuffle_repeat scaled by 1/G, and
d(shuffle_repeat)/dx = unshuffle_mean scaled by R (a sum over the R copies).
Autocast: the ops run in x's dtype (no cast is inserted); residual must match it.
"""
from __future__ import annotations

import torch

from dcae_ext.ops import reference
from dcae_ext.ops._library import register_python_side, use_kernel
from dcae_ext.ops._validate import check_positive_int, check_same, check_shape, check_tensor


def _validate(x, factor, out_channels, residual, unshuffle: bool):
    check_tensor(x, "x", ndim=4)
    check_positive_int(factor, "factor")
    check_positive_int(out_channels, "out_channels")
    b, c, h, w = x.shape
    if unshuffle:
        if h % factor or w % factor:
            raise ValueError(f"argument 'factor': {factor} does not divide the spatial size {h}x{w} of x")
        if (c * factor * factor) % out_channels:
            raise ValueError(f"argument 'out_channels': {out_channels} does not divide "
                             f"in_channels * factor^2 = {c * factor * factor}")
        out_shape = (b, out_channels, h // factor, w // factor)
    else:
        if c == 0 or (out_channels * factor * factor) % c:
            raise ValueError(f"argument 'out_channels': out_channels * factor^2 = {out_channels * factor * factor} "
                             f"is not a multiple of x's {c} channels")
        out_shape = (b, out_channels, h * factor, w * factor)
    if residual is not None:
        check_tensor(residual, "residual", ndim=4)
        check_same(x, "x", residual, "residual")
        check_shape(residual, "residual", out_shape)
    return out_shape


def pixel_unshuffle_mean(x: torch.Tensor, factor: int, out_channels: int,
                         residual: torch.Tensor | None = None) -> torch.Tensor:
    """Space-to-channel shortcut of DC-AE's downsampling blocks and encoder output.

    x (B, C, H, W) -> (B, out_channels, H/factor, W/factor): pixel_unshuffle, then the mean of each
    group of G = C * factor^2 / out_channels consecutive channels; plus `residual` when given
    (one fused pass). factor = 1 is plain channel averaging.
    """
    _validate(x, factor, out_channels, residual, unshuffle=True)
    if not use_kernel("pixel_unshuffle_mean", x):
        return reference.pixel_unshuffle_mean(x, factor, out_channels, residual)
    return torch.ops.dcae_ext.pixel_unshuffle_mean(x, factor, out_channels, 1.0, residual)


def pixel_shuffle_repeat(x: torch.Tensor, factor: int, out_channels: int,
                         residual: torch.Tensor | None = None) -> torch.Tensor:
    """Channel-to-space shortcut of DC-AE's upsampling blocks and decoder input.

    x (B, C, H, W) -> (B, out_channels, H*factor, W*factor): each channel repeated
    R = out_channels * factor^2 / C times (repeat_interleave), then pixel_shuffle; plus `residual`.
    """
    _validate(x, factor, out_channels, residual, unshuffle=False)
    if not use_kernel("pixel_shuffle_repeat", x):
        return reference.pixel_shuffle_repeat(x, factor, out_channels, residual)
    return torch.ops.dcae_ext.pixel_shuffle_repeat(x, factor, out_channels, 1.0, residual)


def _output_layout(x: torch.Tensor) -> torch.memory_format:
    # Mirrors dcae_ext::layout_of in csrc/common/checks.h.
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _fake_output(x, shape):
    return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=_output_layout(x))


def _register():
    unshuffle = torch.ops.dcae_ext.pixel_unshuffle_mean
    shuffle = torch.ops.dcae_ext.pixel_shuffle_repeat

    @torch.library.register_fake("dcae_ext::pixel_unshuffle_mean")
    def _unshuffle_fake(x, factor, out_channels, scale, residual):
        b, _, h, w = x.shape
        return _fake_output(x, (b, out_channels, h // factor, w // factor))

    @torch.library.register_fake("dcae_ext::pixel_shuffle_repeat")
    def _shuffle_fake(x, factor, out_channels, scale, residual):
        b, _, h, w = x.shape
        return _fake_output(x, (b, out_channels, h * factor, w * factor))

    def _setup(ctx, inputs, output):
        x, factor, out_channels, scale, residual = inputs
        ctx.factor, ctx.in_channels, ctx.out_channels, ctx.scale = factor, x.shape[1], out_channels, scale
        ctx.has_residual = residual is not None

    def _unshuffle_backward(ctx, grad):
        group = ctx.in_channels * ctx.factor * ctx.factor // ctx.out_channels
        grad_x = shuffle(grad, ctx.factor, ctx.in_channels, ctx.scale / group, None)
        return grad_x, None, None, None, grad if ctx.has_residual else None

    def _shuffle_backward(ctx, grad):
        repeats = ctx.out_channels * ctx.factor * ctx.factor // ctx.in_channels
        grad_x = unshuffle(grad, ctx.factor, ctx.in_channels, ctx.scale * repeats, None)
        return grad_x, None, None, None, grad if ctx.has_residual else None

    torch.library.register_autograd("dcae_ext::pixel_unshuffle_mean", _unshuffle_backward, setup_context=_setup)
    torch.library.register_autograd("dcae_ext::pixel_shuffle_repeat", _shuffle_backward, setup_context=_setup)


register_python_side(("pixel_unshuffle_mean", "pixel_shuffle_repeat"), _register)
