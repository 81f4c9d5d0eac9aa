"""Gradient accumulation, activation checkpointing and mixed precision change how a step is
computed, not what it computes."""
import pytest
import torch

from dcae_ext.train.trainer import Trainer

from train_helpers import SmoothImages


def _train(config, model):
    trainer = Trainer(config, model=model, dataset=SmoothImages())
    metrics = trainer.train()
    return trainer, metrics


def test_grad_accumulation_equals_the_bigger_batch(micro_dcae, quick_config, tmp_path):
    big, _ = _train(quick_config(steps=3, batch_size=4, lr=1e-2, out=str(tmp_path / "big")), micro_dcae())
    accumulated, _ = _train(quick_config(steps=3, batch_size=2, grad_accum=2, lr=1e-2, out=str(tmp_path / "acc")),
                            micro_dcae())
    for key, value in big.model.state_dict().items():
        torch.testing.assert_close(accumulated.model.state_dict()[key], value, rtol=1e-4, atol=1e-5, msg=key)


def test_activation_checkpointing_gives_the_same_steps(micro_dcae, quick_config, tmp_path):
    plain, _ = _train(quick_config(steps=2, lr=1e-2, out=str(tmp_path / "plain")), micro_dcae())
    checkpointed, _ = _train(quick_config(steps=2, lr=1e-2, grad_checkpointing=True, out=str(tmp_path / "ckpt")),
                             micro_dcae())
    assert checkpointed.model.decoder.gradient_checkpointing
    for key, value in plain.model.state_dict().items():
        torch.testing.assert_close(checkpointed.model.state_dict()[key], value, rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_steps_are_finite(precision, micro_ibq, quick_config):
    trainer, metrics = _train(quick_config("ibq", steps=3, precision=precision, disc_start=1), micro_ibq())
    assert trainer.autocast_dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    assert trainer.scaler.is_enabled() == (precision == "fp16")
    assert all(torch.isfinite(torch.tensor(v)) for k, v in metrics.items() if k.startswith("loss"))
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())


@pytest.mark.parametrize("phase", [1, 3])
def test_grad_accumulation_with_the_adaptive_gan_weight_equals_the_bigger_batch(phase, micro_dcae, quick_config,
                                                                                 tmp_path):
    """VQGAN's weight |grad_W L_nll| / |grad_W L_G| is one number for the step's whole batch, not a mixture
    of one per micro-batch (group-norm discriminator: a BatchNorm one normalises each micro-batch apart)."""
    runs = {}
    for name, batch, accum in (("big", 4, 1), ("accumulated", 2, 2)):
        config = quick_config(phase=phase, steps=2, batch_size=batch, grad_accum=accum, lr=1e-2, gan_weight=0.5,
                              adaptive_gan_weight=True, disc_start=0, disc_norm="group", lecam_weight=0.0,
                              out=str(tmp_path / name))
        runs[name] = _train(config, micro_dcae())
    (big, big_metrics), (accumulated, accumulated_metrics) = runs["big"], runs["accumulated"]
    assert accumulated_metrics["gan_weight"] == pytest.approx(big_metrics["gan_weight"], rel=1e-4)
    assert accumulated_metrics["loss"] == pytest.approx(big_metrics["loss"], rel=1e-5)
    for module in ("model", "discriminator"):
        expected, actual = getattr(big, module).state_dict(), getattr(accumulated, module).state_dict()
        for key, value in expected.items():
            torch.testing.assert_close(actual[key], value, rtol=1e-4, atol=1e-5, msg=f"{module}.{key}")


@pytest.mark.parametrize("disc_first", [False, True])
def test_grad_accumulation_with_lecam_equals_the_bigger_batch(disc_first, micro_dcae, quick_config, tmp_path):
    """LeCAM's EMAs follow the step's mean logits once a step (not once per micro-batch, which would shorten
    their memory k-fold and regularise each micro-batch towards another EMA)."""
    runs = {}
    for name, batch, accum in (("big", 4, 1), ("accumulated", 2, 2)):
        config = quick_config(steps=3, batch_size=batch, grad_accum=accum, lr=1e-2, gan_weight=0.1, lecam_weight=1.0,
                              disc_start=0, disc_norm="group", disc_first=disc_first, out=str(tmp_path / name))
        runs[name] = _train(config, micro_dcae())
    (big, big_metrics), (accumulated, accumulated_metrics) = runs["big"], runs["accumulated"]
    assert accumulated_metrics["loss_lecam"] == pytest.approx(big_metrics["loss_lecam"], rel=1e-4)
    for module in ("model", "discriminator"):
        expected, actual = getattr(big, module).state_dict(), getattr(accumulated, module).state_dict()
        for key, value in expected.items():
            torch.testing.assert_close(actual[key], value, rtol=1e-4, atol=1e-6, msg=f"{module}.{key}")


def test_grad_accumulation_logs_the_code_statistics_of_the_whole_batch(micro_ibq, quick_config, tmp_path):
    """codebook_usage and perplexity of a step are those of all its images, not a mean over micro-batches
    (which uses fewer codes each); lr 0: both runs quantize with the same weights."""
    rows = {}
    for name, batch, accum in (("big", 4, 1), ("accumulated", 1, 4)):
        config = quick_config("ibq", steps=2, batch_size=batch, grad_accum=accum, lr=0.0, gan_weight=0.0,
                              out=str(tmp_path / name))
        rows[name] = _train(config, micro_ibq(num_codes=256))[1]
    for key in ("codebook_usage", "perplexity"):
        assert rows["accumulated"][key] == pytest.approx(rows["big"][key], rel=1e-6), key
