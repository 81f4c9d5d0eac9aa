"""DC-AE configuration: one dataclass with diffusers' `AutoencoderDC` field names, and named presets.

The fields are those of a diffusers `AutoencoderDC` config.json, so any such config loads with
`DCAEConfig.from_dict` and saves back with `to_diffusers_dict`; plus one that diffusers lacks,
`structured_latent` (DC-AE 1.5: the encoder can emit any prefix of its latent channels and the
decoder takes any prefix, see docs/dcae_family.md). Per-stage fields accept a single value
(applied to every stage) and are normalised to tuples.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

BLOCK_TYPES = ("ResBlock", "EfficientViTBlock")
NORM_TYPES = ("batch_norm", "rms_norm")
ACT_FNS = ("relu", "silu", "swish", "gelu", "mish")
# diffusers treats anything but "pixel_unshuffle" as a stride-2 conv; its published SANA configs say "conv".
DOWNSAMPLE_TYPES = ("pixel_unshuffle", "conv", "Conv")
UPSAMPLE_TYPES = ("pixel_shuffle", "interpolate")
DIFFUSERS_VERSION = "0.32.0"


@dataclass
class DCAEConfig:
    in_channels: int = 3
    latent_channels: int = 32
    attention_head_dim: int = 32
    encoder_block_types: Any = "ResBlock"
    decoder_block_types: Any = "ResBlock"
    encoder_block_out_channels: tuple = (128, 256, 512, 512, 1024, 1024)
    decoder_block_out_channels: tuple = (128, 256, 512, 512, 1024, 1024)
    encoder_layers_per_block: tuple = (2, 2, 2, 3, 3, 3)
    decoder_layers_per_block: tuple = (3, 3, 3, 3, 3, 3)
    encoder_qkv_multiscales: tuple = ((), (), (), (5,), (5,), (5,))
    decoder_qkv_multiscales: tuple = ((), (), (), (5,), (5,), (5,))
    upsample_block_type: str = "pixel_shuffle"
    downsample_block_type: str = "pixel_unshuffle"
    decoder_norm_types: Any = "rms_norm"
    decoder_act_fns: Any = "silu"
    encoder_out_shortcut: bool = True
    decoder_in_shortcut: bool = True
    decoder_conv_act_fn: str = "relu"
    scaling_factor: float = 1.0
    structured_latent: bool = False  # not a diffusers field: DC-AE 1.5's adaptive latent convolutions
    name: str | None = field(default=None, compare=False)  # preset name, when built from one

    def __post_init__(self):
        enc, dec = len(self.encoder_block_out_channels), len(self.decoder_block_out_channels)
        self.encoder_block_out_channels = _int_tuple(self.encoder_block_out_channels)
        self.decoder_block_out_channels = _int_tuple(self.decoder_block_out_channels)
        self.encoder_layers_per_block = _int_tuple(self.encoder_layers_per_block)
        self.decoder_layers_per_block = _int_tuple(self.decoder_layers_per_block)
        self.encoder_block_types = _per_stage(self.encoder_block_types, enc, "encoder_block_types", BLOCK_TYPES)
        self.decoder_block_types = _per_stage(self.decoder_block_types, dec, "decoder_block_types", BLOCK_TYPES)
        self.decoder_norm_types = _per_stage(self.decoder_norm_types, dec, "decoder_norm_types", NORM_TYPES)
        self.decoder_act_fns = _per_stage(self.decoder_act_fns, dec, "decoder_act_fns", ACT_FNS)
        self.encoder_qkv_multiscales = tuple(tuple(int(k) for k in s) for s in self.encoder_qkv_multiscales)
        self.decoder_qkv_multiscales = tuple(tuple(int(k) for k in s) for s in self.decoder_qkv_multiscales)
        self.validate()

    def validate(self) -> None:
        for side in ("encoder", "decoder"):
            widths = getattr(self, f"{side}_block_out_channels")
            for key in ("layers_per_block", "qkv_multiscales", "block_types"):
                values = getattr(self, f"{side}_{key}")
                if len(values) != len(widths):
                    raise ValueError(f"config '{side}_{key}': {len(values)} entries for {len(widths)} stages")
            if len(widths) < 2:
                raise ValueError(f"config '{side}_block_out_channels': need at least 2 stages, got {widths}")
        if self.downsample_block_type not in DOWNSAMPLE_TYPES:
            raise ValueError(f"config 'downsample_block_type': {self.downsample_block_type!r} not in {DOWNSAMPLE_TYPES}")
        if self.upsample_block_type not in UPSAMPLE_TYPES:
            raise ValueError(f"config 'upsample_block_type': {self.upsample_block_type!r} not in {UPSAMPLE_TYPES}")
        if self.decoder_conv_act_fn not in ACT_FNS:
            raise ValueError(f"config 'decoder_conv_act_fn': {self.decoder_conv_act_fn!r} not in {ACT_FNS}")
        if self.structured_latent and (self.encoder_out_shortcut or self.decoder_in_shortcut):
            raise ValueError("config 'structured_latent': a structured latent needs encoder_out_shortcut=False "
                             "and decoder_in_shortcut=False (the channel shortcuts mix every latent channel, so "
                             "a prefix of channels would not stand alone; DC-AE 1.5 has neither)")
        if self.encoder_factor != self.decoder_factor:
            raise ValueError(f"config: encoder downsamples by {self.encoder_factor} but decoder upsamples "
                             f"by {self.decoder_factor}")

    @property
    def encoder_factor(self) -> int:
        layers = self.encoder_layers_per_block
        steps = (layers[0] == 0) + sum(1 for i, n in enumerate(layers[:-1]) if n > 0)
        return 2 ** steps

    @property
    def decoder_factor(self) -> int:
        layers = self.decoder_layers_per_block
        steps = (layers[0] == 0) + sum(1 for i, n in enumerate(layers[:-1]) if n > 0)
        return 2 ** steps

    @property
    def spatial_compression(self) -> int:
        return self.encoder_factor

    def replace(self, **changes) -> "DCAEConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, data: dict) -> "DCAEConfig":
        """Build from a diffusers AutoencoderDC config.json dict (private `_` keys are ignored)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(k for k in data if not k.startswith("_") and k not in known)
        if unknown:
            raise ValueError(f"config: unknown AutoencoderDC fields {unknown}")
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        for key, value in data.items():
            if isinstance(value, tuple):
                data[key] = _to_lists(value)
        return data

    def to_diffusers_dict(self) -> dict:
        """The config.json of a diffusers AutoencoderDC; a structured latent has none (ValueError)."""
        if self.structured_latent:
            raise ValueError(f"{self.name or 'this DC-AE'} has a structured latent (DC-AE 1.5: its encoder emits any "
                             "prefix of the latent channels and its decoder takes one), which diffusers' "
                             "AutoencoderDC cannot express; save it with format='efficientvit' (the DC-Gen "
                             "format: config.json with model_name + model.safetensors)")
        data = {"_class_name": "AutoencoderDC", "_diffusers_version": DIFFUSERS_VERSION}
        data.update(self.to_dict())
        data.pop("name")
        data.pop("structured_latent")
        return data


