"""IBQ tokenizer: encoder -> 1x1 conv to the code dim -> IBQuantizer -> 1x1 conv -> decoder.

Two backbones: the VQGAN encoder/decoder of the paper's tokenizers (dcae_ext.models.ibq.vqgan, the
official parameter names: official checkpoints load through `from_pretrained`), and the DC-AE
`Encoder`/`Decoder` built from a convolution-only configuration (residual conv blocks, stride-2
conv down / interpolate up), kept as the `ibq-dcae-*` presets and the CPU-sized `tiny`.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from dcae_ext.models.dcae import model as dcae
from dcae_ext.models.ibq import vqgan
from dcae_ext.models.dcae.config import DCAEConfig, config_differences as dcae_config_differences
from dcae_ext.files import read_json, write_files_together
from dcae_ext.models.config_agreement import refuse_contradiction
from dcae_ext.models.formats.ibq_official import convert_official_state, infer_vqgan_config, is_official_layout, \
    read_official_file
from dcae_ext.models.output import AutoencoderOutput
from dcae_ext.models.ibq.quantizer import IBQuantizer, QuantizerOutput
from dcae_ext.models.ibq.vqgan import VQGANConfig
from dcae_ext.models.padding import crop_to_size, pad_to_multiple
from dcae_ext.models.tiling import checked_overlap, tiled_map

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
BACKBONE_TYPES = {"vqgan": VQGANConfig, "dc-ae": DCAEConfig}


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
    """The official IBQ configs' values by default (SEED-Voken configs/IBQ/gpu/imagenet_ibqgan_*.yaml)."""
    backbone: VQGANConfig | DCAEConfig = field(default_factory=VQGANConfig)
    num_codes: int = 16384
    dim: int = 256
    beta: float = 0.25
    entropy_weight: float = 0.05
    entropy_temperature: float = 0.01
    beta_on_codebook_term: bool = True
    codebook_init_std: float = 1.0    # the official codebook is an nn.Embedding: N(0, 1)
    name: str | None = None

    @property
    def backbone_type(self) -> str:
        return "vqgan" if isinstance(self.backbone, VQGANConfig) else "dc-ae"

    @property
    def spatial_compression(self) -> int:
        return self.backbone.spatial_compression

    @property
    def latent_channels(self) -> int:
        """Channels between the encoder/decoder and the 1x1 convolutions around the quantizer."""
        backbone = self.backbone
        return backbone.z_channels if isinstance(backbone, VQGANConfig) else backbone.latent_channels

    def to_dict(self) -> dict:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "backbone"}
        values["backbone"] = dict(self.backbone.to_dict(), type=self.backbone_type)
        return values

    @classmethod
    def from_dict(cls, values: dict) -> "IBQConfig":
        values = dict(values)
        backbone = values.pop("backbone", None)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"IBQ config: unknown fields {unknown}")
        if isinstance(backbone, dict):
            backbone = dict(backbone)
            kind = backbone.pop("type", "dc-ae")  # configs saved before the VQGAN backbone have no type
            if kind not in BACKBONE_TYPES:
                raise ValueError(f"IBQ config 'backbone.type': expected one of {sorted(BACKBONE_TYPES)}, got {kind!r}")
            backbone = BACKBONE_TYPES[kind].from_dict(backbone)
        if backbone is not None:
            values["backbone"] = backbone
        return cls(**values)


def _paper(num_codes: int, name: str, backbone=None) -> IBQConfig:
    return IBQConfig(backbone if backbone is not None else VQGANConfig(), num_codes=num_codes, name=name)


