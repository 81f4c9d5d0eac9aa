"""IBQ tokenizer: encoder -> 1x1 conv to the code dim -> IBQuantizer -> 1x1 conv -> decoder.

The encoder and decoder are the DC-AE `Encoder`/`Decoder` built from a convolution-only
configuration (residual conv blocks, stride-2 conv down / interpolate up sampling), the shape of
the IBQ paper's VQGAN backbone (16x downsampling: five stages, widths 128-128-256-256-512).
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field

import torch
from torch import nn

from dcae_ext.models.config import DCAEConfig
from dcae_ext.models.dcae import Decoder, Encoder
from dcae_ext.models.output import AutoencoderOutput
from dcae_ext.models.quantizer import IBQuantizer, QuantizerOutput

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def _conv_backbone(widths: tuple, encoder_layers: int, decoder_layers: int, latent_channels: int) -> DCAEConfig:
    stages = len(widths)
    return DCAEConfig(
        latent_channels=latent_channels,
        encoder_block_types="ResBlock", decoder_block_types="ResBlock",
        encoder_block_out_channels=widths, decoder_block_out_channels=widths,
        encoder_layers_per_block=(encoder_layers,) * stages, decoder_layers_per_block=(decoder_layers,) * stages,
        encoder_qkv_multiscales=((),) * stages, decoder_qkv_multiscales=((),) * stages,
        downsample_block_type="Conv", upsample_block_type="interpolate",
        decoder_norm_types="rms_norm", decoder_act_fns="silu", scaling_factor=1.0,
    )


@dataclass
class IBQConfig:
    backbone: DCAEConfig = field(default_factory=lambda: _conv_backbone((128, 128, 256, 256, 512), 4, 5, 256))
    num_codes: int = 16384
    dim: int = 256
    beta: float = 0.25
    entropy_weight: float = 0.05
    entropy_temperature: float = 0.01
    beta_on_codebook_term: bool = True
    name: str | None = None

    @property
    def spatial_compression(self) -> int:
        return self.backbone.spatial_compression

    def to_dict(self) -> dict:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "backbone"}
        values["backbone"] = self.backbone.to_dict()
        return values

    @classmethod
    def from_dict(cls, values: dict) -> "IBQConfig":
        values = dict(values)
        backbone = values.pop("backbone", None)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"IBQ config: unknown fields {unknown}")
        if backbone is not None:
            values["backbone"] = DCAEConfig.from_dict(backbone) if isinstance(backbone, dict) else backbone
        return cls(**values)


PRESETS = {
    # CPU-sized: 4x downsampling, widths 16-32-64, 512 codes of dim 16.
    "tiny": lambda: IBQConfig(_conv_backbone((16, 32, 64), 1, 1, 32), num_codes=512, dim=16, name="tiny"),
    # The paper's tokenizers: 16x downsampling, code dim 256, 2^14 and 2^18 codes.
    "ibq-f16-16384": lambda: IBQConfig(num_codes=2 ** 14, name="ibq-f16-16384"),
    "ibq-f16-262144": lambda: IBQConfig(num_codes=2 ** 18, name="ibq-f16-262144"),
}


def get_ibq_config(name: str) -> IBQConfig:
    if name not in PRESETS:
        raise ValueError(f"argument 'name': unknown IBQ preset {name!r}; known: {sorted(PRESETS)}")
    return PRESETS[name]()


class IBQTokenizer(nn.Module):
    """Images (B, 3, H, W) in [-1, 1], H and W multiples of the spatial factor f.

    encode -> indices (B, H/f, W/f); decode_indices -> images; forward -> AutoencoderOutput.
    """

    def __init__(self, config: IBQConfig | str = "tiny"):
        super().__init__()
        if isinstance(config, str):
            config = get_ibq_config(config)
        self.config = config
        latent = config.backbone.latent_channels
        self.encoder = Encoder(config.backbone)
        self.quant_conv = nn.Conv2d(latent, config.dim, 1)
        self.quantizer = IBQuantizer(config.num_codes, config.dim, beta=config.beta,
                                     entropy_weight=config.entropy_weight,
                                     entropy_temperature=config.entropy_temperature,
                                     beta_on_codebook_term=config.beta_on_codebook_term)
        self.post_quant_conv = nn.Conv2d(config.dim, latent, 1)
        self.decoder = Decoder(config.backbone)
        self.spatial_compression = config.spatial_compression

    @classmethod
    def from_config(cls, config: IBQConfig | str | dict) -> "IBQTokenizer":
        return cls(IBQConfig.from_dict(config) if isinstance(config, dict) else config)

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        self.encoder.gradient_checkpointing = bool(enabled)
        self.decoder.gradient_checkpointing = bool(enabled)

    def _check_image(self, x: torch.Tensor) -> None:
        f = self.spatial_compression
        if x.ndim != 4 or x.shape[1] != self.config.backbone.in_channels or x.shape[2] % f or x.shape[3] % f:
            raise ValueError(f"argument 'x': expected (B, {self.config.backbone.in_channels}, H, W) with H and W "
                             f"multiples of {f}, got {tuple(x.shape)}")

    def quantize(self, x: torch.Tensor) -> QuantizerOutput:
        self._check_image(x)
        return self.quantizer(self.quant_conv(self.encoder(x)))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 3, H, W) -> code indices (B, H/f, W/f) int64."""
        return self.quantize(x).indices

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Quantized codes (B, dim, h, w) -> images (B, 3, h*f, w*f)."""
        return self.decoder(self.post_quant_conv(codes))

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """indices (B, h, w) -> images (B, 3, h*f, w*f)."""
        if indices.ndim != 3:
            raise ValueError(f"argument 'indices': expected (B, h, w), got shape {tuple(indices.shape)}")
        codes = self.quantizer.lookup(indices).to(self.post_quant_conv.weight.dtype)
        return self.decode_codes(codes)

    def forward(self, x: torch.Tensor) -> AutoencoderOutput:
        """Reconstruction, the quantizer's loss (`losses["quantizer"]`, entropy term weighted in), its
        terms and code statistics (`stats`), and the code indices."""
        quantized = self.quantize(x)
        stats = {"loss_entropy": quantized.entropy_loss, "loss_commitment": quantized.commitment_loss,
                 "loss_codebook": quantized.codebook_loss, "codebook_usage": quantized.usage,
                 "perplexity": quantized.perplexity}
        return AutoencoderOutput(self.decode_codes(quantized.quantized.to(x.dtype)),
                                 losses={"quantizer": quantized.loss},
                                 stats={name: value.detach() for name, value in stats.items()},
                                 indices=quantized.indices)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """config.json + model.safetensors in folder `path`."""
        from safetensors.torch import save_file

        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, CONFIG_NAME), "w") as stream:
            json.dump(dict(self.config.to_dict(), _class_name="IBQTokenizer"), stream, indent=2)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, os.path.join(path, WEIGHTS_NAME))

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> "IBQTokenizer":
        from safetensors.torch import load_file

        with open(os.path.join(path, CONFIG_NAME)) as stream:
            values = json.load(stream)
        values.pop("_class_name", None)
        model = cls(IBQConfig.from_dict(values))
        model.load_state_dict(load_file(os.path.join(path, WEIGHTS_NAME)))
        return model
