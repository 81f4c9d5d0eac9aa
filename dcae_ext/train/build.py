"""Model construction for the trainers and the trainable/frozen split of a phase."""
from __future__ import annotations

import fnmatch
import json

from torch import nn

from dcae_ext.train.config import TrainConfig


def build_model(config: TrainConfig) -> nn.Module:
    """The generator: a DC-AE (`preset` a preset name or a diffusers config.json path) or an IBQ
    tokenizer (an IBQ preset name); `init_weights` loads saved weights instead of random ones."""
    if config.model == "dcae":
        from dcae_ext.models.dcae import DCAE

        if config.init_weights:
            return DCAE.from_pretrained(config.init_weights)
        if config.preset.endswith(".json"):
            with open(config.preset) as stream:
                return DCAE.from_config(json.load(stream))
        return DCAE.from_config(config.preset)
    from dcae_ext.models.tokenizer import IBQTokenizer

    if config.init_weights:
        return IBQTokenizer.from_pretrained(config.init_weights)
    return IBQTokenizer(config.preset)


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
