"""The CUDA path of the trainers (bf16 autocast, fp16 + GradScaler, pinned-memory loading, the
quantizer under autocast: float32 tensors, autocast-dtype GEMMs, exact index). Skipped without a GPU."""
import pytest
import torch

from dcae_ext.train.trainer import Trainer

pytestmark = pytest.mark.cuda


@pytest.mark.parametrize("model,phase,precision", [("dcae", 1, "bf16"), ("dcae", 3, "bf16"),
                                                   ("ibq", 1, "bf16"), ("ibq", 1, "fp16")])
def test_trainer_runs_on_cuda(model, phase, precision, quick_config):
    overrides = dict(disc_start=2) if model == "ibq" else {}
    config = quick_config(model, phase=phase, preset="tiny", steps=4, batch_size=4, resolution=32,
                          device="cuda", precision=precision, num_workers=1, lpips_weight=1.0, lpips_net="alex",
                          **overrides)
    trainer = Trainer(config)
    metrics = trainer.train()
    assert trainer.device.type == "cuda"
    # fp16's GradScaler starts at scale 2**16 and skips the steps whose gradients overflow while
    # it searches down for a scale that fits; bf16 needs no scaler and must skip nothing.
    assert trainer.skipped_steps <= (2 if precision == "fp16" else 0) < config.steps
    assert all(torch.isfinite(torch.tensor(v)) for k, v in metrics.items() if k.startswith("loss"))
    if model == "ibq":
        assert 0 < metrics["codebook_usage"] <= 1
