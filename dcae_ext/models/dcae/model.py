"""DC-AE encoder, decoder and autoencoder (Chen et al., arXiv 2410.10733; its ops: docs/shortcuts.md,
docs/linear_attention.md).

The module tree mirrors diffusers' AutoencoderDC (encoder.conv_in, encoder.down_blocks.i.j,
encoder.conv_out, decoder.conv_in, decoder.up_blocks.i.j, decoder.norm_out, decoder.conv_out), so
diffusers state dicts load with identity keys; efficientvit's are mapped in `formats/dcae_weights.py`.
"""
from __future__ import annotations

import functools
import numbers
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from dcae_ext import ops
from dcae_ext.models.dcae.blocks import DownsampleBlock, RMSNorm2d, UpsampleBlock, build_act, build_block
from dcae_ext.models.dcae.config import DCAEConfig, get_config, structured_preset_names
from dcae_ext.models.output import AutoencoderOutput
from dcae_ext.models.padding import crop_to_size, pad_to_multiple
from dcae_ext.models.tiling import checked_overlap, tiled_map


class _Stages(nn.Module):
    """Shared block runner: optional activation checkpointing per block."""

    gradient_checkpointing = False

    def _run(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, x, use_reentrant=False)
        return block(x)


class Encoder(_Stages):
    """x (B, in_channels, H, W) -> latent (B, latent_channels, H/f, W/f)."""

    def __init__(self, config: DCAEConfig):
        super().__init__()
        widths, layers = config.encoder_block_out_channels, config.encoder_layers_per_block
        first = widths[0] if layers[0] > 0 else widths[1]
        if layers[0] > 0:
            self.conv_in = nn.Conv2d(config.in_channels, first, 3, 1, 1)
        else:
            self.conv_in = DownsampleBlock(config.in_channels, first, config.downsample_block_type, shortcut=False)
        stages = []
        for i, (width, depth) in enumerate(zip(widths, layers)):
            stage = [build_block(config.encoder_block_types[i], width, config.attention_head_dim, "rms_norm",
                                 "silu", config.encoder_qkv_multiscales[i]) for _ in range(depth)]
            if i < len(widths) - 1 and depth > 0:
                stage.append(DownsampleBlock(width, widths[i + 1], config.downsample_block_type, shortcut=True))
            stages.append(nn.Sequential(*stage))
        self.down_blocks = nn.ModuleList(stages)
        self.latent_channels = config.latent_channels
        self.structured_latent = config.structured_latent
        self.conv_out = nn.Conv2d(widths[-1], config.latent_channels, 3, 1, 1)
        self.out_shortcut = config.encoder_out_shortcut
        if self.out_shortcut and widths[-1] % config.latent_channels:
            raise ValueError(f"encoder out shortcut: latent_channels {config.latent_channels} must divide "
                             f"the last width {widths[-1]}")

    def forward(self, x: torch.Tensor, latent_channels: int | None = None) -> torch.Tensor:
        """With `latent_channels` c, only the first c output channels: the output convolution runs
        with the first c filters (DC-Gen's AdaptiveOutputConvLayer; a structured latent has no shortcut)."""
        x = self.conv_in(x)
        for stage in self.down_blocks:
            for block in stage:
                x = self._run(block, x)
        if latent_channels is not None and latent_channels != self.latent_channels:
            if not self.structured_latent:
                raise ValueError(f"argument 'latent_channels': {latent_channels} of {self.latent_channels}, but "
                                 "this encoder has no structured latent")
            conv = self.conv_out
            return F.conv2d(x, conv.weight[:latent_channels], conv.bias[:latent_channels], padding=conv.padding)
        y = self.conv_out(x)
        if self.out_shortcut:
            y = ops.pixel_unshuffle_mean(x.to(y.dtype), 1, self.latent_channels, residual=y)
        return y


