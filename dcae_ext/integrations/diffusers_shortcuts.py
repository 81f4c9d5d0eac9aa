"""AutoencoderDC's residual shortcuts with the fused ops (docs/shortcuts.md), as per-instance forwards.

- DCDownBlock2d: main(x) + pixel_unshuffle(x) averaged over channel groups
  -> `ops.pixel_unshuffle_mean(x, 2, C_out, residual=main(x))`, one pass;
- DCUpBlock2d: main(x) + pixel_shuffle(x repeated over channels) -> `ops.pixel_shuffle_repeat`;
- Encoder output, conv_out(x) + x averaged over channel groups: its conv_out's forward becomes
  conv_out(x) + the fused average (factor 1) and the encoder's `out_shortcut` is turned off, so the
  encoder adds nothing twice and its own forward stays diffusers';
- Decoder input, conv_in(z) + z repeated over channels: likewise through conv_in and `in_shortcut`.

The main path is computed by the block's own submodules (their hooks, if any, run), and the sum
has the dtype the stock `main + shortcut` has (the promotion of the two, as under autocast).
A wrapped conv calls the forward it had before (e.g. an offload hook's) for its main path.
Nothing here imports diffusers.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from dcae_ext import ops

INNER_FORWARD = "_dcae_ext_inner_forward"  # a wrapped conv's previous instance forward (None: its class's)


def _unshuffle_mean_plus(source: torch.Tensor, factor: int, main: torch.Tensor) -> torch.Tensor:
    dtype = torch.promote_types(source.dtype, main.dtype)
    return ops.pixel_unshuffle_mean(source.to(dtype), factor, main.shape[1], residual=main.to(dtype))


def _shuffle_repeat_plus(source: torch.Tensor, factor: int, main: torch.Tensor) -> torch.Tensor:
    dtype = torch.promote_types(source.dtype, main.dtype)
    return ops.pixel_shuffle_repeat(source.to(dtype), factor, main.shape[1], residual=main.to(dtype))


def down_block_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    """DCDownBlock2d.forward (with its shortcut on), the shortcut fused."""
    main = self.conv(hidden_states)
    if self.downsample:
        main = F.pixel_unshuffle(main, self.factor)
    return _unshuffle_mean_plus(hidden_states, self.factor, main)


def up_block_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    """DCUpBlock2d.forward (with its shortcut on), the shortcut fused."""
    if self.interpolate:
        mode = getattr(self, "interpolation_mode", "nearest")  # diffusers before 0.33 had no such attribute
        main = self.conv(F.interpolate(hidden_states, scale_factor=self.factor, mode=mode))
    else:
        main = F.pixel_shuffle(self.conv(hidden_states), self.factor)
    return _shuffle_repeat_plus(hidden_states, self.factor, main)


def _inner(conv: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The wrapped conv's previous forward: its own instance forward (a hook's), else its class's."""
    inner = getattr(conv, INNER_FORWARD)
    return inner(x) if inner is not None else type(conv).forward(conv, x)


def encoder_conv_out_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    """The encoder's conv_out plus its output shortcut (channel-group average, factor 1)."""
    return _unshuffle_mean_plus(hidden_states, 1, _inner(self, hidden_states))


def decoder_conv_in_forward(self, latent: torch.Tensor) -> torch.Tensor:
    """The decoder's conv_in plus its input shortcut (channel repeat, factor 1)."""
    return _shuffle_repeat_plus(latent, 1, _inner(self, latent))


FUSED_FORWARDS = (down_block_forward, up_block_forward, encoder_conv_out_forward, decoder_conv_in_forward)


def installed_forward(module: torch.nn.Module):
    """The function of the module's per-instance forward (ours or another's), or None."""
    forward = module.__dict__.get("forward")
    if forward is None:
        return None
    return getattr(forward, "__func__", forward)


def is_fused(module: torch.nn.Module) -> bool:
    return installed_forward(module) in FUSED_FORWARDS


class BoundFunction:
    """`function` bound to `module`, like `types.MethodType`, but it pickles (torch.save of the
    whole model): a bound method pickles as `getattr(module, function.__name__)`, a name the module
    does not have. deepcopy binds the copy to the copied module."""

    def __init__(self, function, module: torch.nn.Module):
        self.__func__, self.__self__ = function, module

    def __call__(self, *args, **kwargs):
        return self.__func__(self.__self__, *args, **kwargs)


def install(module: torch.nn.Module, function, keep_inner: bool = False) -> None:
    """Give `module` the forward `function`; with `keep_inner`, remember the forward it had."""
    if keep_inner:
        setattr(module, INNER_FORWARD, module.__dict__.get("forward"))
    module.forward = BoundFunction(function, module)


def uninstall(module: torch.nn.Module) -> None:
    """Back to the forward the module had before `install`."""
    del module.__dict__["forward"]
    if INNER_FORWARD in module.__dict__:
        inner = module.__dict__.pop(INNER_FORWARD)
        if inner is not None:
            module.forward = inner
