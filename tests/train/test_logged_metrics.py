"""What metrics.jsonl says: each loss term is the term itself (before its weight), `loss` the weighted
total that was optimised, `lr` the learning rate the step used."""
import json
import os

import pytest

from dcae_ext.train.trainer import Trainer

from train_helpers import SmoothImages


def _rows(config):
    return [json.loads(line) for line in open(os.path.join(config.out, "metrics.jsonl"))]


@pytest.mark.parametrize("reconstruction", ["l1", "l2"])
def test_the_pixel_loss_is_logged_before_its_weight(reconstruction, micro_dcae, quick_config, tmp_path):
    """As loss_lpips, loss_quantizer and loss_gan: a reconstruction_weight of 3 triples its share of
    `loss`, not the logged pixel loss (lr 0: both runs see the same weights and images)."""
    rows = {}
    for weight in (1.0, 3.0):
        config = quick_config(steps=2, lr=0.0, reconstruction=reconstruction, reconstruction_weight=weight,
                              out=str(tmp_path / f"w{weight}"))
        Trainer(config, model=micro_dcae(), dataset=SmoothImages()).train()
        rows[weight] = _rows(config)
    key = f"loss_{reconstruction}"
    for plain, weighted in zip(rows[1.0], rows[3.0]):
        assert weighted[key] == pytest.approx(plain[key], rel=1e-6)
        assert weighted["loss"] == pytest.approx(3.0 * plain[key], rel=1e-6)


def test_the_logged_lr_is_the_one_the_step_used(micro_dcae, quick_config):
    config = quick_config(steps=5, lr=1e-3, warmup_steps=4, lr_schedule="constant")
    Trainer(config, model=micro_dcae(), dataset=SmoothImages()).train()
    assert [row["lr"] for row in _rows(config)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3])
