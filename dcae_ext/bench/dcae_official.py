"""The official DC-AE modules our models race, on the same weights and dtype.

diffusers' `AutoencoderDC` holds the official modules of every DC-AE that has a diffusers config
(in / mix / sana 1.0-1.1, DC-AE-Lite, f32c128-1.1). DC-AE 1.5 has no diffusers class, but its
modules are AutoencoderDC's (ResBlocks, no shortcut on the latent side) except the two latent
convolutions, which DC-Gen runs with a slice of their weights (AdaptiveOutputConvLayer: the first c
filters; AdaptiveInputConvLayer: the weights of the first c input channels). `official_model` puts
those two around diffusers' convolutions, so the reference computes DC-AE 1.5 as DC-Gen does.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class AdaptiveOutputConv(nn.Module):
    """DC-Gen's AdaptiveOutputConvLayer around a conv: `channels` (set per call) output channels."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv, self.channels = conv, conv.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.channels
        return F.conv2d(x, self.conv.weight[:c], self.conv.bias[:c], padding=self.conv.padding)


class AdaptiveInputConv(nn.Module):
    """DC-Gen's AdaptiveInputConvLayer around a conv: a latent of any channel prefix."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = conv

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return F.conv2d(z, self.conv.weight[:, :z.shape[1]], self.conv.bias, padding=self.conv.padding)


def official_model(ours: nn.Module) -> nn.Module:
    """diffusers' AutoencoderDC with `ours`'s config and weights (eval, float32, on the CPU); for a
    structured latent, with DC-Gen's adaptive latent convolutions."""
    from diffusers import AutoencoderDC

    config = ours.config.replace(structured_latent=False)
    theirs = AutoencoderDC(**{k: v for k, v in config.to_diffusers_dict().items() if not k.startswith("_")})
    theirs.load_state_dict(ours.state_dict())
    if ours.config.structured_latent:
        theirs.encoder.conv_out = AdaptiveOutputConv(theirs.encoder.conv_out)
        theirs.decoder.conv_in = AdaptiveInputConv(theirs.decoder.conv_in)
    return theirs.eval()


def official_encode(theirs: nn.Module, x: torch.Tensor, latent_channels: int | None = None) -> torch.Tensor:
    if latent_channels is not None:
        theirs.encoder.conv_out.channels = latent_channels
    try:
        return theirs.encode(x).latent
    finally:
        if latent_channels is not None:
            theirs.encoder.conv_out.channels = theirs.encoder.conv_out.conv.out_channels


def official_decode(theirs: nn.Module, z: torch.Tensor) -> torch.Tensor:
    return theirs.decode(z).sample
