"""What `encode` and `tokenize` run on a batch: a DC-AE to unscaled latents in the model dtype, an
IBQ tokenizer to int32 code grids; and the way back to images for `decode`."""
from __future__ import annotations

import torch

from dcae_ext.models import DCAE, IBQTokenizer
from dcae_ext.models.loading import cast_model
from dcae_ext.models.padding import crop_to_size


class Codec:
    """images (B, 3, H, W) in [0, 1] -> per-image codes; codes -> images in [-1, 1] (float32)."""

    kind = ""
    stored_dtype: torch.dtype

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype, tile: int | None = None):
        self.model = cast_model(model, dtype).eval()
        self.dtype = dtype
        self.factor = model.spatial_compression
        self.memory_format = torch.contiguous_format
        if tile is not None:
            self.model.enable_tiling(tile)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _input(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] -> [-1, 1] in the model dtype; the model pads it (`encode(x, pad=True)`)."""
        return (images.float() * 2 - 1).to(self.dtype).contiguous(memory_format=self.memory_format)

    def crop(self, images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """A decoded image (..., h*f, w*f) cropped to the size it was encoded from (index "size")."""
        return crop_to_size(images, size, self.factor)

    def shard_metadata(self) -> dict[str, str]:
        raise NotImplementedError

    def description(self) -> dict:
        raise NotImplementedError


def prefix_channels(model: DCAE, latent_channels: int | None) -> int | None:
    """The channel count a latent codec of `model` stores: None for all of the latent's channels (also
    when `latent_channels` names all of them), else c, the first c channels of a structured latent.
    ValueError naming 'latent_channels' where the model cannot encode (or decode) c channels alone."""
    if latent_channels is None:
        return None
    (count,) = model._channel_counts(latent_channels)
    return None if count == model.config.latent_channels else count


class LatentCodec(Codec):
    kind = "latents"

    def __init__(self, model: DCAE, dtype: torch.dtype, tile: int | None = None, latent_channels: int | None = None):
        """`tile`: images larger than `tile` pixels are encoded in overlapping tiles (DC-AE's tiling).
        `latent_channels` c: only the first c channels of a structured latent (DC-AE 1.5) are encoded
        and stored (`DCAE.encode(x, latent_channels=c)`); decoding takes such a prefix as it is."""
        if not isinstance(model, DCAE):
            raise ValueError(f"argument 'model': encode takes a DC-AE, got {type(model).__name__} "
                             "(an IBQ tokenizer goes through tokenize)")
        self.latent_channels = prefix_channels(model, latent_channels)
        super().__init__(model, dtype, tile)
        self.stored_dtype = dtype
        if self.device.type == "cuda":  # cuDNN's faster convolution layout; the ops take it as it is
            self.memory_format = torch.channels_last
            self.model.to(memory_format=self.memory_format)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Unscaled latents (B, c, ceil(H/f), ceil(W/f)) in the model dtype; c: `latent_channels` or all."""
        return self.model.encode(self._input(images), pad=True, latent_channels=self.latent_channels)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.model.decode(latents.to(self.dtype)).float()

    def shard_metadata(self) -> dict[str, str]:
        return {"scaling_factor": repr(self.model.scaling_factor)}

    def description(self) -> dict:
        full = self.model.config.latent_channels
        return {"scaling_factor": self.model.scaling_factor, "latent_channels": self.latent_channels or full,
                "model_latent_channels": full, "spatial_compression": self.factor}


class TokenCodec(Codec):
    kind = "tokens"
    stored_dtype = torch.int32

    def __init__(self, model: IBQTokenizer, dtype: torch.dtype, tile: int | None = None):
        """`tile`: images larger than `tile` pixels go through the encoder in overlapping tiles whose
        continuous outputs are blended, then quantized whole (so no code is split between tiles), and
        are decoded in tiles (`IBQTokenizer.enable_tiling`)."""
        if not isinstance(model, IBQTokenizer):
            raise ValueError(f"argument 'model': tokenize takes an IBQ tokenizer, got {type(model).__name__} "
                             "(a DC-AE goes through encode)")
        super().__init__(model, dtype, tile)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Code indices (B, ceil(H/f), ceil(W/f)) as int32."""
        return self.model.encode(self._input(images), pad=True).to(torch.int32)

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.decode_indices(tokens.long()).float()

    def shard_metadata(self) -> dict[str, str]:
        return {"num_codes": str(self.model.config.num_codes)}

    def description(self) -> dict:
        return {"num_codes": self.model.config.num_codes, "spatial_compression": self.factor}


CODECS = {"latents": LatentCodec, "tokens": TokenCodec}
