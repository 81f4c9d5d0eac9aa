"""Tiled application of a spatial map (encoder or decoder) with linear cross-fades in the overlaps.

Tiles are `tile` wide with `stride = tile - overlap`; the last tile of a row or column is moved
back so that it ends at the border, so every tile has the full size and the output covers exactly
the input times the scale (no overhang). Each tile's output is weighted by a separable ramp that
rises across the middle half of its overlap with the previous tile and falls across the middle half
of its overlap with the next (the outer quarters, computed without context, get 0 weight and are
left out of the sum), and the sum (float32, float64 for float64 tiles) is divided by the summed
weights. Because tiles form a grid, the weight sum is the outer product of the per-axis sums, so no
full-size weight map is stored.
"""
from __future__ import annotations

import numbers
from typing import Callable

import torch


def checked_overlap(tile: int, factor: int, overlap: int | None = None) -> int:
    """The overlap in pixels of tiles `tile` pixels wide at spatial compression `factor`, checked (both
    multiples of the factor, overlap in [0, tile)). Default: the largest multiple of the factor not above
    tile / 4, and at least the factor (one latent pixel), so tiles always blend across a seam."""
    tile = _integer(tile, "tile")
    if tile <= 0 or tile % factor:
        raise ValueError(f"argument 'tile': {tile} must be a positive multiple of the spatial factor {factor}")
    if overlap is None:
        if tile < 2 * factor:
            raise ValueError(f"argument 'tile': {tile} pixels is one latent pixel at spatial factor {factor}, too "
                             f"small for tiles to overlap; use tile >= {2 * factor} (e.g. {max(4 * factor, 512)})")
        overlap = max(factor, (tile // 4) // factor * factor)
    overlap = _integer(overlap, "overlap")
    if overlap < 0 or overlap % factor or overlap >= tile:
        raise ValueError(f"argument 'overlap': {overlap} must be a multiple of the spatial factor {factor} "
                         f"in [0, tile={tile})")
    return overlap


def _integer(value, name: str) -> int:
    """`value` as an int (numpy integers too); anything else (64.0, "64", None, True) a ValueError naming it,
    not a TypeError deep inside the first tiled call."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"argument '{name}': expected an integer number of pixels, got {value!r}")
    return int(value)


def tile_starts(size: int, tile: int, stride: int, align: int = 1) -> list[int]:
    """Start offsets of tiles covering [0, size); all multiples of `align` (size, tile and stride must be)."""
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, stride))
    last = size - tile
    if starts[-1] != last:
        starts.append(last)
    assert all(s % align == 0 for s in starts), "tile starts must stay aligned"
    return starts


def _ramp(length: int, device, floor: float = 0.0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Rising blend weights across an overlap of `length`: 0 over the first quarter (a tile's border
    outputs lack context), linear through the middle half, 1 over the last quarter. Mirrored, it is
    the neighbour's weight, so the two sum to 1."""
    position = torch.arange(length, device=device, dtype=dtype) + 0.5
    return ((position - length / 4) / (length / 2)).clamp(0, 1).clamp_min(floor)


_WEIGHT_FLOOR = 1e-3


def axis_weights(starts: list[int], tile: int, size: int, device, floor: float = 0.0,
                 dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    """Per-tile 1-D blend weights (`dtype`, length min(tile, size)), in output units."""
    length = min(tile, size)
    weights = []
    for i, start in enumerate(starts):
        w = torch.ones(length, device=device, dtype=dtype)
        if i > 0:
            rise = starts[i - 1] + length - start  # overlap with the previous tile
            if rise > 0:
                w[:rise] = _ramp(rise, device, floor, dtype)
        if i + 1 < len(starts):
            fall = start + length - starts[i + 1]
            if fall > 0:
                w[length - fall:] = torch.minimum(w[length - fall:], _ramp(fall, device, floor, dtype).flip(0))
        weights.append(w)
    return weights


def _weights_and_sum(starts: list[int], tile: int, size: int, device,
                     dtype: torch.dtype = torch.float32) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Blend weights and their sum along one axis. Zero weights (outputs without context) are kept
    exact; only where tiles overlap so much that some sum would be 0 does a small floor come in."""
    for floor in (0.0, _WEIGHT_FLOOR):
        weights = axis_weights(starts, tile, size, device, floor, dtype)
        total = torch.zeros(size, device=device, dtype=dtype)
        for start, w in zip(starts, weights):
            total[start:start + w.numel()] += w
        if bool((total > 0).all()):
            break
    return weights, total


def _nonzero_span(weights: torch.Tensor) -> tuple[int, int]:
    """[first, last + 1) of the nonzero weights (a ramp's zeros are at its ends); (0, 0) for none."""
    nonzero = weights.nonzero()
    return (int(nonzero[0]), int(nonzero[-1]) + 1) if nonzero.numel() else (0, 0)


def tiled_map(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tile: int, overlap: int,
              up: int = 1, down: int = 1) -> torch.Tensor:
    """Apply `fn` to overlapping tiles of x (B, C, H, W) and blend the results.

    `fn` maps a (B, C, h, w) tile to (B, C', h*up/down, w*up/down). `tile` and `overlap` are in x's
    units and, like H and W, multiples of `down`; 0 <= overlap < tile.
    """
    _, _, height, width = x.shape
    stride = tile - overlap
    rows, cols = tile_starts(height, tile, stride, down), tile_starts(width, tile, stride, down)

    def out_units(v: int) -> int:
        return v * up // down

    out_h, out_w, out_tile = out_units(height), out_units(width), out_units(tile)

    out = None
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            part = x[:, :, r:r + tile, c:c + tile]
            y = fn(part)
            if out is None:  # sums in float32, or float64 for float64 tiles (not rounded to float32)
                acc = torch.promote_types(y.dtype, torch.float32)
                row_w, row_sum = _weights_and_sum([out_units(s) for s in rows], out_tile, out_h, y.device, acc)
                col_w, col_sum = _weights_and_sum([out_units(s) for s in cols], out_tile, out_w, y.device, acc)
                row_span, col_span = [_nonzero_span(w) for w in row_w], [_nonzero_span(w) for w in col_w]
                out = torch.zeros(y.shape[0], y.shape[1], out_h, out_w, device=y.device, dtype=acc)
            if y.ndim != 4 or tuple(y.shape[2:]) != (row_w[i].numel(), col_w[j].numel()):
                raise ValueError(f"tiled_map: a {part.shape[2]} x {part.shape[3]} tile gave an output of shape "
                                 f"{tuple(y.shape)}, expected spatial size {row_w[i].numel()} x {col_w[j].numel()} "
                                 f"(scale {up}/{down}): the model's spatial factor is not the one tiled with")
            # only where the tile has weight: an inf or NaN among its outputs without context (weight 0)
            # would make NaN of the neighbour's good output (inf * 0)
            (top, bottom), (left, right) = row_span[i], col_span[j]
            oy, ox = out_units(r), out_units(c)
            out[:, :, oy + top:oy + bottom, ox + left:ox + right] += (
                y[:, :, top:bottom, left:right].to(acc) * (row_w[i][top:bottom, None] * col_w[j][None, left:right]))
    out /= row_sum[:, None] * col_sum[None, :]
    return out.to(y.dtype)
