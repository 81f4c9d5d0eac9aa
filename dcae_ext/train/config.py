"""Training configuration: one dataclass for both trainers; the phase and model pick defaults.

Precedence: defaults of (model, phase) < a resumed run's saved settings < a YAML/JSON file <
explicit overrides (the CLI flags). Each field carries its help text, allowed values and lower
bound in its metadata: `dcae-ext train` builds its flags from them, and `validate` checks them, so
a new option is added here only. Values from files are coerced to the field's type (YAML reads
`1e-4` as a string) or rejected with the option's name.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import typing
from dataclasses import dataclass, field
from typing import Optional

MODELS = ("dcae", "ibq")
LR_SCHEDULES = ("cosine", "constant")
GAN_GENERATOR_LOSSES = ("hinge", "non_saturating")

# Which parameters train, as fnmatch patterns over `named_parameters()` names (DC-AE paper 3.3).
PHASE_TRAINABLE = {
    1: ["*"],                                            # low-resolution full training
    2: ["encoder.conv_out.*", "decoder.conv_in.*"],      # high-resolution latent adaptation
    3: ["decoder.norm_out.*", "decoder.conv_out.*"],     # low-resolution local refinement (head)
}


class ConfigError(ValueError):
    """A bad value of one option. `source` says where it came from (a file, or None)."""

    def __init__(self, option: str, detail: str, source: str | None = None):
        self.option, self.detail, self.source = option, detail, source
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.source}: " if self.source else ""
        return f"{where}config '{self.option}': {self.detail}"


def option(default=dataclasses.MISSING, help: str = "", *, factory=None, choices=None, minimum=None):
    """A TrainConfig field with its help text, allowed values and lower bound."""
    metadata = {"help": help, "choices": choices, "minimum": minimum}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    model: str = option("dcae", "what to train", choices=MODELS)
    preset: Optional[str] = option(None, "model preset (tiny, dc-ae-f32c32-in-1.0, ibq-f16-16384, ...) or a DC-AE "
                                         "config.json (default: the architecture of --init-weights, else tiny)")
    phase: int = option(1, "DC-AE phase: 1 full low-res training, 2 high-res latent adaptation, 3 low-res GAN "
                           "refinement of the decoder head (IBQ: 1)", choices=(1, 2, 3))
    steps: int = option(1000, "optimiser steps in total", minimum=1)
    batch_size: int = option(8, "images per step and process (before gradient accumulation)", minimum=1)
    resolution: int = option(256, "training crop size in pixels (a multiple of the model's spatial factor)",
                             minimum=1)
    out: str = option("runs/train", "output folder (checkpoint, metrics.jsonl, images, weights)")
    data: Optional[str] = option(None, "image folder (ImageFolder tree or flat) or list file; default: "
                                    "scikit-image's bundled sample images")
    strict_data: bool = option(False, "stop at the first unreadable image (default: skip it with a warning; the "
                                      "next readable image in the list stands in for it)")
    seed: int = option(0, "seed of weights, crops and sampling", minimum=0)
    device: str = option("auto", "auto picks CUDA when visible", choices=("auto", "cpu", "cuda"))
    init_weights: Optional[str] = option(None, "start from these weights (a save_pretrained folder, a training run "
                                            "or checkpoint) instead of random ones")

    # generator optimisation
    lr: float = option(6.4e-5, "peak learning rate (AdamW)", minimum=0.0)
    weight_decay: float = option(0.1, "AdamW weight decay", minimum=0.0)
    betas: tuple = option((0.9, 0.999), "AdamW betas")
    warmup_steps: int = option(0, "linear learning-rate warm-up steps", minimum=0)
    lr_schedule: str = option("cosine", "after the warm-up: cosine (to lr * min_lr_ratio at the last step) or "
                                        "constant", choices=LR_SCHEDULES)
    min_lr_ratio: float = option(0.1, "the cosine schedule decays to lr * min_lr_ratio", minimum=0.0)
    lr_drop_steps: tuple = option((), "steps from which the lr (generator and discriminator) is multiplied by "
                                      "lr_drop_rate once more")
    lr_drop_rate: float = option(0.1, "factor of each lr drop, in (0, 1]", minimum=0.0)
    grad_clip: float = option(1.0, "gradient-norm clipping (0 disables)", minimum=0.0)
    grad_accum: int = option(1, "micro-batches per optimiser step", minimum=1)
    precision: str = option("auto", "auto: bf16 autocast on CUDA, fp32 on CPU; fp16 adds a GradScaler",
                            choices=("auto", "bf16", "fp16", "fp32"))
    grad_checkpointing: bool = option(False, "recompute block activations in the backward (less memory)")
    trainable: list = option(help="fnmatch patterns of the parameters that train", factory=lambda: ["*"])
    frozen: list = option(help="fnmatch patterns removed from trainable", factory=list)
    ema_decay: float = option(0.999, "EMA of the weights (0 disables); the decay warms up as min(ema_decay, "
                                     "(1 + n) / (10 + n)) at update n", minimum=0.0)
    max_nonfinite_steps: int = option(20, "stop with an error after this many steps in a row skipped for a "
                                          "non-finite loss (a diverged run; 0: never stop), keeping the last "
                                          "checkpoint written before them", minimum=0)
    latent_channels_choices: tuple = option((), "DC-AE with a structured latent (dc-ae-f32c128-1.5, tiny-structured, "
                                                "...): latent channel counts c', one drawn per step; the decoder "
                                                "reconstructs from the first c' channels, the others zeroed (DC-AE "
                                                "1.5's channel-wise random masking; none: all channels)")

    # losses
    reconstruction: str = option("l1", "pixel loss", choices=("l1", "l2"))
    reconstruction_weight: float = option(1.0, "weight of the pixel loss", minimum=0.0)
    lpips_weight: float = option(1.0, "weight of the LPIPS loss (0 disables)", minimum=0.0)
    lpips_net: str = option("vgg", "LPIPS trunk", choices=("vgg", "alex", "squeeze"))
    lpips_weights: Optional[str] = option(None, "local LPIPS trunk weights (else env DCAE_EXT_LPIPS_WEIGHTS; without "
                                             "either a random trunk, for smoke runs only)")
    quantizer_weight: float = option(1.0, "IBQ: weight of the quantizer's loss (entropy term inside)", minimum=0.0)

    # adversarial
    gan_weight: float = option(0.0, "weight of the generator's GAN loss (0: no discriminator)", minimum=0.0)
    adaptive_gan_weight: bool = option(False, "VQGAN gradient balancing at the decoder's last layer")
    disc_start: int = option(0, "step at which the discriminator starts", minimum=0)
    gan_generator_loss: str = option("hinge", "generator GAN loss: hinge (-mean of the patch logits) or "
                                              "non_saturating (softplus(-l) of each image's mean patch logit l, "
                                              "as IBQ's official code)", choices=GAN_GENERATOR_LOSSES)
    disc_first: bool = option(False, "update the discriminator before the generator in each step (IBQ's official "
                                     "order; costs one extra generator forward without gradient)")
    disc_lr: Optional[float] = option(None, "discriminator learning rate (default: lr)", minimum=0.0)
    disc_betas: tuple = option((0.5, 0.9), "discriminator AdamW betas")
    disc_weight_decay: float = option(0.0, "discriminator AdamW weight decay", minimum=0.0)
    disc_channels: int = option(64, "PatchGAN discriminator base width", minimum=1)
    disc_layers: int = option(3, "PatchGAN discriminator downsampling layers", minimum=1)
    disc_norm: str = option("batch", "discriminator normalisation", choices=("batch", "group"))
    lecam_weight: float = option(0.0, "LeCAM regulariser weight (0 disables)", minimum=0.0)

    # input/output
    num_workers: int = option(2, "data loader worker processes", minimum=0)
    pin_memory: bool = option(True, "pinned host memory for CUDA transfers")
    log_every: int = option(10, "write a metrics.jsonl row every N steps", minimum=1)
    checkpoint_every: int = option(500, "write checkpoint.pt every N steps (0: only at the end)", minimum=0)
    image_every: int = option(250, "reconstruction strip every N steps (0: only at the end)", minimum=0)
    sync_batchnorm: bool = option(True, "DDP on CUDA: BatchNorm statistics over all ranks")

    def validate(self) -> "TrainConfig":
        """Coerce every field to its type, then check allowed values and bounds (ConfigError)."""
        for spec in dataclasses.fields(self):
            value = coerce(spec.name, getattr(self, spec.name))
            setattr(self, spec.name, value)
            choices, minimum = spec.metadata.get("choices"), spec.metadata.get("minimum")
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(spec.name, f"expected a finite number, got {value!r}")
            if choices is not None and value not in choices:
                raise ConfigError(spec.name, f"expected one of {', '.join(map(str, choices))}; got {value!r}")
            if minimum is not None and value is not None and value < minimum:
                raise ConfigError(spec.name, f"expected a value >= {minimum}, got {value!r}")
        if self.model == "ibq" and self.phase != 1:
            raise ConfigError("phase", "the IBQ trainer has a single phase (1)")
        if self.preset is None and self.init_weights is None:
            self.preset = DEFAULT_PRESET
        if self.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise ConfigError("device", "cuda asked for but no CUDA GPU is visible; use cpu or auto")
        for name in ("betas", "disc_betas"):
            betas = getattr(self, name)
            if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
                raise ConfigError(name, f"expected two numbers in [0, 1), got {list(betas)}")
        if self.ema_decay >= 1:
            raise ConfigError("ema_decay", f"expected 0 <= decay < 1, got {self.ema_decay!r}")
        if self.min_lr_ratio > 1:
            raise ConfigError("min_lr_ratio", f"expected a ratio in [0, 1], got {self.min_lr_ratio!r}")
        if not 0 < self.lr_drop_rate <= 1:
            raise ConfigError("lr_drop_rate", f"expected a factor in (0, 1], got {self.lr_drop_rate!r}")
        if any(step < 0 or not float(step).is_integer() for step in self.lr_drop_steps):
            raise ConfigError("lr_drop_steps", f"expected whole step numbers >= 0, got {list(self.lr_drop_steps)}")
        choices = self.latent_channels_choices
        if any(c < 1 or not float(c).is_integer() for c in choices):
            raise ConfigError("latent_channels_choices", f"expected whole channel counts >= 1, got {list(choices)}")
        self.latent_channels_choices = tuple(int(c) for c in choices)
        if self.model == "ibq" and choices:
            raise ConfigError("latent_channels_choices", "applies to a DC-AE with a structured latent, not to IBQ")
        return self


FIELDS = {spec.name: spec for spec in dataclasses.fields(TrainConfig)}
TYPES = typing.get_type_hints(TrainConfig)


def value_type(name: str) -> tuple[type, bool]:
    """(the field's type, whether None is allowed)."""
    hint = TYPES[name]
    args = typing.get_args(hint)
    if type(None) in args:
        return next(a for a in args if a is not type(None)), True
    return hint, False


WANTED = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
          tuple: "a list of numbers", list: "a list of strings"}