def _int_tuple(values) -> tuple:
    return tuple(int(v) for v in values)


def _per_stage(value, stages: int, name: str, allowed: tuple) -> tuple:
    values = (value,) * stages if isinstance(value, str) else tuple(value)
    for v in values:
        if v not in allowed:
            raise ValueError(f"config '{name}': {v!r} is not supported (choose from {allowed})")
    return values


def _to_lists(value):
    return [_to_lists(v) for v in value] if isinstance(value, (tuple, list)) else value


# --- presets (efficientvit names) ---------------------------------------------------------------

def _in_mix_config(stages: int, latent: int, scaling_factor: float, name: str) -> DCAEConfig:
    """dc-ae-f{32,64,128}c{32,128,512}-{in,mix}-1.0: 6, 7 or 8 stages."""
    widths = (128, 256, 512, 512, 1024, 1024, 2048, 2048)[:stages]
    blocks = ("ResBlock",) * 3 + ("EfficientViTBlock",) * (stages - 3)
    return DCAEConfig(
        latent_channels=latent,
        encoder_block_types=blocks, decoder_block_types=blocks,
        encoder_block_out_channels=widths, decoder_block_out_channels=widths,
        encoder_layers_per_block=(0, 4, 8) + (2,) * (stages - 3),
        decoder_layers_per_block=(0, 5, 10) + (2,) * (stages - 3),
        encoder_qkv_multiscales=((),) * stages, decoder_qkv_multiscales=((),) * stages,
        downsample_block_type="pixel_unshuffle", upsample_block_type="pixel_shuffle",
        decoder_norm_types=("batch_norm",) * 3 + ("rms_norm",) * (stages - 3),
        decoder_act_fns=("relu",) * 3 + ("silu",) * (stages - 3),
        scaling_factor=scaling_factor, name=name,
    )


