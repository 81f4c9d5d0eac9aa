"""DC-AE residual shortcuts (docs/shortcuts.md): space-to-channel averaging and its inverse.

The registered ops carry an extra `scale` (y = residual + scale * f(x)) so that each serves as
the other's backward: d(unshuffle_mean)/dx = shuffle_repeat scaled by 1/G, and
d(shuffle_repeat)/dx = unshuffle_mean scaled by R (a sum over the R copies).
Autocast: the ops run in x's dtype (no cast is inserted); residual must match it.
"""
from __future__ import annotations

import torch

from dcae_ext.ops import _library, reference
from dcae_ext.ops._library import use_kernel
from dcae_ext.ops._validate import check_int, check_same_device, check_tensor


def _shortcut(op_name: str, x, factor, out_channels, residual):
    """The compiled op, or its reference after the compiled op's argument checks."""
    check_tensor(x, "x")
    check_int(factor, "factor")
    check_int(out_channels, "out_channels")
    if residual is not None:
        check_tensor(residual, "residual")
        check_same_device(x, "x", residual, "residual")
    if x.dim() == 4 and x.shape[1] == 0:  # unshuffle_mean would average groups of no channel: NaN
        raise ValueError(f"argument 'x': needs at least one channel, got shape {list(x.shape)}")
    if x.dim() == 4 and factor > 0 and max(x.shape[1], out_channels) * factor * factor >= 2**63:  # int64 wraps
        raise ValueError(f"argument 'factor': {factor} is too large (the channels times factor^2 overflow int64)")
    if use_kernel(op_name, x):
        _library.check_meta_arguments("_check_shortcut_args", x, x, factor, out_channels, residual,
                                      op_name == "pixel_unshuffle_mean")
        return getattr(torch.ops.dcae_ext, op_name)(x, factor, out_channels, 1.0, residual)
    _library.check_arguments("_check_shortcut_args", x, factor, out_channels, residual,
                             op_name == "pixel_unshuffle_mean")
    return getattr(reference, op_name)(x, factor, out_channels, residual)


def pixel_unshuffle_mean(x: torch.Tensor, factor: int, out_channels: int,
                         residual: torch.Tensor | None = None) -> torch.Tensor:
    """Space-to-channel shortcut of DC-AE's downsampling blocks and encoder output.

    x (B, C, H, W) -> (B, out_channels, H/factor, W/factor): pixel_unshuffle, then the mean of each
    group of G = C * factor^2 / out_channels consecutive channels; plus `residual` when given
    (one fused pass). factor = 1 is plain channel averaging.
    """
    return _shortcut("pixel_unshuffle_mean", x, factor, out_channels, residual)


def pixel_shuffle_repeat(x: torch.Tensor, factor: int, out_channels: int,
                         residual: torch.Tensor | None = None) -> torch.Tensor:
    """Channel-to-space shortcut of DC-AE's upsampling blocks and decoder input.

    x (B, C, H, W) -> (B, out_channels, H*factor, W*factor): each channel repeated
    R = out_channels * factor^2 / C times (repeat_interleave), then pixel_shuffle; plus `residual`.
    """
    return _shortcut("pixel_shuffle_repeat", x, factor, out_channels, residual)


def _output_layout(x: torch.Tensor) -> torch.memory_format:
    # Mirrors dcae_ext::layout_of in csrc/common/tensor_access.h.
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _fake_output(x, shape):
    return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=_output_layout(x))


if _library.has_ops("pixel_unshuffle_mean", "pixel_shuffle_repeat"):
    @torch.library.register_fake("dcae_ext::pixel_unshuffle_mean")
    def _unshuffle_fake(x, factor, out_channels, scale, residual):
        b, _, h, w = x.shape
        return _fake_output(x, (b, out_channels, h // factor, w // factor))

    @torch.library.register_fake("dcae_ext::pixel_shuffle_repeat")
    def _shuffle_fake(x, factor, out_channels, scale, residual):
        b, _, h, w = x.shape
        return _fake_output(x, (b, out_channels, h * factor, w * factor))

    def _setup_context(ctx, inputs, output):
        x, factor, out_channels, scale, residual = inputs
        ctx.factor, ctx.in_channels, ctx.out_channels, ctx.scale = factor, x.shape[1], out_channels, scale
        ctx.has_residual = residual is not None

    def _unshuffle_backward(ctx, grad):
        group = ctx.in_channels * ctx.factor * ctx.factor // ctx.out_channels
        grad_x = torch.ops.dcae_ext.pixel_shuffle_repeat(grad, ctx.factor, ctx.in_channels, ctx.scale / group, None)
        return grad_x, None, None, None, grad if ctx.has_residual else None

    def _shuffle_backward(ctx, grad):
        repeats = ctx.out_channels * ctx.factor * ctx.factor // ctx.in_channels
        grad_x = torch.ops.dcae_ext.pixel_unshuffle_mean(grad, ctx.factor, ctx.in_channels, ctx.scale * repeats, None)
        return grad_x, None, None, None, grad if ctx.has_residual else None

    torch.library.register_autograd("dcae_ext::pixel_unshuffle_mean", _unshuffle_backward,
                                    setup_context=_setup_context)
    torch.library.register_autograd("dcae_ext::pixel_shuffle_repeat", _shuffle_backward, setup_context=_setup_context)
    _library.mark_registered("pixel_unshuffle_mean", "pixel_shuffle_repeat")
