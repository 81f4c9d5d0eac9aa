"""Images of any size (docs/any_size.md): pad the bottom and right edges up to the next multiple of
the model's spatial factor f, run the model, crop its output back to the image's own size.

Every path that takes an image of any size uses these three functions: the models' `pad=True` /
`size=` arguments, `dcae-ext reconstruct`, `eval --resolution 0`, `encode`/`tokenize` and `decode`.
Padding only the bottom and right keeps latent pixel (i, j) on image pixels [i*f, (i+1)*f) x
[j*f, (j+1)*f), so the crop is always the top-left H x W and tiles stay aligned to the factor.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# Repeating the last row and column: of replicate, reflect and zeros, the padding whose cropped
# reconstructions are best next to the edge (measured with trained DC-AE and IBQ models,
# docs/any_size.md), and one rule for every size, images smaller than the factor included.
PAD_MODE = "replicate"
PAD_MODES = ("reflect", "replicate", "constant")  # all that benchmarks/padding_quality.py compares


def padded_size(size: int, factor: int) -> int:
    """The next multiple of `factor` at or above `size`."""
    return -(-size // factor) * factor


def pad_to_multiple(x: torch.Tensor, factor: int, mode: str = PAD_MODE) -> torch.Tensor:
    """x (C, H, W) or (B, C, H, W) padded at the bottom and right to multiples of `factor` (x itself
    when they are).

    `mode`: as torch.nn.functional.pad's ("constant" pads with 0, mid grey for images in [-1, 1]).
    A reflected axis shorter than its padding (an image smaller than the factor) cannot be
    mirrored in one go and repeats its edge pixel instead."""
    if mode not in PAD_MODES:
        raise ValueError(f"argument 'mode': expected one of {PAD_MODES}, got {mode!r}")
    if factor < 1:
        raise ValueError(f"argument 'factor': expected a positive spatial factor, got {factor}")
    if x.ndim not in (3, 4):
        raise ValueError(f"argument 'x': expected (C, H, W) or (B, C, H, W), got shape {tuple(x.shape)}")
    if x.shape[-2] < 1 or x.shape[-1] < 1:
        raise ValueError(f"argument 'x': an image needs at least one pixel, got {x.shape[-2]}x{x.shape[-1]}")
    pad_h, pad_w = -x.shape[-2] % factor, -x.shape[-1] % factor
    if pad_w:
        x = F.pad(x, (0, pad_w, 0, 0), mode=_axis_mode(mode, pad_w, x.shape[-1]))
    if pad_h:
        x = F.pad(x, (0, 0, 0, pad_h), mode=_axis_mode(mode, pad_h, x.shape[-2]))
    return x


def _axis_mode(mode: str, pad: int, length: int) -> str:
    return "replicate" if mode == "reflect" and pad >= length else mode


def crop_to_size(y: torch.Tensor, size: tuple[int, int] | torch.Size | None, factor: int) -> torch.Tensor:
    """The top-left `size` = (H, W) of y (..., H', W'), the output of a model run on an H x W image
    padded to multiples of `factor` (so H' = padded_size(H, factor), likewise W). None: y itself."""
    if size is None:
        return y
    height, width = (int(v) for v in size)
    if (padded_size(height, factor), padded_size(width, factor)) != tuple(y.shape[-2:]) or min(height, width) < 1:
        raise ValueError(f"argument 'size': {height}x{width} is not the size of an image whose padded output is "
                         f"{y.shape[-2]}x{y.shape[-1]} (spatial factor {factor}: expected a size in "
                         f"({y.shape[-2] - factor}, {y.shape[-2]}] x ({y.shape[-1] - factor}, {y.shape[-1]}])")
    return y[..., :height, :width]