def coerce(name: str, value):
    """`value` as the type of field `name` (numbers written as strings become numbers), or ConfigError."""
    kind, optional = value_type(name)
    if kind not in WANTED:
        return value
    if value is None:
        if optional:
            return None
        raise ConfigError(name, "expected a value, got null")
    try:
        if kind is bool:
            if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
                return value.lower() in ("true", "yes", "on", "1")
            if isinstance(value, bool) or value in (0, 1):
                return bool(value)
        elif kind is int and not isinstance(value, bool):
            number = float(value) if isinstance(value, str) else value
            if isinstance(number, (int, float)) and float(number).is_integer():
                return int(number)
        elif kind is float and not isinstance(value, bool):
            if isinstance(value, (int, float, str)):
                return float(value)
        elif kind is str:
            if isinstance(value, str):
                return value
        elif kind is tuple:
            if isinstance(value, (list, tuple)):
                return tuple(float(v) for v in value)
        elif kind is list:
            if isinstance(value, str):
                return [value]
            if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
                return list(value)
    except (TypeError, ValueError):
        pass
    wanted = WANTED[kind]
    raise ConfigError(name, f"expected {wanted}{' or null' if optional else ''}, got {value!r}")


# Short runs of the CPU-sized presets (a few hundred steps at 32-64 px, as `dcae-ext demo` and the
# README's example run them): the papers' recipes (DC-AE lr 6.4e-5 with weight decay 0.1, IBQ a constant
# 1e-4) are tuned for hundreds of thousands of steps and leave such a run at noise. These values are the
# ones the demo was tuned with (docs/training.md); a phase 2 or 3 run of a tiny model keeps the paper's.
SHORT_RUN_RECIPES = {
    ("dcae", "tiny"): dict(lr=2e-3, weight_decay=0.0, warmup_steps=20, lpips_net="alex"),
    ("dcae", "tiny-structured"): dict(lr=2e-3, weight_decay=0.0, warmup_steps=20, lpips_net="alex"),
    # the official loss and update order, with a cosine lr: it settles a 300-step run (docs/ibq_training.md
    # section 2: 18.8 vs 16.5 dB with the official constant lr, one experiment run each)
    ("ibq", "tiny"): dict(lr=1e-3, lr_schedule="cosine", warmup_steps=20, lpips_net="alex", disc_channels=32),
}
DEFAULT_PRESET = "tiny"


