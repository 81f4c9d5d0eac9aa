"""The training half of `dcae-ext demo`: a tiny DC-AE and a tiny IBQ tokenizer trained on the
embedded sample images, each writing reconstruction grids, metrics and a loss curve.

Sized for a 2-core CPU (about 3-4 minutes per model): 64x64 crops, batch 8, LPIPS with the
cheap AlexNet trunk (random unless local weights are given; see dcae_ext.models.perceptual).
"""
from __future__ import annotations

import os
import time

import torch

from dcae_ext.train.config import make_config
from dcae_ext.train.trainer import Trainer


def demo_configs(out: str, dcae_steps: int = 300, ibq_steps: int = 300, resolution: int = 64,
                 batch_size: int = 8, device: str = "auto"):
    """The optimisation settings are the tiny presets' own (config.SHORT_RUN_RECIPES), as
    `dcae-ext train dcae|ibq --preset tiny` gets them; the demo sets only its size and outputs, and
    starts IBQ's discriminator halfway."""
    shared = dict(preset="tiny", resolution=resolution, batch_size=batch_size, device=device,
                  num_workers=0, log_every=10, checkpoint_every=0, seed=0)
    dcae = make_config("dcae", phase=1, steps=dcae_steps, out=os.path.join(out, "dcae"),
                       image_every=max(1, dcae_steps // 3), **shared)
    ibq = make_config("ibq", steps=ibq_steps, out=os.path.join(out, "ibq"), image_every=max(1, ibq_steps // 3),
                      disc_start=ibq_steps // 2, **shared)
    return dcae, ibq


def run_demo(out: str = "demo_out", dcae_steps: int = 300, ibq_steps: int = 300, resolution: int = 64,
             batch_size: int = 8, device: str = "auto", callback=None, threads: int | None = 1) -> dict:
    """Train both tiny models; returns {model: {"out", "metrics" (last logged row), "seconds"}}.

    The tiny presets' higher learning rates (2e-3 / 1e-3) suit a few hundred steps, not a real run; the tiny
    IBQ preset's small initial codebook is what keeps its codes in use at this budget.
    `threads` (default 1) bounds torch's CPU threads during the demo: these layers are too small
    to gain from a second thread, and on a busy 2-core machine two spinning OpenMP threads ran
    up to 8x slower than one. None leaves torch's setting alone."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    results = {}
    try:
        for config in demo_configs(out, dcae_steps, ibq_steps, resolution, batch_size, device):
            start = time.perf_counter()
            trainer = Trainer(config, callback=callback)
            metrics = trainer.train(overwrite=True)  # a rerun of the demo replaces its own outputs
            results[config.model] = {"out": config.out, "metrics": metrics,
                                     "seconds": time.perf_counter() - start}
    finally:
        torch.set_num_threads(previous)
    return results
