"""Model construction for the trainers and the trainable/frozen split of a phase."""
from __future__ import annotations

import fnmatch
import json
import os

from torch import nn

from dcae_ext.train.config import ConfigError, TrainConfig


def build_model(config: TrainConfig) -> nn.Module:
    """The generator: a DC-AE (`preset` a preset name or a diffusers config.json path) or an IBQ
    tokenizer (an IBQ preset name); `init_weights` loads saved weights instead of random ones.

    With `init_weights` the architecture is the weights': a `preset` that names another one is a
    ConfigError, and `config.preset` is set to the preset the weights' architecture is (None for
    one no preset has), so that the run's config.json records what trained."""
    from dcae_ext.models import DCAE, IBQTokenizer, load_model_from_path

    cls = DCAE if config.model == "dcae" else IBQTokenizer
    if not config.init_weights:
        return cls.from_config(_preset_config(config))
    if not os.path.exists(config.init_weights):
        raise ConfigError("init_weights", f"{config.init_weights} does not exist")
    model = load_model_from_path(config.init_weights)
    if not isinstance(model, cls):
        raise ConfigError("init_weights", f"{config.init_weights} holds a {type(model).__name__}; "
                                          f"training {config.model} needs a {cls.__name__}")
    matched = preset_of(model.config, config.model)
    if config.preset is not None and _architecture(_preset_config(config), config.model) != \
            _architecture(model.config, config.model):
        holds = f"preset {matched}" if matched else "an architecture no preset has"
        raise ConfigError("preset", f"contradicts --init-weights {config.init_weights}, which holds a "
                                    f"{cls.__name__} of {holds}; leave out --preset (the weights give the "
                                    f"architecture), or start from weights of {config.preset}")
    if config.preset is None or not config.preset.endswith(".json"):
        config.preset = matched
    return model


def _preset_config(config: TrainConfig):
    """The model config `config.preset` names (a preset name, or for DC-AE a config.json file)."""
    from dcae_ext.models import preset_names
    from dcae_ext.models.dcae.config import DCAEConfig, get_config
    from dcae_ext.models.formats.training_run import is_run_config
    from dcae_ext.models.ibq.tokenizer import PRESETS as IBQ_PRESETS, get_ibq_config

    preset = config.preset
    if config.model == "dcae" and preset.endswith(".json"):
        if not os.path.isfile(preset):
            raise ConfigError("preset", f"{preset} does not exist")
        with open(preset) as stream:
            try:
                data = json.load(stream)
            except json.JSONDecodeError as error:
                raise ConfigError("preset", f"{preset} is not valid JSON: {error}") from None
        if isinstance(data, dict) and is_run_config(data):
            folder = os.path.dirname(preset) or "."
            raise ConfigError("preset", f"{preset} holds a training run's settings, not a model config: start from "
                                        f"that run's weights with --init-weights {folder} (or its model/ folder), "
                                        f"continue it with --out {folder} --resume, or reuse its settings with "
                                        f"--config {preset}")
        try:
            return DCAEConfig.from_dict(data)
        except (TypeError, ValueError) as error:
            raise ConfigError("preset", f"{preset} is not a DC-AE config.json ({error}); saved weights go to "
                                        "--init-weights") from None
    known = preset_names() if config.model == "dcae" else list(IBQ_PRESETS)
    if preset not in known:
        raise ConfigError("preset", f"unknown {config.model} preset {preset!r}; known: {', '.join(known)}"
                                    + ("" if config.model == "ibq" else ", or a DC-AE config.json"))
    return get_config(preset) if config.model == "dcae" else get_ibq_config(preset)


def _architecture(model_config, model: str) -> dict:
    """What decides the module tree and the meaning of its weights: the config without names (and for
    a DC-AE without the scaling factor and spellings, as `dcae.config._architecture`)."""
    from dcae_ext.models.dcae.config import _architecture as dcae_architecture

    if model == "dcae":
        values = dcae_architecture(model_config).to_dict()
    else:
        values = model_config.to_dict()
        values["backbone"] = {k: v for k, v in values["backbone"].items() if k != "name"}
    values.pop("name", None)
    return values


def preset_of(model_config, model: str) -> str | None:
    """The preset whose architecture `model_config` has (the same scaling factor first), or None."""
    from dcae_ext.models import preset_names
    from dcae_ext.models.dcae.config import get_config
    from dcae_ext.models.ibq.tokenizer import PRESETS as IBQ_PRESETS, get_ibq_config

    names = preset_names() if model == "dcae" else list(IBQ_PRESETS)
    configs = {name: get_config(name) if model == "dcae" else get_ibq_config(name) for name in names}
    target = _architecture(model_config, model)
    same = [name for name in names if _architecture(configs[name], model) == target]
    exact = [name for name in same if getattr(configs[name], "scaling_factor", None) ==
             getattr(model_config, "scaling_factor", None)]
    return (exact or same or [None])[0]


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