PRESETS = {
    # CPU-sized: 4x downsampling, widths 16-32-64, 512 codes of dim 16. Its codebook starts at N(0, 0.1^2),
    # not the paper's N(0, 1): a run of a few hundred steps must move the codes across their own scale
    # (Adam moves a coordinate by at most ~lr a step) and keep the top logits within a few entropy
    # temperatures of each other; with N(0, 1) the demo collapses onto a few codes (docs/ibq_training.md).
    "tiny": lambda: IBQConfig(_conv_backbone((16, 32, 64), 1, 1, 32), num_codes=512, dim=16,
                              codebook_init_std=0.1, name="tiny"),
    # The paper's tokenizers (VQGAN backbone, 16x downsampling, code dim 256), as released.
    "ibq-f16-1024": lambda: _paper(2 ** 10, "ibq-f16-1024"),
    "ibq-f16-8192": lambda: _paper(2 ** 13, "ibq-f16-8192"),
    "ibq-f16-16384": lambda: _paper(2 ** 14, "ibq-f16-16384"),
    "ibq-f16-262144": lambda: _paper(2 ** 18, "ibq-f16-262144"),
    # The same quantizer on a DC-AE convolution backbone (widths 128-128-256-256-512).
    "ibq-dcae-f16-16384": lambda: _paper(2 ** 14, "ibq-dcae-f16-16384",
                                         _conv_backbone((128, 128, 256, 256, 512), 4, 5, 256)),
    "ibq-dcae-f16-262144": lambda: _paper(2 ** 18, "ibq-dcae-f16-262144",
                                          _conv_backbone((128, 128, 256, 256, 512), 4, 5, 256)),
}


def get_ibq_config(name: str) -> IBQConfig:
    if name not in PRESETS:
        raise ValueError(f"argument 'name': unknown IBQ preset {name!r}; known: {sorted(PRESETS)}")
    return PRESETS[name]()


