"""What every model's forward returns, so that trainers and evaluation treat all models alike."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class AutoencoderOutput:
    """reconstruction: like the input.
    losses: auxiliary training losses of the model itself (scalars with gradient; empty for a plain
        autoencoder), added to the reconstruction loss by the trainer.
    stats: detached scalars worth logging (loss terms, codebook usage, ...).
    indices: the discrete codes (B, h, w) of a tokenizer, else None."""
    reconstruction: torch.Tensor
    losses: dict[str, torch.Tensor] = field(default_factory=dict)
    stats: dict[str, torch.Tensor] = field(default_factory=dict)
    indices: torch.Tensor | None = None