class Decoder(_Stages):
    """latent (B, latent_channels, h, w) -> image (B, in_channels, h*f, w*f)."""

    def __init__(self, config: DCAEConfig):
        super().__init__()
        widths, layers = config.decoder_block_out_channels, config.decoder_layers_per_block
        self.conv_in = nn.Conv2d(config.latent_channels, widths[-1], 3, 1, 1)
        self.structured_latent = config.structured_latent
        self.in_shortcut = config.decoder_in_shortcut
        self.top_width = widths[-1]
        if self.in_shortcut and widths[-1] % config.latent_channels:
            raise ValueError(f"decoder in shortcut: latent_channels {config.latent_channels} must divide "
                             f"the last width {widths[-1]}")
        stages = []
        for i, (width, depth) in enumerate(zip(widths, layers)):
            stage = []
            if i < len(widths) - 1 and depth > 0:
                stage.append(UpsampleBlock(widths[i + 1], width, config.upsample_block_type, shortcut=True))
            stage += [build_block(config.decoder_block_types[i], width, config.attention_head_dim,
                                  config.decoder_norm_types[i], config.decoder_act_fns[i],
                                  config.decoder_qkv_multiscales[i]) for _ in range(depth)]
            stages.append(nn.Sequential(*stage))
        self.up_blocks = nn.ModuleList(stages)  # indexed by stage; run from the last
        last = widths[0] if layers[0] > 0 else widths[1]
        self.norm_out = RMSNorm2d(last)
        self.conv_act = build_act(config.decoder_conv_act_fn)
        if layers[0] > 0:
            self.conv_out = nn.Conv2d(last, config.in_channels, 3, 1, 1)
        else:
            self.conv_out = UpsampleBlock(last, config.in_channels, config.upsample_block_type, shortcut=False)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z may hold only the first c of the latent channels: the input convolution then uses the
        weights of those c (DC-Gen's AdaptiveInputConvLayer), as if the others were zero."""
        if z.shape[1] != self.conv_in.in_channels:
            if not (self.structured_latent and z.shape[1] < self.conv_in.in_channels):
                raise ValueError(f"argument 'z': {z.shape[1]} channels for a decoder of {self.conv_in.in_channels}"
                                 f"{'' if self.structured_latent else ' without a structured latent'}")
            x = F.conv2d(z, self.conv_in.weight[:, :z.shape[1]], self.conv_in.bias, padding=self.conv_in.padding)
        else:
            x = self.conv_in(z)
        if self.in_shortcut:
            x = ops.pixel_shuffle_repeat(z.to(x.dtype), 1, self.top_width, residual=x)
        for stage in reversed(self.up_blocks):
            for block in stage:
                x = self._run(block, x)
        return self.conv_out(self.conv_act(self.norm_out(x)))


class DCAE(nn.Module):
    """Deep Compression Autoencoder. `encode` returns the unscaled latent; multiply by
    `scaling_factor` for a diffusion model and divide before `decode`."""

    def __init__(self, config: DCAEConfig | str):
        super().__init__()
        if isinstance(config, str):
            config = get_config(config)
        self.config = config.replace()  # its own copy: scaling_factor below writes to it
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.spatial_compression = config.spatial_compression
        self.tile_size: int | None = None
        self.tile_overlap = 0
        self.use_slicing = False

    @property
    def scaling_factor(self) -> float:
        """The latent's scaling factor: `config.scaling_factor`, so that a value set here (one measured on
        your data) is what save_pretrained, training checkpoints and `dcae-ext encode` record."""
        return float(self.config.scaling_factor)

    @scaling_factor.setter
    def scaling_factor(self, value: float) -> None:
        self.config.scaling_factor = float(value)

    # --- construction and weights ---------------------------------------------------------------

    @classmethod
    def from_config(cls, config: DCAEConfig | str | dict) -> "DCAE":
        """A randomly initialised model from a preset name, a DCAEConfig or a diffusers config dict."""
        if isinstance(config, dict):
            config = DCAEConfig.from_dict(config)
        return cls(config)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, config: DCAEConfig | str | None = None,
                        strict: bool = True, *, subfolder: str | None = None,
                        torch_dtype: torch.dtype | None = None) -> "DCAE":
        """Load a local diffusers-format dir (config.json + diffusion_pytorch_model.safetensors) or an
        efficientvit-format dir / file (model.safetensors or .pt; config by `config`, by a config.json
        holding `model_name`, or by a preset name in the path). As in diffusers, the model comes back
        in eval mode (BatchNorm uses its running statistics), in `torch_dtype` if given, read from
        `path/subfolder` if given."""
        from dcae_ext.models.formats.dcae_weights import load_pretrained

        if subfolder:
            path = os.path.join(path, subfolder)
        model = load_pretrained(cls, path, config=config, strict=strict)
        if torch_dtype is not None:
            model = model.to(torch_dtype)
        return model.eval()

    def save_pretrained(self, path: str | os.PathLike, format: str | None = None) -> None:
        """Write safetensors weights + config.json into directory `path` ("diffusers" or "efficientvit";
        default: diffusers, or efficientvit (DC-Gen's format) for a structured latent, which diffusers'
        AutoencoderDC cannot express)."""
        from dcae_ext.models.formats.dcae_weights import save_pretrained

        save_pretrained(self, path, format=format)

    # --- switches -------------------------------------------------------------------------------

    def enable_tiling(self, tile: int = 512, overlap: int | None = None) -> None:
        """Encode/decode images larger than `tile` pixels in overlapping tiles. `tile` and `overlap`
        are in image pixels and must be multiples of the spatial factor f; the default overlap is
        `tiling.checked_overlap`'s (about tile / 4, at least f)."""
        overlap = checked_overlap(tile, self.spatial_compression, overlap)
        self.tile_size, self.tile_overlap = int(tile), overlap  # tile checked an integer (numpy ones too)

    def disable_tiling(self) -> None:
        self.tile_size = None

    def enable_slicing(self) -> None:
        """Encode/decode batches one sample at a time (lower peak memory)."""
        self.use_slicing = True

    def disable_slicing(self) -> None:
        self.use_slicing = False

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each block's activations in the backward instead of storing them (training).
        BatchNorm layers in train mode update their running statistics in the recomputation too."""
        self.encoder.gradient_checkpointing = bool(enabled)
        self.decoder.gradient_checkpointing = bool(enabled)

    # --- encode / decode ------------------------------------------------------------------------

    def _check_image(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"argument 'x': expected (B, {self.config.in_channels}, H, W), got {tuple(x.shape)}")
        f = self.spatial_compression
        if x.shape[2] % f or x.shape[3] % f:
            raise ValueError(f"argument 'x': height and width {x.shape[2]}x{x.shape[3]} must be multiples of "
                             f"the spatial factor f={f} (pass pad=True to pad and crop)")

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        """x padded to multiples of f (`models.padding`): its latent is (B, c, ceil(H/f), ceil(W/f))."""
        return pad_to_multiple(x, self.spatial_compression)

    def _sliced(self, fn, x: torch.Tensor) -> torch.Tensor:
        if self.use_slicing and x.shape[0] > 1:
            return torch.cat([fn(part) for part in x.split(1)])
        return fn(x)

    def _encode_one(self, x: torch.Tensor, latent_channels: int | None = None) -> torch.Tensor:
        encoder = functools.partial(self.encoder, latent_channels=latent_channels)
        if self.tile_size is not None and max(x.shape[2], x.shape[3]) > self.tile_size:
            return tiled_map(encoder, x, self.tile_size, self.tile_overlap, up=1, down=self.spatial_compression)
        return encoder(x)

    def _decode_one(self, z: torch.Tensor) -> torch.Tensor:
        f = self.spatial_compression
        if self.tile_size is not None and max(z.shape[2], z.shape[3]) * f > self.tile_size:
            return tiled_map(self.decoder, z, self.tile_size // f, self.tile_overlap // f, up=f, down=1)
        return self.decoder(z)

    def _channel_counts(self, latent_channels) -> list[int] | None:
        """`latent_channels` (None, an int or a list of ints) as a checked list of channel counts."""
        if latent_channels is None:
            return None
        values = list(latent_channels) if isinstance(latent_channels, (list, tuple)) else [latent_channels]
        if not values or not all(isinstance(c, numbers.Integral) and not isinstance(c, bool) for c in values):
            raise ValueError(f"argument 'latent_channels': an int or a non-empty list of ints, got {latent_channels!r}")
        full = self.config.latent_channels
        values = [int(c) for c in values]
        if not self.config.structured_latent and any(c != full for c in values):
            raise ValueError(f"argument 'latent_channels': {self.config.name or 'this DC-AE'} has no structured "
                             f"latent, so it encodes all {full} channels only; structured presets: "
                             f"{', '.join(structured_preset_names())}")
        outside = [c for c in values if not 1 <= c <= full]
        if outside:
            shown = outside[0] if isinstance(latent_channels, int) else outside
            raise ValueError(f"argument 'latent_channels': {shown} outside 1..{full} (the model's latent channels)")
        return values

    def encode(self, x: torch.Tensor, pad: bool = False,
               latent_channels: int | list[int] | None = None) -> torch.Tensor | list[torch.Tensor]:
        """x (B, C, H, W), H and W multiples of f (or pad=True) -> unscaled latent (B, c, H/f, W/f).

        A structured latent (DC-AE 1.5) can be cut short: `latent_channels` c gives its first c
        channels (B, c, H/f, W/f); a list gives one latent per entry, from one pass of the encoder."""
        counts = self._channel_counts(latent_channels)
        if pad:
            x = self._pad(x)
        self._check_image(x)
        if counts is None:
            return self._sliced(self._encode_one, x)
        z = self._sliced(functools.partial(self._encode_one, latent_channels=max(counts)), x)
        if not isinstance(latent_channels, (list, tuple)):
            return z
        return [z[:, :c].clone() for c in counts]  # the first c filters' outputs, as their own convolution gives

    def decode(self, z: torch.Tensor | list[torch.Tensor],
               size: tuple[int, int] | None = None) -> torch.Tensor | list[torch.Tensor]:
        """Unscaled latent (B, c, h, w) -> image (B, C, h*f, w*f); `size` = (H, W) of the image that
        `encode(x, pad=True)` padded: the output is cropped back to it. With a structured latent, c
        may be any count from 1 to latent_channels (the first c channels; the rest count as zero). A
        list of latents gives a list of images."""
        if isinstance(z, (list, tuple)):
            return [self.decode(item, size) for item in z]
        full = self.config.latent_channels
        if self.config.structured_latent:
            if z.ndim != 4 or not 1 <= z.shape[1] <= full:
                raise ValueError(f"argument 'z': expected (B, c, h, w) with 1 <= c <= {full} (a prefix of the "
                                 f"structured latent's channels), got {tuple(z.shape)}")
        elif z.ndim != 4 or z.shape[1] != full:
            hint = (f"; {self.config.name or 'this DC-AE'} has no structured latent, so it decodes all {full} "
                    f"channels only" if z.ndim == 4 and z.shape[1] < full else "")
            raise ValueError(f"argument 'z': expected (B, {full}, h, w), got {tuple(z.shape)}{hint}")
        return crop_to_size(self._sliced(self._decode_one, z), size, self.spatial_compression)

    def forward(self, x: torch.Tensor, pad: bool = False, latent_channels: int | None = None) -> AutoencoderOutput:
        """Reconstruction of x (`.reconstruction`); with pad=True any H, W works (padded to a multiple
        of f, then cropped); with `latent_channels` c (a structured latent) from its first c channels."""
        if isinstance(latent_channels, (list, tuple)):
            raise ValueError("argument 'latent_channels': forward takes one channel count; for several, "
                             "decode each latent of encode(x, latent_channels=[...])")
        z = self.encode(x, pad=pad, latent_channels=latent_channels)
        return AutoencoderOutput(self.decode(z, size=x.shape[-2:]))
