"""Checkpoints: atomic writes and an exact resume (40 steps + resume to 50 == 50 steps)."""
import json
import os

import pytest
import torch

from dcae_ext.train.checkpoint import atomic_save, load_checkpoint
from dcae_ext.train.trainer import Trainer

from train_helpers import SmoothImages


def _state(trainer):
    state = {f"model.{k}": v for k, v in trainer.model.state_dict().items()}
    state.update({f"ema.{k}": v for k, v in trainer.ema.model.state_dict().items()})
    if trainer.discriminator is not None:
        state.update({f"disc.{k}": v for k, v in trainer.discriminator.state_dict().items()})
    return state


def test_resume_is_exact(micro_ibq, quick_config, tmp_path):
    """IBQ with every piece of state: EMA, discriminator + LeCAM buffers, both optimisers and
    schedulers (cosine over the full 50 steps), data position, a discriminator starting mid-run."""
    def config(out):
        return quick_config("ibq", steps=50, out=str(out), disc_start=20, lecam_weight=0.05, warmup_steps=5,
                            ema_decay=0.9, checkpoint_every=15, log_every=5)

    straight = Trainer(config(tmp_path / "a"), model=micro_ibq(), dataset=SmoothImages(count=12))
    straight.train()

    first = Trainer(config(tmp_path / "b"), model=micro_ibq(), dataset=SmoothImages(count=12))
    first.train(until=40)
    assert first.step == 40 and load_checkpoint(first.checkpoint_path)["step"] == 40
    del first
    torch.manual_seed(1234)  # a fresh process: nothing carried over but the checkpoint
    resumed = Trainer(config(tmp_path / "b"), model=micro_ibq(), dataset=SmoothImages(count=12))
    resumed.train(resume=True)
    assert resumed.step == 50

    expected, actual = _state(straight), _state(resumed)
    assert expected.keys() == actual.keys()
    different = [k for k in expected if not torch.equal(expected[k], actual[k])]
    assert different == []
    lines_a = open(tmp_path / "a" / "metrics.jsonl").read().count("\n")
    lines_b = open(tmp_path / "b" / "metrics.jsonl").read().count("\n")
    assert lines_a == lines_b  # rows past the checkpoint were dropped on resume, none repeated


def test_atomic_save_keeps_previous_checkpoint_when_write_fails(tmp_path):
    path = str(tmp_path / "checkpoint.pt")
    atomic_save({"step": 1, "weights": torch.arange(4.0)}, path)

    def dies_midway(obj, stream):
        stream.write(b"PK\x03\x04 partial bytes of a bigger file")
        raise KeyboardInterrupt("killed during the write")

    with pytest.raises(KeyboardInterrupt):
        atomic_save({"step": 2, "weights": torch.zeros(4)}, path, save=dies_midway)
    state = load_checkpoint(path)
    assert state["step"] == 1 and torch.equal(state["weights"], torch.arange(4.0))
    assert os.listdir(tmp_path) == ["checkpoint.pt"]  # the temporary file is gone


def test_resume_without_checkpoint_is_an_error_and_starts_nothing(micro_dcae, quick_config):
    config = quick_config(steps=1)
    trainer = Trainer(config, model=micro_dcae(), dataset=SmoothImages())
    with pytest.raises(ValueError, match=f"resume=True: {config.out} holds no run to resume"):
        trainer.train(resume=True)
    assert trainer.step == 0 and not os.path.exists(os.path.join(config.out, "config.json"))
    trainer.train(until=1)
    # its checkpoint gone: as a run killed before its first checkpoint leaves the folder
    os.unlink(trainer.checkpoint_path)
    with pytest.raises(ValueError, match="saved no checkpoint.pt .*start it afresh with overwrite=True"):
        Trainer(config, model=micro_dcae(), dataset=SmoothImages()).train(resume=True)


def test_resume_with_a_model_of_other_settings_is_an_error(micro_ibq, quick_config, tmp_path):
    """The checkpoint records the model config that trained: a resume whose model differs in a setting
    that leaves the weights' names and shapes alone (the quantizer's loss settings) is refused, not
    continued with the other settings."""
    config = quick_config("ibq", steps=2, out=str(tmp_path / "run"), gan_weight=0.0)
    Trainer(config, model=micro_ibq(), dataset=SmoothImages(count=4)).train(until=1)
    other = Trainer(quick_config("ibq", steps=2, out=str(tmp_path / "run"), gan_weight=0.0),
                    model=micro_ibq(entropy_weight=0.2), dataset=SmoothImages(count=4))
    with pytest.raises(ValueError, match=r"another model.*entropy_weight 0\.05 -> 0\.2"):
        other.train(resume=True)
    assert load_checkpoint(other.checkpoint_path)["step"] == 1  # nothing trained, nothing written
    same = Trainer(quick_config("ibq", steps=2, out=str(tmp_path / "run"), gan_weight=0.0),
                   model=micro_ibq(), dataset=SmoothImages(count=4))
    same.train(resume=True)
    assert same.step == 2