def defaults(model: str = "dcae", phase: int = 1, preset: str | None = None) -> dict:
    """The recipe of the papers for (model, phase), as overrides of the dataclass defaults; for phase 1
    of a CPU-sized preset (SHORT_RUN_RECIPES), the settings that work at its scale instead."""
    recipe = _paper_defaults(model, phase)
    if phase == 1:
        recipe.update(SHORT_RUN_RECIPES.get((model, preset), {}))
    return recipe


def _paper_defaults(model: str, phase: int) -> dict:
    if model not in MODELS:
        raise ConfigError("model", f"expected one of {', '.join(MODELS)}; got {model!r}")
    if phase not in PHASE_TRAINABLE:
        raise ConfigError("phase", f"expected one of 1, 2, 3; got {phase!r}")
    if model == "ibq" and phase != 1:
        raise ConfigError("phase", "the IBQ trainer has a single phase (1)")
    if model == "ibq":
        # SEED-Voken IBQ (configs/IBQ/gpu/imagenet_ibqgan_*.yaml, models/ibqgan.py): Adam lr 1e-4 betas
        # (0.5, 0.9) for both networks, constant lr, no clipping, discriminator updated first, hinge
        # discriminator loss, non-saturating generator loss at a fixed weight 0.1, LeCAM 0.05, EMA 0.999.
        return dict(model="ibq", phase=1, lr=1e-4, weight_decay=0.0, betas=(0.5, 0.9), lpips_weight=1.0,
                    lr_schedule="constant", grad_clip=0.0, disc_first=True, gan_generator_loss="non_saturating",
                    gan_weight=0.1, adaptive_gan_weight=False, disc_start=0, lecam_weight=0.05,
                    disc_betas=(0.5, 0.9), trainable=["*"], ema_decay=0.999)
    common = dict(model="dcae", phase=phase, lr=6.4e-5, weight_decay=0.1, trainable=PHASE_TRAINABLE[phase])
    if phase == 3:  # GAN on the decoder head, discriminator weight 0.5, L1 + LPIPS kept
        return dict(common, gan_weight=0.5, lpips_weight=1.0)
    return dict(common, gan_weight=0.0, lpips_weight=1.0)


