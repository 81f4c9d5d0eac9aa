"""Checkpoints hold tensors and plain values only: they load with torch.load(weights_only=True),
a crafted pickle is refused without running, and broken files are named as such."""
import os
import random

import numpy as np
import pytest
import torch

from dcae_ext.models import load_model_from_path
from dcae_ext.files import UnreadableFileError
from dcae_ext.train.checkpoint import load_checkpoint, rng_state, set_rng_state
from dcae_ext.train.trainer import Trainer

from train_helpers import SmoothImages


class _RunsAShellCommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _malicious_checkpoint(folder, marker):
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "checkpoint.pt")
    torch.save({"step": 1, "model": {}, "rng": _RunsAShellCommand(marker)}, path)
    return path


def test_resume_refuses_a_checkpoint_that_would_run_code(micro_dcae, quick_config, tmp_path):
    marker = tmp_path / "code_ran"
    config = quick_config(steps=2)
    _malicious_checkpoint(config.out, marker)
    trainer = Trainer(config, model=micro_dcae(), dataset=SmoothImages())
    with pytest.raises(UnreadableFileError, match="refused to load.*posix.system"):
        trainer.train(resume=True)
    with pytest.raises(UnreadableFileError, match="refused to load"):
        load_model_from_path(os.path.join(config.out, "checkpoint.pt"))
    assert not marker.exists()


def test_checkpoint_loads_weights_only_and_as_a_model(micro_ibq, quick_config):
    config = quick_config("ibq", steps=2, ema_decay=0.5)
    trainer = Trainer(config, model=micro_ibq(), dataset=SmoothImages())
    trainer.train()
    state = torch.load(trainer.checkpoint_path, weights_only=True)
    assert state["step"] == 2 and state["model_class"] == "IBQTokenizer"
    for source in (config.out, trainer.checkpoint_path):
        model = load_model_from_path(source)
        assert type(model).__name__ == "IBQTokenizer" and not model.training
        for name, value in trainer.model.state_dict().items():
            assert torch.equal(model.state_dict()[name], value), name
    ema = load_model_from_path(trainer.checkpoint_path, ema=True)
    weight = "quant_conv.weight"
    assert torch.equal(ema.state_dict()[weight], trainer.ema.model.state_dict()[weight])
    assert not torch.equal(ema.state_dict()[weight], trainer.model.state_dict()[weight])


@pytest.mark.parametrize("cut", ["empty", "head", "middle", "tail"])
def test_truncated_checkpoint_names_the_file(micro_dcae, quick_config, cut):
    config = quick_config(steps=1)
    trainer = Trainer(config, model=micro_dcae(), dataset=SmoothImages())
    trainer.train()
    data = open(trainer.checkpoint_path, "rb").read()
    keep = {"empty": 0, "head": 200, "middle": len(data) // 2, "tail": len(data) - 40}[cut]
    assert keep < len(data)
    with open(trainer.checkpoint_path, "wb") as stream:
        stream.write(data[:keep])
    with pytest.raises(UnreadableFileError, match=r"checkpoint\.pt.*(empty|truncated)"):
        load_checkpoint(trainer.checkpoint_path)
    with pytest.raises(UnreadableFileError, match=r"checkpoint\.pt.*(empty|truncated)"):
        load_model_from_path(trainer.checkpoint_path)


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    np.random.normal()  # leaves a cached Gaussian in NumPy's legacy state
    path = tmp_path / "rng.pt"
    torch.save(rng_state(), path)
    expected = (random.random(), np.random.normal(), np.random.rand(), torch.rand(2))
    set_rng_state(torch.load(path, weights_only=True))
    actual = (random.random(), np.random.normal(), np.random.rand(), torch.rand(2))
    assert expected[:3] == actual[:3] and torch.equal(expected[3], actual[3])


@pytest.mark.cuda
def test_cuda_checkpoint_holds_the_cuda_rng_and_resumes(micro_dcae, quick_config):
    config = quick_config(steps=3, device="cuda", checkpoint_every=1)
    first = Trainer(config, model=micro_dcae(), dataset=SmoothImages())
    first.train(until=2)
    state = torch.load(first.checkpoint_path, weights_only=True)
    assert len(state["rng"]["cuda"]) == torch.cuda.device_count()
    resumed = Trainer(config, model=micro_dcae(), dataset=SmoothImages())
    resumed.train(resume=True)  # the checkpoint maps onto the GPU; RNG states go back to the CPU
    assert resumed.step == 3
