"""The tiny IBQ tokenizer keeps its codebook in use on the embedded images (docs/ibq_training.md).

A smaller budget than the demo's (32x32 crops, 200 steps, no LPIPS or GAN), with the demo's lr and
the IBQ training defaults; codebook usage is counted over the 16 embedded images at 64 px (4096
tokens) by the evaluation code `dcae-ext eval` runs.

Measured at this budget (seeds 0 and 1): the tiny preset (codebook N(0, 0.1^2)) used 0.77 / 0.75 of
the codebook, perplexity 205 / 187; the same model with the official N(0, 1) codebook collapsed to
0.027 / 0.10, perplexity 4.6 / 16. The thresholds sit between: 1.7x below the healthy runs, 4-5x
above the collapsed ones.
"""
import pytest
from torch.utils.data import DataLoader

from dcae_ext.eval.evaluate import evaluate
from dcae_ext.eval.images import EvalImages
from dcae_ext.train.config import make_config
from dcae_ext.train.data import embedded_image_paths
from dcae_ext.train.trainer import Trainer

MIN_USAGE = 0.45
MIN_PERPLEXITY = 80.0


@pytest.mark.slow
def test_tiny_ibq_uses_its_codebook_over_the_embedded_images(tmp_path):
    # the constant lr of the measurements above (the tiny preset's own schedule is cosine since)
    config = make_config("ibq", preset="tiny", steps=200, batch_size=8, resolution=32, lr=1e-3, warmup_steps=20,
                         lr_schedule="constant", seed=0, device="cpu", num_workers=0, lpips_weight=0.0, gan_weight=0.0, ema_decay=0.0,
                         log_every=200, checkpoint_every=0, image_every=0, out=str(tmp_path))
    trainer = Trainer(config)
    trainer.train()
    loader = DataLoader(EvalImages(embedded_image_paths(), 64), batch_size=8)
    codes = evaluate(trainer.model, loader, num_codes=512, keep=0)["metrics"]["codebook"]
    assert codes["num_indices"] == len(embedded_image_paths()) * 16 * 16
    assert codes["usage"] >= MIN_USAGE and codes["perplexity"] >= MIN_PERPLEXITY, codes
