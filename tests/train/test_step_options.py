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
