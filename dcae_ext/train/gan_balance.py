"""VQGAN's adaptive GAN weight over a whole step of several micro-batches (or ranks).

The weight is `scale * |grad_W L_nll| / (|grad_W L_G| + 1e-4)` at the decoder's last weight W, with the
losses of the step's whole batch. A weight computed on each micro-batch (or rank) apart is another
number for each, and their mixture is not the step of one batch k times bigger. Here each micro-batch
adds its share of the two gradients at W and its GAN loss's gradient on the trainable parameters (kept
aside, one buffer of their size); once all are in, the weight is computed from the step's (and every
rank's) mean gradients and the GAN gradients are added into `.grad` with it.
"""
from __future__ import annotations

import torch

from dcae_ext.train import distributed
from dcae_ext.train.losses import at_least_float32


class StepGanWeight:
    def __init__(self, last_layer: torch.Tensor, params: list, scale: float, count: int, scaler,
                 context: distributed.DistContext):
        self.last_layer, self.params, self.scale, self.count = last_layer, params, scale, count
        self.scaler, self.context = scaler, context
        self.rec_grad = self.gan_grad = None
        self.gan_param_grads = [None] * len(params)

    def add(self, nll: torch.Tensor, gan: torch.Tensor) -> None:
        """One micro-batch: its reconstruction (L1 + LPIPS) and generator GAN losses, graphs kept."""
        rec = at_least_float32(torch.autograd.grad(nll, self.last_layer, retain_graph=True)[0]) / self.count
        gan_w = at_least_float32(torch.autograd.grad(gan, self.last_layer, retain_graph=True)[0]) / self.count
        self.rec_grad = rec if self.rec_grad is None else self.rec_grad + rec
        self.gan_grad = gan_w if self.gan_grad is None else self.gan_grad + gan_w
        # scaled as the backward of the other terms is, so that the scaler's unscale_ treats both alike
        grads = torch.autograd.grad(self.scaler.scale(gan / self.count), self.params, retain_graph=True,
                                    allow_unused=True)
        for index, grad in enumerate(grads):
            if grad is not None:
                kept = self.gan_param_grads[index]
                self.gan_param_grads[index] = grad if kept is None else kept + grad

    def apply(self) -> torch.Tensor:
        """Add weight * (GAN gradients) into the parameters' .grad; returns the weight (detached)."""
        rec = distributed.all_reduce_mean(self.rec_grad, self.context)
        gan = distributed.all_reduce_mean(self.gan_grad, self.context)
        weight = (rec.norm() / (gan.norm() + 1e-4)).clamp(0.0, 1e4) * self.scale
        for parameter, grad in zip(self.params, self.gan_param_grads):
            if grad is None:
                continue
            grad = distributed.all_reduce_mean(grad, self.context) * weight.to(grad.dtype)
            parameter.grad = grad if parameter.grad is None else parameter.grad.add_(grad)
        return weight.detach()
