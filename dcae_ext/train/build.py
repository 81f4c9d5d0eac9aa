"""Model construction for the trainers and the trainable/frozen split of a phase."""
from __future__ import annotations

import fnmatch
import json
import os

from torch import nn

from dcae_ext.train.config import ConfigError, TrainConfig


def build_model(config: TrainConfig) -> nn.Module:
    """The generator: a DC-AE (`preset` a preset name or a diffusers config.json path) or an IBQ
    tokenizer (an IBQ preset name); `init_weights` loads saved weights instead of random ones."""
    from dcae_ext.models import DCAE, IBQTokenizer, load_model_from_path, preset_names
    from dcae_ext.models.ibq.tokenizer import PRESETS as IBQ_PRESETS

    cls = DCAE if config.model == "dcae" else IBQTokenizer
    if config.init_weights:
        if not os.path.exists(config.init_weights):
            raise ConfigError("init_weights", f"{config.init_weights} does not exist")
        model = load_model_from_path(config.init_weights)
        if not isinstance(model, cls):
            raise ConfigError("init_weights", f"{config.init_weights} holds a {type(model).__name__}; "
                                              f"training {config.model} needs a {cls.__name__}")
        return model
    if config.model == "dcae" and config.preset.endswith(".json"):
        if not os.path.isfile(config.preset):
            raise ConfigError("preset", f"{config.preset} does not exist")
        with open(config.preset) as stream:
            return DCAE.from_config(json.load(stream))
    known = preset_names() if config.model == "dcae" else list(IBQ_PRESETS)
    if config.preset not in known:
        raise ConfigError("preset", f"unknown {config.model} preset {config.preset!r}; known: {', '.join(known)}"
                                    + ("" if config.model == "ibq" else ", or a DC-AE config.json"))
    return cls.from_config(config.preset)


def check_inputs(config: TrainConfig, model: nn.Module) -> None:
    """What the config alone cannot tell: the resolution and the latent channel choices fit the model,
    given files exist."""
    if config.lpips_weight > 0 and config.lpips_weights and not os.path.isfile(config.lpips_weights):
        raise ConfigError("lpips_weights", f"{config.lpips_weights} does not exist")
    factor = model.spatial_compression
    if config.resolution % factor:
        lower = max(factor, config.resolution // factor * factor)
        raise ConfigError("resolution", f"{config.resolution} is not a multiple of the model's spatial factor "
                                        f"{factor}; use {lower} or {lower + factor}")
    _check_latent_channels_choices(config, model)


def _check_latent_channels_choices(config: TrainConfig, model: nn.Module) -> None:
    from dcae_ext.models.dcae.config import structured_preset_names

    choices = config.latent_channels_choices
    if not choices:
        return
    model_config = getattr(model, "config", None)
    if not getattr(model_config, "structured_latent", False):
        raise ConfigError("latent_channels_choices", f"the model ({config.init_weights or config.preset}) has no "
                                                     f"structured latent; presets with one: "
                                                     f"{', '.join(structured_preset_names())} (or a DC-AE config.json "
                                                     "with structured_latent: true)")
    too_many = [c for c in choices if c > model_config.latent_channels]
    if too_many:
        raise ConfigError("latent_channels_choices", f"{too_many} exceed the model's {model_config.latent_channels} "
                                                     "latent channels")


def matches(name: str, patterns) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def apply_trainable(model: nn.Module, trainable, frozen=()) -> list[str]:
    """requires_grad = name matches a `trainable` pattern and no `frozen` one; returns the
    trainable names. Raises if the patterns select nothing (a typo must not freeze everything)."""
    names = []
    for name, parameter in model.named_parameters():
        train = matches(name, trainable) and not matches(name, frozen)
        parameter.requires_grad_(train)
        if train:
            names.append(name)
    if not names:
        sample = [n for n, _ in model.named_parameters()][:6]
        raise ValueError(f"config 'trainable': patterns {list(trainable)} (minus frozen {list(frozen)}) match "
                         f"no parameter; names look like {sample}")
    return names


def set_frozen_modules_to_eval(model: nn.Module) -> None:
    """Modules with state but nothing trainable below them run in eval mode, so a frozen
    BatchNorm keeps its running statistics (its buffers stay as loaded)."""
    for module in model.modules():
        has_state = any(True for _ in module.parameters()) or any(True for _ in module.buffers())
        if has_state and not any(p.requires_grad for p in module.parameters()):
            module.eval()


def last_decoder_weight(model: nn.Module):
    """The weight of the decoder's final convolution (for the adaptive GAN weight)."""
    convs = [m for m in model.decoder.conv_out.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError("adaptive GAN weight: the decoder's conv_out holds no convolution")
    return convs[-1].weight
