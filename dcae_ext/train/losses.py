"""Generator and discriminator losses: L1/L2, LPIPS (dcae_ext.models.perceptual), hinge GAN, LeCAM,
the adaptive GAN weight of VQGAN."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def reconstruction_loss(reconstruction: torch.Tensor, target: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    if kind == "l1":
        return (reconstruction.float() - target.float()).abs().mean()
    if kind == "l2":
        return ((reconstruction.float() - target.float()) ** 2).mean()
    raise ValueError(f"argument 'kind': expected 'l1' or 'l2', got {kind!r}")


def hinge_discriminator_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - logits_real.float()).mean() + F.relu(1.0 + logits_fake.float()).mean())


def hinge_generator_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    return -logits_fake.float().mean()


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
        self.ema_real.mul_(self.decay).add_((1 - self.decay) * mean_real.float())
        self.ema_fake.mul_(self.decay).add_((1 - self.decay) * mean_fake.float())

    def forward(self, logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
        return (F.relu(logits_real.float() - self.ema_fake).pow(2).mean()
                + F.relu(self.ema_real - logits_fake.float()).pow(2).mean())


def adaptive_gan_weight(reconstruction_loss: torch.Tensor, gan_loss: torch.Tensor,
                        last_layer: torch.Tensor, scale: float) -> torch.Tensor:
    """VQGAN's balance: scale * |grad rec| / |grad gan| at the decoder's last weight, clamped."""
    rec_grad = torch.autograd.grad(reconstruction_loss, last_layer, retain_graph=True)[0]
    gan_grad = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)[0]
    weight = rec_grad.float().norm() / (gan_grad.float().norm() + 1e-4)
    return (weight.clamp(0.0, 1e4) * scale).detach()