def _sana_config(name: str) -> DCAEConfig:
    blocks = ("ResBlock",) * 3 + ("EfficientViTBlock",) * 3
    return DCAEConfig(
        latent_channels=32,
        encoder_block_types=blocks, decoder_block_types=blocks,
        encoder_block_out_channels=(128, 256, 512, 512, 1024, 1024),
        decoder_block_out_channels=(128, 256, 512, 512, 1024, 1024),
        encoder_layers_per_block=(2, 2, 2, 3, 3, 3), decoder_layers_per_block=(3, 3, 3, 3, 3, 3),
        encoder_qkv_multiscales=((), (), (), (5,), (5,), (5,)),
        decoder_qkv_multiscales=((), (), (), (5,), (5,), (5,)),
        downsample_block_type="conv", upsample_block_type="interpolate",
        decoder_norm_types="rms_norm", decoder_act_fns="silu",
        scaling_factor=0.41407, name=name,
    )


def _lite_config(name: str) -> DCAEConfig:
    """dc-ae-lite-f32c32-sana-1.1 (DC-Gen): the SANA encoder, a lighter all-ResBlock decoder (depths
    0,3,5,4,4,4, pixel-shuffle upsampling with the channel shortcuts) ending in SiLU."""
    return _sana_config(name).replace(
        decoder_block_types="ResBlock", decoder_layers_per_block=(0, 3, 5, 4, 4, 4),
        decoder_qkv_multiscales=((),) * 6, upsample_block_type="pixel_shuffle", decoder_conv_act_fn="silu")


def _dc_ae_1_5_config(stages: int, structured: bool, scaling_factor: float, name: str) -> DCAEConfig:
    """dc-ae-f32c128-1.5 / -1.1 (6 stages) and dc-ae-f64c128-1.5 (7) of DC-Gen: ResBlocks only, widths
    capped at 1024, no shortcut on the latent side, decoder head SiLU; 1.5 adds the structured latent."""
    return DCAEConfig(
        latent_channels=128,
        encoder_block_types="ResBlock", decoder_block_types="ResBlock",
        encoder_block_out_channels=(128, 256, 512, 512, 1024, 1024, 1024)[:stages],
        decoder_block_out_channels=(128, 256, 512, 512, 1024, 1024, 1024)[:stages],
        encoder_layers_per_block=(0, 5, 10, 4, 4, 4, 4)[:stages],
        decoder_layers_per_block=(0, 5, 10, 4, 4, 4, 4)[:stages],
        encoder_qkv_multiscales=((),) * stages, decoder_qkv_multiscales=((),) * stages,
        downsample_block_type="pixel_unshuffle", upsample_block_type="pixel_shuffle",
        decoder_norm_types="rms_norm", decoder_act_fns="silu",
        encoder_out_shortcut=False, decoder_in_shortcut=False, decoder_conv_act_fn="silu",
        structured_latent=structured, scaling_factor=scaling_factor, name=name,
    )


