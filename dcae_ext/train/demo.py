"""The training half of `dcae-ext demo`: a tiny DC-AE and a tiny IBQ tokenizer trained on the
embedded sample images, each writing reconstruction grids, metrics and a loss curve.

Sized for a 2-core CPU (about 3-4 minutes per model): 64x64 crops, batch 8, LPIPS with the
cheap AlexNet trunk (random unless local weights are given; see losses.PerceptualLoss).
"""
from __future__ import annotations

import os

from dcae_ext.train.config import make_config
from dcae_ext.train.trainer import Trainer


def demo_configs(out: str, dcae_steps: int = 300, ibq_steps: int = 300, resolution: int = 64,
                 batch_size: int = 8, device: str = "auto"):
    shared = dict(preset="tiny", resolution=resolution, batch_size=batch_size, device=device, lpips_net="alex",
                  num_workers=0, log_every=10, checkpoint_every=0, warmup_steps=20, seed=0)
    dcae = make_config("dcae", phase=1, steps=dcae_steps, out=os.path.join(out, "dcae"),
                       image_every=max(1, dcae_steps // 3), lr=2e-3, weight_decay=0.0, **shared)
    ibq = make_config("ibq", steps=ibq_steps, out=os.path.join(out, "ibq"), image_every=max(1, ibq_steps // 3),
                      lr=1e-3, disc_start=ibq_steps // 2, disc_channels=32, **shared)
    return dcae, ibq


def run_demo(out: str = "demo_out", dcae_steps: int = 300, ibq_steps: int = 300, resolution: int = 64,
             batch_size: int = 8, device: str = "auto", callback=None) -> dict:
    """Train both tiny models; returns {model: {"out", "metrics" (last logged row)}}.
    The demo's higher learning rates (2e-3 / 1e-3) suit a few hundred steps, not a real run."""
    results = {}
    for config in demo_configs(out, dcae_steps, ibq_steps, resolution, batch_size, device):
        trainer = Trainer(config, callback=callback)
        metrics = trainer.train()
        results[config.model] = {"out": config.out, "metrics": metrics}
    return results
