"""Exponential moving average of the generator's weights (a frozen copy of the model)."""
from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """shadow = d * shadow + (1 - d) * weights, for trainable parameters; other parameters and
    buffers (BatchNorm statistics, frozen layers) are copied.

    The decay warms up: d = min(decay, (1 + n) / (10 + n)) at the n-th update (n = 1, 2, ...), as the
    EMA of taming-transformers / latent-diffusion (LitEma, which IBQ's official code uses). With a
    fixed 0.999 the weights a 300-step run exports would still be 0.999^300 = 74 % the initial ones;
    with the warm-up the EMA follows the live weights closely at first and averages more as the run
    grows (d reaches 0.99 after ~900 updates, 0.999 after ~9000). `warmup=False`: d = decay throughout."""

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"argument 'decay': expected 0 <= decay < 1, got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.updates = 0
        self.model = copy.deepcopy(model).eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)

    def current_decay(self) -> float:
        """The decay the next update uses."""
        if not self.warmup:
            return self.decay
        n = self.updates + 1
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        weight = 1.0 - self.current_decay()
        source = dict(model.named_parameters())
        for name, shadow in self.model.named_parameters():
            live = source[name]
            if live.requires_grad:
                shadow.lerp_(live.detach().to(shadow.dtype), weight)
            else:
                shadow.copy_(live.detach())
        buffers = dict(model.named_buffers())
        for name, shadow in self.model.named_buffers():
            shadow.copy_(buffers[name])
        self.updates += 1

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "model": self.model.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.decay = state["decay"]
        # checkpoints written before the warm-up existed: their EMA ran at the full decay, and goes on so
        self.updates = state.get("updates", 10**9)
        self.model.load_state_dict(state["model"])