class IBQTokenizer(nn.Module):
    """Images (B, 3, H, W) in [-1, 1], H and W multiples of the spatial factor f (or any H, W with
    pad=True: padded to multiples of f, `models.padding`; `size=` crops the decoded images back).

    encode -> indices (B, H/f, W/f); decode_indices -> images; forward -> AutoencoderOutput.
    """

    def __init__(self, config: IBQConfig | str = "tiny"):
        super().__init__()
        if isinstance(config, str):
            config = get_ibq_config(config)
        self.config = config
        latent = config.latent_channels
        family = vqgan if isinstance(config.backbone, VQGANConfig) else dcae
        self.encoder = family.Encoder(config.backbone)
        self.quant_conv = nn.Conv2d(latent, config.dim, 1)
        self.quantizer = IBQuantizer(config.num_codes, config.dim, beta=config.beta,
                                     entropy_weight=config.entropy_weight,
                                     entropy_temperature=config.entropy_temperature,
                                     beta_on_codebook_term=config.beta_on_codebook_term,
                                     init_std=config.codebook_init_std)
        self.post_quant_conv = nn.Conv2d(config.dim, latent, 1)
        self.decoder = family.Decoder(config.backbone)
        self.spatial_compression = config.spatial_compression
        self.tile_size: int | None = None
        self.tile_overlap = 0

    @classmethod
    def from_config(cls, config: IBQConfig | str | dict) -> "IBQTokenizer":
        return cls(IBQConfig.from_dict(config) if isinstance(config, dict) else config)

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        self.encoder.gradient_checkpointing = bool(enabled)
        self.decoder.gradient_checkpointing = bool(enabled)

    def enable_tiling(self, tile: int = 512, overlap: int | None = None) -> None:
        """Run the encoder and the decoder on overlapping tiles of images larger than `tile` pixels
        (as `DCAE.enable_tiling`). The encoder's continuous outputs are blended, then quantized whole,
        so no code is split between tiles."""
        overlap = checked_overlap(tile, self.spatial_compression, overlap)
        self.tile_size, self.tile_overlap = int(tile), overlap  # tile checked an integer (numpy ones too)

    def disable_tiling(self) -> None:
        self.tile_size = None

    def _latent(self, x: torch.Tensor, pad: bool) -> torch.Tensor:
        """The quantizer's input (B, dim, H/f, W/f): x checked (padded first with pad=True), encoded
        whole or in tiles."""
        f = self.spatial_compression
        if pad:
            x = pad_to_multiple(x, f)
        if x.ndim != 4 or x.shape[1] != self.config.backbone.in_channels or x.shape[2] % f or x.shape[3] % f:
            raise ValueError(f"argument 'x': expected (B, {self.config.backbone.in_channels}, H, W) with H and W "
                             f"multiples of {f}, got {tuple(x.shape)} (pass pad=True to pad and crop)")
        if self.tile_size is not None and max(x.shape[2], x.shape[3]) > self.tile_size:
            return tiled_map(lambda part: self.quant_conv(self.encoder(part)), x, self.tile_size, self.tile_overlap,
                             up=1, down=f)
        return self.quant_conv(self.encoder(x))

    def quantize(self, x: torch.Tensor, pad: bool = False) -> QuantizerOutput:
        return self.quantizer(self._latent(x, pad))

    def encode(self, x: torch.Tensor, pad: bool = False) -> torch.Tensor:
        """x (B, 3, H, W) -> code indices (B, H/f, W/f) int64 (those of `quantize(x)`, without its losses);
        pad=True: any H, W, indices (B, ceil(H/f), ceil(W/f))."""
        return self.quantizer.nearest(self._latent(x, pad))

    def decode_codes(self, codes: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Quantized codes (B, dim, h, w) -> images (B, 3, h*f, w*f), cropped to `size` = (H, W) when given."""
        f = self.spatial_compression
        latent = self.post_quant_conv(codes)
        if self.tile_size is not None and max(latent.shape[2], latent.shape[3]) * f > self.tile_size:
            images = tiled_map(self.decoder, latent, self.tile_size // f, self.tile_overlap // f, up=f, down=1)
        else:
            images = self.decoder(latent)
        return crop_to_size(images, size, f)

    def cast(self, dtype: torch.dtype) -> "IBQTokenizer":
        """Every weight to `dtype` but the codebook, which stays float32 (float64 for float64): among
        2^18 codes the nearest one must not be decided by rounding the codes to bf16."""
        for child in self.children():
            child.to(torch.promote_types(dtype, torch.float32) if child is self.quantizer else dtype)
        return self

    def decode_indices(self, indices: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """indices (B, h, w) -> images (B, 3, h*f, w*f); `size` = (H, W) of the image that
        `encode(x, pad=True)` padded: the output is cropped back to it."""
        if indices.ndim != 3:
            raise ValueError(f"argument 'indices': expected (B, h, w), got shape {tuple(indices.shape)}")
        codes = self.quantizer.lookup(indices).to(self.post_quant_conv.weight.dtype)
        return self.decode_codes(codes, size)

    def forward(self, x: torch.Tensor, pad: bool = False) -> AutoencoderOutput:
        """Reconstruction, the quantizer's loss (`losses["quantizer"]`, entropy term weighted in), its
        terms and code statistics (`stats`), and the code indices. pad=True: any H, W (the indices
        cover the padded image, the reconstruction is cropped back to x's size)."""
        quantized = self.quantize(x, pad)
        stats = {"loss_entropy": quantized.entropy_loss, "loss_commitment": quantized.commitment_loss,
                 "loss_codebook": quantized.codebook_loss, "codebook_usage": quantized.usage,
                 "perplexity": quantized.perplexity}
        return AutoencoderOutput(self.decode_codes(quantized.quantized.to(x.dtype), x.shape[-2:]),
                                 losses={"quantizer": quantized.loss},
                                 stats={name: value.detach() for name, value in stats.items()},
                                 indices=quantized.indices)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """config.json + model.safetensors in folder `path`, the pair written whole or not at all."""
        from safetensors.torch import save_file


        config = json.dumps(dict(self.config.to_dict(), _class_name="IBQTokenizer"), indent=2)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        write_files_together(path, {WEIGHTS_NAME: lambda tmp: save_file(state, tmp),
                                    CONFIG_NAME: lambda tmp: Path(tmp).write_text(config)})

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, subfolder: str | None = None,
                        torch_dtype: torch.dtype | None = None, config: IBQConfig | str | dict | None = None,
                        use_ema: bool = False) -> "IBQTokenizer":
        """A tokenizer in eval mode, from a local path (nothing is downloaded):

        - a folder written by `save_pretrained` (config.json + model.safetensors);
        - an official SEED-Voken checkpoint: the Lightning .ckpt (read without running pickled code,
          see dcae_ext.models.formats.ibq_official), a safetensors export of its state dict, or a folder
          holding one such file. Its configuration is read from the weight shapes unless `config`
          (a preset name, IBQConfig or dict) is given; `use_ema` takes the EMA weights.

        A `config` given for a save_pretrained folder must agree with its config.json (names aside): one
        that contradicts it is a ValueError, not a different tokenizer built around the saved weights.

        `subfolder`: a folder inside `path`; `torch_dtype`: cast the weights but the codebook (`cast`).
        """
        path = os.fspath(path)
        if subfolder:
            path = os.path.join(path, subfolder)
        if not os.path.exists(path):
            raise FileNotFoundError(f"argument 'path': {path} does not exist (loading needs a local path)")
        if isinstance(config, str):
            config = get_ibq_config(config)
        elif isinstance(config, dict):
            config = IBQConfig.from_dict(config)
        if os.path.isdir(path) and os.path.isfile(os.path.join(path, CONFIG_NAME)):
            if use_ema:
                raise ValueError(f"argument 'use_ema': {path} was written by save_pretrained and holds one set "
                                 "of weights (EMA weights live in training checkpoints and official .ckpt files)")
            model, state = _from_saved_folder(cls, path, config)
        else:
            model, state = _from_official(cls, _official_file(path), config, use_ema)
        model.load_state_dict(state)
        if torch_dtype is not None:
            model.cast(torch_dtype)
        return model.eval()


def _from_saved_folder(cls, path: str, config: IBQConfig | None):
    from safetensors.torch import load_file

    values = read_json(os.path.join(path, CONFIG_NAME))
    if values.pop("_class_name", "IBQTokenizer") != "IBQTokenizer":
        raise ValueError(f"argument 'path': {path}/{CONFIG_NAME} describes no IBQ tokenizer")
    weights = os.path.join(path, WEIGHTS_NAME)
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"argument 'path': {path} has a {CONFIG_NAME} but no {WEIGHTS_NAME}")
    if config is None:
        config = IBQConfig.from_dict(values)
    else:
        _check_agreement(config, values, os.path.join(path, CONFIG_NAME))
    return cls(config), load_file(weights)