RECIPES = (("dcae", 1), ("dcae", 2), ("dcae", 3), ("ibq", 1))


# Named `--config` values. SEED-Voken configs/IBQ/gpu/imagenet_ibqgan_{16384,262144}.yaml on ImageNet-1k
# (1,281,167 images): 8 nodes x 8 GPUs x 4 images = 256 a step (run under torchrun with 64 processes, or
# set grad_accum to 64 / processes), 5005 steps an epoch, 330 epochs, lr x0.1 after epochs 250 and 300,
# fp16 mixed precision, 256x256 crops, BatchNorm statistics per process (Lightning does not sync them);
# the loss and optimiser settings are defaults("ibq").
_IBQ_EPOCH = 5005
_IBQ_PAPER = dict(model="ibq", resolution=256, batch_size=4, grad_accum=1, steps=330 * _IBQ_EPOCH,
                  lr_drop_steps=(250 * _IBQ_EPOCH, 300 * _IBQ_EPOCH), lr_drop_rate=0.1, precision="fp16",
                  lpips_net="vgg", disc_channels=64, disc_layers=3, disc_norm="batch", sync_batchnorm=False)
NAMED_CONFIGS = {
    "ibq-paper-16384": dict(_IBQ_PAPER, preset="ibq-f16-16384"),
    "ibq-paper-262144": dict(_IBQ_PAPER, preset="ibq-f16-262144"),
}


