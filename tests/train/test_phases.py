"""Each DC-AE phase trains exactly its parameter set; everything else (weights and BatchNorm
statistics) stays bit-identical."""
import pytest
import torch

from dcae_ext.train.build import apply_trainable, matches
from dcae_ext.train.config import PHASE_TRAINABLE
from dcae_ext.train.trainer import Trainer

from train_helpers import SmoothImages


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("phase", [1, 2, 3])
def test_phase_changes_only_its_parameters(phase, micro_dcae, quick_config):
    model = micro_dcae(norm="batch_norm")  # BatchNorm: frozen statistics must not move either
    before = _snapshot(model)
    config = quick_config(phase=phase, steps=3, lr=1e-2)
    trainer = Trainer(config, model=model, dataset=SmoothImages())
    trainer.train()
    after = model.state_dict()
    patterns = PHASE_TRAINABLE[phase]
    trainable = {n for n, _ in model.named_parameters() if matches(n, patterns)}
    assert trainable == set(trainer.trainable_names)
    if phase > 1:
        assert 0 < len(trainable) <= 2 * len(patterns)  # weight + bias of the named layers
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    moved_frozen = sorted(k for k in changed if k not in trainable
                          and not (phase == 1 and k.endswith(("running_mean", "running_var", "num_batches_tracked"))))
    assert moved_frozen == []
    assert trainable <= changed  # every trainable tensor moved (lr 1e-2, 3 steps)


def test_phase_3_runs_the_discriminator(micro_dcae, quick_config):
    config = quick_config(phase=3, steps=2)
    trainer = Trainer(config, model=micro_dcae(), dataset=SmoothImages())
    metrics = trainer.train()
    assert config.gan_weight == 0.5 and config.disc_betas == (0.5, 0.9)
    assert "loss_disc" in metrics and "loss_gan" in metrics


@pytest.mark.parametrize("disc_lr,expected", [(None, 3e-4), (0.0, 0.0), (1e-5, 1e-5)])
def test_discriminator_learning_rate_defaults_to_lr_and_zero_means_zero(disc_lr, expected, micro_dcae, quick_config):
    config = quick_config(phase=3, steps=2, lr=3e-4, disc_lr=disc_lr)
    trainer = Trainer(config, model=micro_dcae(), dataset=SmoothImages())
    assert trainer.disc_optimizer.param_groups[0]["initial_lr"] == expected


def test_trainable_patterns_are_configurable_and_typos_fail(micro_dcae):
    model = micro_dcae()
    names = apply_trainable(model, ["decoder.*"], frozen=["decoder.conv_out.*"])
    assert names and all(n.startswith("decoder.") and not n.startswith("decoder.conv_out") for n in names)
    with pytest.raises(ValueError, match="trainable"):
        apply_trainable(model, ["decodr.conv_out.*"])
