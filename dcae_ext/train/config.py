"""Training configuration: one dataclass for both trainers; the phase and model pick defaults.

Precedence: defaults of (model, phase) < a YAML/JSON file < explicit overrides (the CLI flags).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
from dataclasses import dataclass, field

MODELS = ("dcae", "ibq")
LR_SCHEDULES = ("cosine", "constant")
GAN_GENERATOR_LOSSES = ("hinge", "non_saturating")

# Which parameters train, as fnmatch patterns over `named_parameters()` names (DC-AE paper 3.3).
PHASE_TRAINABLE = {
    1: ["*"],                                            # low-resolution full training
    2: ["encoder.conv_out.*", "decoder.conv_in.*"],      # high-resolution latent adaptation
    3: ["decoder.norm_out.*", "decoder.conv_out.*"],     # low-resolution local refinement (head)
}


@dataclass
class TrainConfig:
    model: str = "dcae"               # "dcae" or "ibq"
    preset: str = "tiny"
    phase: int = 1                    # DC-AE phase 1, 2 or 3 (IBQ: 1)
    steps: int = 1000
    batch_size: int = 8               # per process
    resolution: int = 256
    out: str = "runs/train"
    data: str | None = None           # folder / list file; None: embedded sample images
    seed: int = 0
    device: str = "auto"              # auto | cpu | cuda
    init_weights: str | None = None   # start from these weights (save_pretrained folder or checkpoint)

    # generator optimisation
    lr: float = 6.4e-5
    weight_decay: float = 0.1
    betas: tuple = (0.9, 0.999)
    warmup_steps: int = 0
    lr_schedule: str = field(default="cosine", metadata={"help": "after the warm-up: cosine (to lr * min_lr_ratio at "
                                                                  "`steps`) or constant"})
    min_lr_ratio: float = 0.1         # cosine decays to lr * min_lr_ratio
    lr_drop_steps: list = field(default_factory=list, metadata={
        "help": "steps from which the lr (generator and discriminator) is multiplied by lr_drop_rate once more"})
    lr_drop_rate: float = field(default=0.1, metadata={"help": "factor of each lr drop"})
    grad_clip: float = 1.0            # 0 disables
    grad_accum: int = 1
    precision: str = "auto"           # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp16 | fp32
    grad_checkpointing: bool = False
    trainable: list = field(default_factory=lambda: ["*"])
    frozen: list = field(default_factory=list)   # patterns removed from `trainable`
    ema_decay: float = 0.999          # 0 disables the EMA

    # losses
    reconstruction: str = "l1"        # l1 | l2
    reconstruction_weight: float = 1.0
    lpips_weight: float = 1.0
    lpips_net: str = "vgg"
    lpips_weights: str | None = None  # local LPIPS trunk weights (else env DCAE_EXT_LPIPS_WEIGHTS)
    quantizer_weight: float = 1.0     # IBQ: weight of the quantizer's loss (entropy term inside)

    # adversarial
    gan_weight: float = 0.0           # 0: no discriminator
    adaptive_gan_weight: bool = False # VQGAN gradient balancing at the decoder's last layer
    disc_start: int = 0
    gan_generator_loss: str = field(default="hinge", metadata={
        "help": "generator GAN loss: hinge (-mean of the patch logits) or non_saturating (softplus(-l) of each "
                "image's mean patch logit l, as IBQ's official code)"})
    disc_first: bool = field(default=False, metadata={
        "help": "update the discriminator before the generator in each step (IBQ's official order; costs one "
                "extra generator forward without gradient)"})
    disc_lr: float | None = None      # None: same as lr
    disc_betas: tuple = (0.5, 0.9)
    disc_weight_decay: float = 0.0
    disc_channels: int = 64
    disc_layers: int = 3
    disc_norm: str = "batch"          # batch | group
    lecam_weight: float = 0.0

    # input/output
    num_workers: int = 2
    pin_memory: bool = True
    log_every: int = 10
    checkpoint_every: int = 500
    image_every: int = 250            # reconstruction grid PNG (0: only at the end)
    sync_batchnorm: bool = True       # DDP on CUDA: BatchNorm statistics over all ranks

    def validate(self) -> "TrainConfig":
        if self.model not in MODELS:
            raise ValueError(f"config 'model': expected one of {MODELS}, got {self.model!r}")
        if self.phase not in PHASE_TRAINABLE:
            raise ValueError(f"config 'phase': expected 1, 2 or 3, got {self.phase!r}")
        if self.model == "ibq" and self.phase != 1:
            raise ValueError("config 'phase': the IBQ trainer has a single phase (1)")
        for name in ("steps", "batch_size", "resolution", "grad_accum"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"config '{name}': expected >= 1, got {getattr(self, name)!r}")
        if self.precision not in ("auto", "bf16", "fp16", "fp32"):
            raise ValueError(f"config 'precision': expected auto|bf16|fp16|fp32, got {self.precision!r}")
        if self.reconstruction not in ("l1", "l2"):
            raise ValueError(f"config 'reconstruction': expected l1 or l2, got {self.reconstruction!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"config 'lr_schedule': expected one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if any(int(step) < 0 for step in self.lr_drop_steps) or not 0 < self.lr_drop_rate <= 1:
            raise ValueError(f"config 'lr_drop_steps'/'lr_drop_rate': expected steps >= 0 and 0 < rate <= 1, got "
                             f"{self.lr_drop_steps!r} / {self.lr_drop_rate!r}")
        if self.gan_generator_loss not in GAN_GENERATOR_LOSSES:
            raise ValueError(f"config 'gan_generator_loss': expected one of {GAN_GENERATOR_LOSSES}, "
                             f"got {self.gan_generator_loss!r}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"config 'ema_decay': expected 0 <= decay < 1, got {self.ema_decay!r}")
        return self


def defaults(model: str = "dcae", phase: int = 1) -> dict:
    """The recipe of the papers for (model, phase), as overrides of the dataclass defaults."""
    if model not in MODELS:
        raise ValueError(f"config 'model': expected one of {MODELS}, got {model!r}")
    if phase not in PHASE_TRAINABLE:
        raise ValueError(f"config 'phase': expected 1, 2 or 3, got {phase!r}")
    if model == "ibq" and phase != 1:
        raise ValueError("config 'phase': the IBQ trainer has a single phase (1)")
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


# Named `--config` recipes. SEED-Voken configs/IBQ/gpu/imagenet_ibqgan_{16384,262144}.yaml on ImageNet-1k
# (1,281,167 images): 8 nodes x 8 GPUs x 4 images = 256 a step (run under torchrun with 64 processes, or
# set grad_accum to 64 / processes), 5005 steps an epoch, 330 epochs, lr x0.1 after epochs 250 and 300,
# fp16 mixed precision, 256x256 crops, BatchNorm statistics per process (Lightning does not sync them);
# the loss and optimiser settings are defaults("ibq").
_IBQ_EPOCH = 5005
_IBQ_PAPER = dict(model="ibq", resolution=256, batch_size=4, grad_accum=1, steps=330 * _IBQ_EPOCH,
                  lr_drop_steps=[250 * _IBQ_EPOCH, 300 * _IBQ_EPOCH], lr_drop_rate=0.1, precision="fp16",
                  lpips_net="vgg", disc_channels=64, disc_layers=3, disc_norm="batch", sync_batchnorm=False)
RECIPES = {
    "ibq-paper-16384": dict(_IBQ_PAPER, preset="ibq-f16-16384"),
    "ibq-paper-262144": dict(_IBQ_PAPER, preset="ibq-f16-262144"),
}


def read_config_file(path: str) -> dict:
    """The options of a .yaml/.yml/.json file, or of a named recipe (RECIPES)."""
    if path in RECIPES and not os.path.exists(path):
        return copy.deepcopy(RECIPES[path])
    with open(path) as stream:
        if path.endswith((".yaml", ".yml")):
            import yaml
            values = yaml.safe_load(stream) or {}
        elif path.endswith(".json"):
            values = json.load(stream)
        else:
            raise ValueError(f"argument 'config': expected a .yaml, .yml or .json file or a recipe name "
                             f"({', '.join(RECIPES)}), got {path}")
    if not isinstance(values, dict):
        raise ValueError(f"argument 'config': {path} must hold a mapping of option names to values")
    return values


def make_config(model: str = "dcae", phase: int | None = None, file: str | None = None, **overrides) -> TrainConfig:
    """Defaults for (model, phase) < values of `file` < `overrides` (None values are ignored)."""
    from_file = read_config_file(file) if file else {}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    model = overrides.get("model", from_file.get("model", model))
    phase = overrides.get("phase", from_file.get("phase", phase or 1))
    values = dict(defaults(model, int(phase)))
    values.update(from_file)
    values.update(overrides)
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown config option(s) {unknown}; known: {sorted(names)}")
    for name in ("betas", "disc_betas"):
        if name in values:
            values[name] = tuple(values[name])
    return TrainConfig(**values).validate()


def to_dict(config: TrainConfig) -> dict:
    values = dataclasses.asdict(config)
    values["betas"], values["disc_betas"] = list(config.betas), list(config.disc_betas)
    return values


def save_config(config: TrainConfig, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as stream:
        json.dump(to_dict(config), stream, indent=2)
