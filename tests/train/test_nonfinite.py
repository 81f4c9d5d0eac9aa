"""A step whose loss is NaN/inf changes nothing, is counted, and training goes on."""
import math

import pytest
import torch

from dcae_ext.train.trainer import Trainer

from train_helpers import SmoothImages


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_nonfinite_step_is_skipped_and_counted(bad, micro_dcae, quick_config):
    trainer = Trainer(quick_config(steps=5, ema_decay=0.5, lr=1e-2), model=micro_dcae(), dataset=SmoothImages())
    original = trainer.generator_losses

    def poisoned(images):
        total, reconstruction, terms = original(images)
        if trainer.step == 2:  # the third step
            total = total * bad
        return total, reconstruction, terms

    trainer.generator_losses = poisoned
    snapshots = {}

    def record(event, payload):
        if event == "step":
            snapshots[payload["step"]] = (
                {k: v.clone() for k, v in trainer.model.state_dict().items()},
                {k: v.clone() for k, v in trainer.ema.model.state_dict().items()},
                payload)

    trainer.callback = record
    trainer.train()
    before, ema_before, _ = snapshots[2]
    after, ema_after, metrics = snapshots[3]
    assert metrics["skipped_steps"] == 1 and trainer.skipped_steps == 1
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(torch.equal(ema_before[k], ema_after[k]) for k in ema_before)
    final = trainer.model.state_dict()
    assert any(not torch.equal(after[k], final[k]) for k in after)  # later steps train again
    assert all(torch.isfinite(v).all() for v in final.values() if v.is_floating_point())


def test_a_run_whose_loss_stays_nonfinite_stops_and_keeps_the_last_good_checkpoint(micro_dcae, quick_config):
    """From the third step on every loss is NaN: after max_nonfinite_steps (3) of them in a row the run
    stops with TrainingDiverged; the checkpoint due at step 4 is not written (it would resume into the
    same NaN), so step 2's is kept, and no final weights are exported."""
    import os

    from dcae_ext.train.checkpoint import load_checkpoint
    from dcae_ext.train.trainer import TrainingDiverged

    config = quick_config(steps=20, max_nonfinite_steps=3, checkpoint_every=2)
    trainer = Trainer(config, model=micro_dcae(), dataset=SmoothImages())
    original = trainer.generator_losses

    def poisoned(images):
        total, reconstruction, terms = original(images)
        return (total * math.nan if trainer.step >= 2 else total), reconstruction, terms

    trainer.generator_losses = poisoned
    with pytest.raises(TrainingDiverged, match=r"not finite for 3 steps in a row \(steps 3-5\).*step 2 is kept"):
        trainer.train()
    assert trainer.step == 5 and load_checkpoint(trainer.checkpoint_path)["step"] == 2
    assert not os.path.exists(os.path.join(config.out, "model"))