def test_settings_a_resume_changes_take_effect(micro_dcae, quick_config, tmp_path):
    """The optimisers' lr, betas and weight decay and the EMA's decay come from the resumed run's settings,
    not from the checkpoint's optimiser state (which the resume names as changed, so they must apply)."""
    def config(**overrides):
        values = dict(phase=3, steps=4, out=str(tmp_path / "run"), lr=1e-3, lr_schedule="constant",
                      weight_decay=0.1, ema_decay=0.9)
        values.update(overrides)
        return quick_config(**values)

    Trainer(config(), model=micro_dcae(), dataset=SmoothImages()).train(until=2)
    notes = []
    resumed = Trainer(config(lr=5e-3, betas=(0.8, 0.99), weight_decay=0.0, disc_lr=1e-4, disc_betas=(0.0, 0.95),
                             ema_decay=0.5),
                      model=micro_dcae(), dataset=SmoothImages(), callback=lambda event, payload: notes.append(payload))
    resumed.train(resume=True)
    assert any("lr 0.001 -> 0.005" in str(note.get("message")) for note in notes)
    group, disc_group = resumed.optimizer.param_groups[0], resumed.disc_optimizer.param_groups[0]
    assert (group["lr"], group["betas"], group["weight_decay"]) == (5e-3, (0.8, 0.99), 0.0)
    assert (disc_group["lr"], disc_group["betas"]) == (1e-4, (0.0, 0.95))
    assert resumed.ema.decay == 0.5
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert [row["lr"] for row in rows] == [1e-3, 1e-3, 5e-3, 5e-3]


class _RecordingImages(SmoothImages):
    """SmoothImages that records the sample keys the training loop asks for (num_workers=0)."""

    def __init__(self):
        super().__init__(count=5)
        self.keys = []

    def __getitem__(self, key):
        self.keys.append(int(key))
        return super().__getitem__(key)


@pytest.mark.parametrize("batch_size,grad_accum", [(2, 2), (4, 1), (1, 1)])
def test_a_resume_with_another_batch_goes_on_after_the_last_image_seen(batch_size, grad_accum, micro_dcae,
                                                                        quick_config, tmp_path):
    """3 steps of 2 images, then a resume with another batch size or accumulation: the images after the
    resume are the ones an uninterrupted run would have taken next (none skipped, none repeated)."""
    def train(out, dataset, **values):
        trainer = Trainer(quick_config(out=str(tmp_path / out), **values), model=micro_dcae(), dataset=dataset)
        dataset.keys.clear()  # the preview strip's images are not training samples
        return trainer

    straight = _RecordingImages()
    train("straight", straight, steps=3 + 2 * batch_size * grad_accum // 2, batch_size=2).train()
    interrupted = _RecordingImages()
    train("resumed", interrupted, steps=3, batch_size=2).train()
    resumed = _RecordingImages()
    notes = []
    trainer = train("resumed", resumed, steps=5, batch_size=batch_size, grad_accum=grad_accum)
    trainer.callback = lambda event, payload: notes.append(str(payload.get("message")))
    trainer.train(resume=True)
    assert interrupted.keys + resumed.keys == straight.keys
    assert any("different global batch size" in note for note in notes) == (batch_size * grad_accum != 2)


def test_a_discriminator_new_in_a_resumed_run_follows_the_runs_schedule(micro_dcae, quick_config, tmp_path):
    """A resume that turns the GAN on: the discriminator's lr is the schedule's at the resumed step (as
    the generator's), not the schedule's start (cosine from its peak, or a warm-up from zero again)."""
    config = dict(steps=8, out=str(tmp_path / "run"), lr=1e-3, warmup_steps=2, lr_schedule="cosine")
    first = Trainer(quick_config(**config), model=micro_dcae(), dataset=SmoothImages())
    first.train(until=4)
    resumed = Trainer(quick_config(**config, gan_weight=0.5, disc_lr=1e-2), model=micro_dcae(), dataset=SmoothImages())
    assert resumed.resume()
    factor = resumed.optimizer.param_groups[0]["lr"] / 1e-3
    assert 0 < factor < 1  # mid-cosine
    assert resumed.disc_optimizer.param_groups[0]["lr"] == pytest.approx(1e-2 * factor)
