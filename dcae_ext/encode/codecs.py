"""What `encode` and `tokenize` run on a batch: a DC-AE to unscaled latents in the model dtype, an
IBQ tokenizer to int32 code grids; and the way back to images for `decode`."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from dcae_ext.models import DCAE, IBQTokenizer
from dcae_ext.models.loading import cast_model
from dcae_ext.models.tiling import checked_overlap, tiled_map


def pad_to_multiple(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Pad the bottom and right edges to multiples of `factor`: reflected where the image is large
    enough, else replicated (DC-AE's own rule for `pad=True`)."""
    pad_h, pad_w = -x.shape[2] % factor, -x.shape[3] % factor
    if not (pad_h or pad_w):
        return x
    mode = "reflect" if pad_h < x.shape[2] and pad_w < x.shape[3] else "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)


class Codec:
    """images (B, 3, H, W) in [0, 1] -> per-image codes; codes -> images in [-1, 1] (float32)."""

    kind = ""
    stored_dtype: torch.dtype

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype):
        self.model = cast_model(model, dtype).eval()
        self.dtype = dtype
        self.factor = model.spatial_compression
        self.memory_format = torch.contiguous_format

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _input(self, images: torch.Tensor) -> torch.Tensor:
        x = pad_to_multiple(images.float() * 2 - 1, self.factor).to(self.dtype)
        return x.contiguous(memory_format=self.memory_format)

    def shard_metadata(self) -> dict[str, str]:
        raise NotImplementedError

    def description(self) -> dict:
        raise NotImplementedError


class LatentCodec(Codec):
    kind = "latents"

    def __init__(self, model: DCAE, dtype: torch.dtype, tile: int | None = None):
        """`tile`: images larger than `tile` pixels are encoded in overlapping tiles (DC-AE's tiling)."""
        if not isinstance(model, DCAE):
            raise ValueError(f"argument 'model': encode takes a DC-AE, got {type(model).__name__} "
                             "(an IBQ tokenizer goes through tokenize)")
        super().__init__(model, dtype)
        self.stored_dtype = dtype
        if tile is not None:
            model.enable_tiling(tile)
        if self.device.type == "cuda":  # cuDNN's faster convolution layout; the ops take it as it is
            self.memory_format = torch.channels_last
            self.model.to(memory_format=self.memory_format)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Unscaled latents (B, c, ceil(H/f), ceil(W/f)) in the model dtype."""
        return self.model.encode(self._input(images))

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.model.decode(latents.to(self.dtype)).float()

    def shard_metadata(self) -> dict[str, str]:
        return {"scaling_factor": repr(self.model.scaling_factor)}

    def description(self) -> dict:
        return {"scaling_factor": self.model.scaling_factor, "latent_channels": self.model.config.latent_channels,
                "spatial_compression": self.factor}


class TokenCodec(Codec):
    kind = "tokens"
    stored_dtype = torch.int32

    def __init__(self, model: IBQTokenizer, dtype: torch.dtype, tile: int | None = None):
        """`tile`: images larger than `tile` pixels go through the encoder in overlapping tiles whose
        continuous outputs are blended, then quantized whole (so no code is split between tiles)."""
        if not isinstance(model, IBQTokenizer):
            raise ValueError(f"argument 'model': tokenize takes an IBQ tokenizer, got {type(model).__name__} "
                             "(a DC-AE goes through encode)")
        super().__init__(model, dtype)
        self.tile = tile
        if tile is not None:
            self.overlap = checked_overlap(tile, self.factor)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Code indices (B, ceil(H/f), ceil(W/f)) as int32."""
        x = self._input(images)
        if self.tile is None or max(x.shape[-2:]) <= self.tile:
            return self.model.encode(x).to(torch.int32)
        latent = tiled_map(lambda part: self.model.quant_conv(self.model.encoder(part)), x, self.tile, self.overlap,
                           up=1, down=self.factor)
        return self.model.quantizer.nearest(latent).to(torch.int32)

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.decode_indices(tokens.long()).float()

    def shard_metadata(self) -> dict[str, str]:
        return {"num_codes": str(self.model.config.num_codes)}

    def description(self) -> dict:
        return {"num_codes": self.model.config.num_codes, "spatial_compression": self.factor}


CODECS = {"latents": LatentCodec, "tokens": TokenCodec}