def read_config_file(path: str) -> dict:
    """The options of a .yaml/.yml/.json file, or of a named configuration (NAMED_CONFIGS)."""
    if path in NAMED_CONFIGS and not os.path.exists(path):
        return copy.deepcopy(NAMED_CONFIGS[path])
    if not path.endswith((".yaml", ".yml", ".json")):
        raise ConfigError("config", f"expected a .yaml, .yml or .json file or one of {', '.join(NAMED_CONFIGS)}, "
                                    f"got {path}")
    if not os.path.isfile(path):
        raise ConfigError("config", f"{path} does not exist")
    with open(path) as stream:
        try:
            if path.endswith(".json"):
                values = json.load(stream)
            else:
                import yaml
                values = yaml.safe_load(stream) or {}
        except Exception as error:  # yaml.YAMLError or json.JSONDecodeError
            detail = " ".join(str(error).split())
            raise ConfigError("config", f"{path} is not valid {path.rsplit('.', 1)[-1].upper()}: {detail}") from None
    if not isinstance(values, dict):
        raise ConfigError("config", f"{path} must hold a mapping of option names to values")
    return values


def _checked(values: dict, source: str | None) -> dict:
    values = {str(name).replace("-", "_"): value for name, value in values.items()}  # flag spelling is fine too
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise ConfigError(unknown[0], f"unknown config option; known: {', '.join(FIELDS)}", source)
    result = {}
    for name, value in values.items():
        try:
            result[name] = coerce(name, value)
        except ConfigError as error:
            error.source = source
            raise
    return result


def make_config(model: str | None = None, phase: int | None = None, file: str | None = None,
                base: dict | None = None, **overrides) -> TrainConfig:
    """Defaults for (model, phase) < `base` (a resumed run's saved settings) < values of `file` <
    `overrides` (None values are ignored). A file naming another model than `model` is an error."""
    layers = [(base or {}, "the resumed run's saved settings"), (read_config_file(file) if file else {}, file),
              ({k: v for k, v in overrides.items() if v is not None}, None)]
    layers = [(_checked(values, source), source) for values, source in layers]
    for values, source in layers[:2]:
        if model is not None and values.get("model", model) != model:
            raise ConfigError("model", f"set to {values['model']} there, but {model} was asked for; "
                                       f"remove 'model' there or train {values['model']}", source)
    chosen = {}
    for values, _ in layers:
        chosen.update(values)
    preset = chosen.get("preset") or (None if chosen.get("init_weights") else DEFAULT_PRESET)
    values = dict(defaults(model or chosen.get("model", "dcae"), chosen.get("phase", phase or 1), preset))
    origin = {}
    for layer, source in layers:
        values.update(layer)
        origin.update({name: source for name in layer})
    try:
        return TrainConfig(**values).validate()
    except ConfigError as error:
        error.source = origin.get(error.option)
        raise


def changed_settings(saved: dict, current: dict) -> list[str]:
    """'name old -> new' for every option whose value differs between two to_dict() results."""
    return [f"{name} {saved[name]!r} -> {value!r}" for name, value in current.items()
            if name in saved and saved[name] != value]


def to_dict(config: TrainConfig) -> dict:
    values = dataclasses.asdict(config)
    values["betas"], values["disc_betas"] = list(config.betas), list(config.disc_betas)
    return values


def save_config(config: TrainConfig, path: str) -> None:
    from dcae_ext.files import atomic_write

    def write(tmp: str) -> None:
        with open(tmp, "w") as stream:
            json.dump(to_dict(config), stream, indent=2)

    atomic_write(path, write)
