"""PatchGAN discriminator (pix2pix NLayerDiscriminator, as VQGAN and SEED-Voken use it)."""
from __future__ import annotations

from torch import nn


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":  # batch-independent: the same result however the batch is split
        return nn.GroupNorm(32 if channels % 32 == 0 else 1, channels)
    raise ValueError(f"argument 'norm': expected 'batch' or 'group', got {kind!r}")


class PatchDiscriminator(nn.Module):
    """x (B, C, H, W) -> logits (B, 1, H', W'), one per overlapping patch.

    4x4 convolutions: `num_layers` stride-2 ones (channels x1, x2, x4, ... capped at x8), one
    stride-1 one, then a stride-1 projection to one channel. Weights N(0, 0.02), norm scales N(1, 0.02).
    """

    def __init__(self, in_channels: int = 3, channels: int = 64, num_layers: int = 3, norm: str = "batch"):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"argument 'num_layers': expected >= 1, got {num_layers}")
        layers = [nn.Conv2d(in_channels, channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        width = channels
        for layer in range(1, num_layers + 1):
            out = channels * min(2 ** layer, 8)
            stride = 2 if layer < num_layers else 1
            layers += [nn.Conv2d(width, out, 4, stride=stride, padding=1, bias=False),
                       _norm(norm, out), nn.LeakyReLU(0.2, True)]
            width = out
        layers.append(nn.Conv2d(width, 1, 4, stride=1, padding=1))
        self.main = nn.Sequential(*layers)
        self.apply(_init)

    def forward(self, x):
        return self.main(x)


def _init(module: nn.Module) -> None:
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)
