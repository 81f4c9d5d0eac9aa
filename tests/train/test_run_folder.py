"""The output folder: no silent mixing of runs, --overwrite, and a resume that tolerates what a
kill leaves behind (a torn metrics line, a temporary checkpoint file) and names changed settings."""
import json
import os

import pytest
import torch

from dcae_ext.train.config import ConfigError
from dcae_ext.train.run_folder import RunExistsError
from dcae_ext.train.trainer import Trainer

from train_helpers import SmoothImages


def _trainer(quick_config, micro_dcae, events=None, **overrides):
    callback = (lambda event, payload: events.append((event, payload))) if events is not None else None
    return Trainer(quick_config(**overrides), model=micro_dcae(), dataset=SmoothImages(), callback=callback)


def _steps(out):
    return [json.loads(line)["step"] for line in open(os.path.join(out, "metrics.jsonl"))]


def test_new_run_into_a_folder_holding_a_run_is_refused_and_overwrite_starts_afresh(micro_dcae, quick_config):
    first = _trainer(quick_config, micro_dcae, steps=3)
    first.train()
    out = first.config.out
    checkpoint = open(first.checkpoint_path, "rb").read()
    with pytest.raises(RunExistsError, match="already holds a run.*resume=True.*overwrite=True"):
        _trainer(quick_config, micro_dcae, steps=2).train()
    assert open(first.checkpoint_path, "rb").read() == checkpoint and _steps(out) == [1, 2, 3]
    with pytest.raises(ValueError, match="give one"):
        _trainer(quick_config, micro_dcae, steps=2).train(resume=True, overwrite=True)
    os.makedirs(os.path.join(out, "notes"))  # not the run's: stays
    events = []
    second = _trainer(quick_config, micro_dcae, events, steps=2, ema_decay=0.0)
    second.train(overwrite=True)
    assert _steps(out) == [1, 2]
    assert not os.path.exists(os.path.join(out, "model_ema")) and os.path.isdir(os.path.join(out, "notes"))
    assert any("deleted" in payload.get("message", "") for _, payload in events)


def test_a_folder_with_only_the_config_of_a_run_that_never_started_is_reused(micro_dcae, quick_config):
    class Fails(type(micro_dcae())):
        def forward(self, x):
            raise RuntimeError("out of memory in the first step")

    config = quick_config(steps=2)
    trainer = Trainer(config, model=Fails(micro_dcae().config), dataset=SmoothImages())
    with pytest.raises(RuntimeError, match="first step"):
        trainer.train()
    assert not os.path.exists(os.path.join(config.out, "config.json"))  # nothing left behind
    os.makedirs(config.out, exist_ok=True)
    open(os.path.join(config.out, "config.json"), "w").write("{}")
    _trainer(quick_config, micro_dcae, steps=1).train()


def test_resume_trims_a_torn_metrics_line_removes_stale_temporaries_and_names_changes(micro_dcae, quick_config):
    first = _trainer(quick_config, micro_dcae, steps=4, checkpoint_every=2)
    first.train(until=3)  # killed after step 3: checkpoint at 2, metrics rows 1..3
    out = first.config.out
    with open(os.path.join(out, "metrics.jsonl"), "a") as stream:
        stream.write('{"step": 4, "loss": 0.')  # the kill tore this write
    stale = os.path.join(out, ".checkpoint.pt.abc123.tmp")
    open(stale, "wb").write(b"PK\x03\x04 half a checkpoint")
    events = []
    resumed = _trainer(quick_config, micro_dcae, events, steps=6, checkpoint_every=2, lr=1e-3)
    resumed.train(resume=True)
    assert resumed.step == 6 and _steps(out) == [1, 2, 3, 4, 5, 6]
    assert not os.path.exists(stale)
    messages = " | ".join(payload["message"] for event, payload in events if event == "warning")
    assert "torn last line" in messages and ".checkpoint.pt.abc123.tmp" in messages
    assert "steps 4 -> 6" in messages and "lr 0.002 -> 0.001" in messages  # the tiny preset's lr, then --lr


def test_a_broken_metrics_line_before_the_last_is_an_error_naming_it(micro_dcae, quick_config):
    first = _trainer(quick_config, micro_dcae, steps=3)
    first.train()
    path = os.path.join(first.config.out, "metrics.jsonl")
    lines = open(path).read().splitlines()
    lines[1] = lines[1][:10]
    open(path, "w").write("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="metrics.jsonl: line 2 is not JSON"):
        _trainer(quick_config, micro_dcae, steps=5).train(resume=True)


def test_init_weights_takes_a_run_folder_and_refuses_another_model(micro_dcae, micro_ibq, quick_config, tmp_path):
    first = _trainer(quick_config, micro_dcae, steps=2)
    first.train()
    second = Trainer(quick_config(steps=1, out=str(tmp_path / "next"), init_weights=first.config.out),
                     dataset=SmoothImages())
    for name, value in first.model.state_dict().items():
        assert torch.equal(second.model.state_dict()[name], value), name
    with pytest.raises(ConfigError, match="holds a DCAE; training ibq needs a IBQTokenizer"):
        Trainer(quick_config("ibq", out=str(tmp_path / "ibq"), init_weights=first.config.out), dataset=SmoothImages())
