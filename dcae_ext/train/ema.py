"""Exponential moving average of the generator's weights (a frozen copy of the model)."""
from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """shadow = decay * shadow + (1 - decay) * weights, for trainable parameters; other
    parameters and buffers (BatchNorm statistics, frozen layers) are copied."""

    def __init__(self, model: nn.Module, decay: float = 0.999):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"argument 'decay': expected 0 <= decay < 1, got {decay}")
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        source = dict(model.named_parameters())
        for name, shadow in self.model.named_parameters():
            live = source[name]
            if live.requires_grad:
                shadow.lerp_(live.detach().to(shadow.dtype), 1.0 - self.decay)
            else:
                shadow.copy_(live.detach())
        buffers = dict(model.named_buffers())
        for name, shadow in self.model.named_buffers():
            shadow.copy_(buffers[name])

    def state_dict(self) -> dict:
        return {"decay": self.decay, "model": self.model.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.decay = state["decay"]
        self.model.load_state_dict(state["model"])
