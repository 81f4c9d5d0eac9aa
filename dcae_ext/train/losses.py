"""Generator and discriminator losses: L1/L2, LPIPS (dcae_ext.models.perceptual), hinge GAN, the
non-saturating generator loss of IBQ, LeCAM, the adaptive GAN weight of VQGAN."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def at_least_float32(t: torch.Tensor) -> torch.Tensor:
    """Losses are computed in float32, or float64 for float64 tensors."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def reconstruction_loss(reconstruction: torch.Tensor, target: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    difference = at_least_float32(reconstruction) - at_least_float32(target)
    if kind == "l1":
        return difference.abs().mean()
    if kind == "l2":
        return (difference ** 2).mean()
    raise ValueError(f"argument 'kind': expected 'l1' or 'l2', got {kind!r}")


def hinge_discriminator_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - at_least_float32(logits_real)).mean()
                  + F.relu(1.0 + at_least_float32(logits_fake)).mean())


def hinge_generator_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    return -at_least_float32(logits_fake).mean()


def non_saturating_generator_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """IBQ's official generator loss: each image's patch logits are averaged to one logit l, and the
    loss is the mean over images of -log sigmoid(l) = softplus(-l)."""
    per_image = at_least_float32(logits_fake).flatten(1).mean(dim=1)
    return F.softplus(-per_image).mean()


GENERATOR_LOSSES = {"hinge": hinge_generator_loss, "non_saturating": non_saturating_generator_loss}


class LeCAM(nn.Module):
    """LeCAM regulariser (Tseng et al. 2021): keeps D's outputs near the EMAs of the other side.
    The EMAs are buffers, so they are checkpointed with the discriminator state."""

    def __init__(self, decay: float = 0.999):
        super().__init__()
        self.decay = decay
        self.register_buffer("ema_real", torch.zeros(()))
        self.register_buffer("ema_fake", torch.zeros(()))

    @torch.no_grad()
    def update(self, mean_real: torch.Tensor, mean_fake: torch.Tensor) -> None:
        self.ema_real.mul_(self.decay).add_((1 - self.decay) * mean_real.to(self.ema_real.dtype))
        self.ema_fake.mul_(self.decay).add_((1 - self.decay) * mean_fake.to(self.ema_fake.dtype))

    def forward(self, logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
        return (F.relu(at_least_float32(logits_real) - self.ema_fake).pow(2).mean()
                + F.relu(self.ema_real - at_least_float32(logits_fake)).pow(2).mean())


def adaptive_gan_weight(reconstruction_loss: torch.Tensor, gan_loss: torch.Tensor,
                        last_layer: torch.Tensor, scale: float) -> torch.Tensor:
    """VQGAN's balance: scale * |grad rec| / |grad gan| at the decoder's last weight, clamped."""
    rec_grad = torch.autograd.grad(reconstruction_loss, last_layer, retain_graph=True)[0]
    gan_grad = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)[0]
    weight = at_least_float32(rec_grad).norm() / (at_least_float32(gan_grad).norm() + 1e-4)
    return (weight.clamp(0.0, 1e4) * scale).detach()
