"""AutoencoderDC's tiled encode/decode through the package's tiler (dcae_ext.models.tiling).

diffusers' AutoencoderDC calls `self.tiled_decode` / `self.tiled_encode` once `enable_tiling()` is
on and the input is larger than a tile; these per-instance replacements take the tile size and the
overlap from the same settings (`tile_sample_min_*`, `tile_sample_stride_*`) and run the package's
tiler: every tile the full size (the last one moved back to the border), outputs exactly
f x the latent, ramps across the middle half of each overlap, the sum divided by the summed weights
without a full-size weight map. diffusers' own blend keeps every decoded tile until the end and
ramps across the whole overlap, so the two outputs differ (docs/diffusers.md: how much).
"""
from __future__ import annotations

import torch

from dcae_ext.integrations.diffusers_shortcuts import BoundFunction
from dcae_ext.models.tiling import checked_overlap, tiled_map

NOTE = ("tiled encode/decode (after vae.enable_tiling()): the package's tiler, exact sizes; its blend differs "
        "from diffusers' (on a small trained DC-AE 44.6-50.8 dB PSNR against the untiled decode, diffusers' "
        "43.1-48.2 dB: docs/diffusers.md); accelerate(..., tiling=False) keeps diffusers'")


def _tile_and_overlap(vae) -> tuple[int, int]:
    """Square tiles of the smaller `tile_sample_min_*`; the overlap `min - stride` rounded up to a
    multiple of the spatial factor f (the tiler cuts latents, so both must be multiples of f)."""
    f = vae.spatial_compression_ratio
    tile = min(vae.tile_sample_min_height, vae.tile_sample_min_width) // f * f
    stride = min(vae.tile_sample_stride_height, vae.tile_sample_stride_width)
    overlap = -(-max(tile - int(stride), 0) // f) * f
    if tile < 2 * f:
        raise ValueError(f"AutoencoderDC.enable_tiling: tiles of {tile} pixels are under two latent pixels at "
                         f"spatial factor {f}; use tile_sample_min_height/width >= {2 * f}")
    return tile, checked_overlap(tile, f, min(overlap, tile - f))


def tiled_decode(self, z: torch.Tensor, return_dict: bool = True):
    """AutoencoderDC.tiled_decode with the package's tiler."""
    from diffusers.models.autoencoders import autoencoder_dc

    f = self.spatial_compression_ratio
    tile, overlap = _tile_and_overlap(self)
    decoded = tiled_map(self.decoder, z, tile // f, overlap // f, up=f)
    return autoencoder_dc.DecoderOutput(sample=decoded) if return_dict else (decoded,)


def tiled_encode(self, x: torch.Tensor, return_dict: bool = True):
    """AutoencoderDC.tiled_encode with the package's tiler (sizes that are not multiples of f: diffusers')."""
    from diffusers.models.autoencoders import autoencoder_dc

    f = self.spatial_compression_ratio
    if x.shape[-2] % f or x.shape[-1] % f:
        return type(self).tiled_encode(self, x, return_dict)
    tile, overlap = _tile_and_overlap(self)
    encoded = tiled_map(self.encoder, x, tile, overlap, down=f)
    return autoencoder_dc.EncoderOutput(latent=encoded) if return_dict else (encoded,)


_OURS = {"tiled_decode": tiled_decode, "tiled_encode": tiled_encode}


def state(vae) -> str:
    installed = {name: getattr(vae.__dict__.get(name), "__func__", vae.__dict__.get(name)) for name in _OURS}
    if all(installed[name] is fn for name, fn in _OURS.items()):
        return "fused"
    if all(fn is None for fn in installed.values()):
        return "stock"
    return "its tiled_encode / tiled_decode were replaced by someone else"


def install(vae) -> None:
    for name, fn in _OURS.items():
        setattr(vae, name, BoundFunction(fn, vae))


def uninstall(vae) -> None:
    for name in _OURS:
        del vae.__dict__[name]