def tiny_config(factor: int = 8, latent_channels: int = 4, name: str | None = None) -> DCAEConfig:
    """A DC-AE small enough for CPU tests: widths 8-32, one EfficientViT stage (the last, with a
    multiscale qkv), BatchNorm + ReLU in the first decoder stage. `factor` is any power of two >= 4."""
    stages = factor.bit_length()  # stage 0 has layers, so factor = 2 ** (stages - 1)
    if factor < 4 or factor & (factor - 1):
        raise ValueError(f"argument 'factor': a power of two >= 4, got {factor}")
    widths = tuple(min(8 * 2 ** i, 32) for i in range(stages))
    blocks = ("ResBlock",) * (stages - 1) + ("EfficientViTBlock",)
    return DCAEConfig(
        latent_channels=latent_channels, attention_head_dim=8,
        encoder_block_types=blocks, decoder_block_types=blocks,
        encoder_block_out_channels=widths, decoder_block_out_channels=widths,
        encoder_layers_per_block=(1,) * stages, decoder_layers_per_block=(1,) * stages,
        encoder_qkv_multiscales=((),) * (stages - 1) + ((5,),),
        decoder_qkv_multiscales=((),) * (stages - 1) + ((5,),),
        decoder_norm_types=("batch_norm",) + ("rms_norm",) * (stages - 1),
        decoder_act_fns=("relu",) + ("silu",) * (stages - 1),
        scaling_factor=1.0, name=name,
    )


def tiny_structured_config(latent_channels: int = 16, name: str | None = None) -> DCAEConfig:
    """DC-AE 1.5's structure at CPU size (f8, widths 16-32, one ResBlock a stage, stage 0 empty, no
    latent shortcuts, a structured latent): for training the structured latent in tests and demos."""
    return DCAEConfig(
        latent_channels=latent_channels,
        encoder_block_types="ResBlock", decoder_block_types="ResBlock",
        encoder_block_out_channels=(8, 16, 32, 32), decoder_block_out_channels=(8, 16, 32, 32),
        encoder_layers_per_block=(0, 1, 1, 1), decoder_layers_per_block=(0, 1, 1, 1),
        encoder_qkv_multiscales=((),) * 4, decoder_qkv_multiscales=((),) * 4,
        decoder_norm_types="rms_norm", decoder_act_fns="silu",
        encoder_out_shortcut=False, decoder_in_shortcut=False, decoder_conv_act_fn="silu",
        structured_latent=True, scaling_factor=1.0, name=name,
    )


# Scaling factors: published ones where DC-Gen or diffusers give them (f64c128-1.5: DC-Gen's c2i model
# zoo, for its USiT models); 1.0 where none is published (f32c128-1.5, -1.1, in-1.0-256px): measure it
# on your data as 1 / RMS of the latents and set `model.scaling_factor`.
PRESETS = {
    "dc-ae-f32c32-in-1.0": lambda n: _in_mix_config(6, 32, 0.3189, n),
    "dc-ae-f64c128-in-1.0": lambda n: _in_mix_config(7, 128, 0.2889, n),
    "dc-ae-f128c512-in-1.0": lambda n: _in_mix_config(8, 512, 0.4883, n),
    "dc-ae-f32c32-mix-1.0": lambda n: _in_mix_config(6, 32, 0.4552, n),
    "dc-ae-f64c128-mix-1.0": lambda n: _in_mix_config(7, 128, 0.4538, n),
    "dc-ae-f128c512-mix-1.0": lambda n: _in_mix_config(8, 512, 0.3620, n),
    "dc-ae-f32c32-sana-1.0": _sana_config,
    "dc-ae-f32c32-sana-1.1": _sana_config,
    "dc-ae-lite-f32c32-sana-1.1": _lite_config,
    "dc-ae-f32c32-in-1.0-256px": lambda n: _in_mix_config(6, 32, 1.0, n),
    "dc-ae-f32c128-1.5": lambda n: _dc_ae_1_5_config(6, True, 1.0, n),
    "dc-ae-f64c128-1.5": lambda n: _dc_ae_1_5_config(7, True, 0.5935, n),
    "dc-ae-f32c128-1.1": lambda n: _dc_ae_1_5_config(6, False, 1.0, n),
    "tiny": lambda n: tiny_config(8, 4, name=n),
    "tiny-structured": lambda n: tiny_structured_config(16, name=n),
}
# Other names of a preset: the Hugging Face repositories of DC-AE-Lite (dc-ai/dc-ae-lite-f32c32[-diffusers]).
ALIASES = {"dc-ae-lite-f32c32": "dc-ae-lite-f32c32-sana-1.1"}


def preset_names() -> list[str]:
    return list(PRESETS)