def config_differences(first: IBQConfig, second: IBQConfig) -> list[tuple[str, object, object]]:
    """(field, first's value, second's value) for every field in which the two configs build a different
    tokenizer (the quantizer's loss settings included); not the names."""
    differ = [(f.name, getattr(first, f.name), getattr(second, f.name)) for f in dataclasses.fields(IBQConfig)
              if f.name not in ("backbone", "name") and getattr(first, f.name) != getattr(second, f.name)]
    a, b = first.backbone, second.backbone
    if first.backbone_type != second.backbone_type:
        return differ + [("backbone.type", first.backbone_type, second.backbone_type)]
    if isinstance(a, DCAEConfig):
        return differ + [(f"backbone.{name}", mine, theirs) for name, mine, theirs in dcae_config_differences(a, b)]
    return differ + [(f"backbone.{f.name}", getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a)
                     if getattr(a, f.name) != getattr(b, f.name)]


def _check_agreement(given: IBQConfig, values: dict, source: str) -> None:
    """ValueError where `config` contradicts the config.json saved beside the weights (`values`, read
    from `source`): another activation, normalisation or loss setting has the same parameter names and
    shapes, so the weights would load into a different tokenizer without a complaint. A config.json
    this version cannot read (fields of a later version) is what `config` is for, and is not compared."""
    try:
        saved = IBQConfig.from_dict(values)
    except (TypeError, ValueError):
        return
    refuse_contradiction(given.name, config_differences(given, saved), source)


def _official_file(path: str) -> str:
    if os.path.isfile(path):
        return path
    found = sorted(glob.glob(os.path.join(path, "*.ckpt")) + glob.glob(os.path.join(path, "*.safetensors")))
    if len(found) != 1:
        raise FileNotFoundError(f"argument 'path': {path} holds no {CONFIG_NAME} and {len(found)} .ckpt/.safetensors "
                                "files (expected one official checkpoint); pass the file itself")
    return found[0]


def _from_official(cls, file: str, config: IBQConfig | None, use_ema: bool):
    state = read_official_file(file)
    if not is_official_layout(state):
        raise ValueError(f"argument 'path': {file} is neither an official IBQ checkpoint (no "
                         "quantize.embedding.weight) nor a folder written by save_pretrained")
    state = convert_official_state(state, use_ema=use_ema)
    num_codes, dim = state["quantizer.codebook"].shape
    if config is None:
        config = IBQConfig(infer_vqgan_config(state), num_codes=num_codes, dim=dim)
    elif (config.num_codes, config.dim) != (num_codes, dim):
        raise ValueError(f"argument 'config': {config.num_codes} codes of dim {config.dim}, but the checkpoint "
                         f"{file} holds {num_codes} of dim {dim}")
    return cls(config), state