def get_config(name: str) -> DCAEConfig:
    """The named preset (efficientvit / DC-Gen names, plus "tiny" and "tiny-structured"); a '-diffusers'
    suffix and the ALIASES are accepted."""
    key = name[: -len("-diffusers")] if name.endswith("-diffusers") else name
    key = ALIASES.get(key, key)
    if key not in PRESETS:
        raise ValueError(f"argument 'name': unknown DC-AE preset {name!r}; known: {preset_names()}")
    return PRESETS[key](key)


# The names efficientvit's `DCAE_HF(model_name)` accepts (REGISTERED_DCAE_MODEL in
# efficientvit/ae_model_zoo.py); its from_pretrained reads `model_name` from config.json.
EFFICIENTVIT_MODEL_NAMES = (
    "dc-ae-f32c32-in-1.0", "dc-ae-f64c128-in-1.0", "dc-ae-f128c512-in-1.0",
    "dc-ae-f32c32-mix-1.0", "dc-ae-f64c128-mix-1.0", "dc-ae-f128c512-mix-1.0",
    "dc-ae-f32c32-sana-1.0",
)
# The names DC-Gen's REGISTERED_DCAE_MODEL (dc_gen/ae_model_zoo.py) adds; its DCAE_HF reads config.json
# alike. (It also names dc-ae-f32c32-sana-1.1, sana-1.0's architecture: saved as sana-1.0, both read it.)
DC_GEN_MODEL_NAMES = (
    "dc-ae-lite-f32c32-sana-1.1", "dc-ae-f32c32-in-1.0-256px",
    "dc-ae-f32c128-1.5", "dc-ae-f64c128-1.5", "dc-ae-f32c128-1.1",
)
OFFICIAL_MODEL_NAMES = EFFICIENTVIT_MODEL_NAMES + DC_GEN_MODEL_NAMES


def _architecture(config: DCAEConfig) -> DCAEConfig:
    """The config without what leaves the module tree unchanged (scaling factor, spelling of "conv",
    the qkv scales of stages without attention)."""
    downsample = "conv" if config.downsample_block_type == "Conv" else config.downsample_block_type

    def scales(blocks, values):
        return tuple(s if block == "EfficientViTBlock" else () for block, s in zip(blocks, values))

    return config.replace(
        scaling_factor=1.0, downsample_block_type=downsample,
        encoder_qkv_multiscales=scales(config.encoder_block_types, config.encoder_qkv_multiscales),
        decoder_qkv_multiscales=scales(config.decoder_block_types, config.decoder_qkv_multiscales))


def config_differences(first: DCAEConfig, second: DCAEConfig) -> list[tuple[str, Any, Any]]:
    """(field, first's value, second's value) for every field in which the two configs build a different
    model: the architecture (as `_architecture` normalises it, the structured latent included) and the
    scaling factor; not the preset name."""
    a, b = _architecture(first), _architecture(second)
    differ = [(f.name, getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(DCAEConfig)
              if f.compare and getattr(a, f.name) != getattr(b, f.name)]
    if float(first.scaling_factor) != float(second.scaling_factor):
        differ.append(("scaling_factor", first.scaling_factor, second.scaling_factor))
    return differ


def efficientvit_model_name(config: DCAEConfig) -> str | None:
    """The efficientvit / DC-Gen model name of the preset whose architecture `config` has (the scaling
    factor tells in-1.0 from mix-1.0), or None for an architecture neither names."""
    if config.name in OFFICIAL_MODEL_NAMES:
        return config.name
    target = _architecture(config)
    same = [name for name in OFFICIAL_MODEL_NAMES if _architecture(get_config(name)) == target]
    exact = [name for name in same if get_config(name).scaling_factor == config.scaling_factor]
    return (exact or same or [None])[0]


def find_preset_in(text: str) -> str | None:
    """The preset whose name (or alias) is the longest one occurring in `text` (e.g. a checkpoint
    path), or None."""
    hits = [name for name in list(PRESETS) + list(ALIASES) if not name.startswith("tiny") and name in text]
    return ALIASES.get(max(hits, key=len), max(hits, key=len)) if hits else None


def structured_preset_names() -> list[str]:
    """The presets whose latent is structured (any channel prefix encodes and decodes)."""
    return [name for name in PRESETS if get_config(name).structured_latent]
