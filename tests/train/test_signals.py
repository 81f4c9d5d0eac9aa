"""SIGINT (Ctrl-C) and SIGTERM (a preemption) during `dcae-ext train`, sent to a real process group as a
terminal or a scheduler does: the step in flight finishes and is saved, one line says how to go on,
the exit status is 128 + the signal, nothing prints a traceback (neither the main process nor the
DataLoader workers), and `--resume` continues to exactly the weights of an uninterrupted run."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from PIL import Image

from dcae_ext.train.checkpoint import load_checkpoint

from train_helpers import micro_dcae_config

STEPS = 40  # of the finished runs; the interrupted one is asked for far more, so it is still running
SETTINGS = {"batch_size": 2, "resolution": 16, "lpips_weight": 0.0, "num_workers": 2, "device": "cpu",
            "image_every": 0, "checkpoint_every": 0, "log_every": 1, "lr_schedule": "constant", "warmup_steps": 0,
            "lr": 1e-3, "ema_decay": 0.9}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("signals")
    data = root / "images"
    data.mkdir()
    for index in range(6):
        torch.manual_seed(index)
        pixels = (torch.rand(24, 24, 3) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(data / f"{index}.png")
    preset = root / "micro.json"  # a DC-AE config.json: fast steps
    preset.write_text(json.dumps(micro_dcae_config().to_dict()))
    settings = root / "settings.json"
    settings.write_text(json.dumps(dict(SETTINGS, data=str(data), preset=str(preset))))
    reference = root / "reference"
    done = subprocess.run(_command(settings, reference, STEPS), env=_env(), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    return root, settings, load_checkpoint(str(reference / "checkpoint.pt"))


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1")


def _command(settings, out, steps, *extra):
    return [sys.executable, "-m", "dcae_ext.cli", "train", "dcae", "--config", str(settings), "--out", str(out),
            "--steps", str(steps), *extra]


def _logged_steps(out):
    path = out / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.endswith("}")]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_saves_the_step_says_so_and_resume_is_exact(setup, signum, tmp_path):
    root, settings, reference = setup
    out = tmp_path / "run"
    process = subprocess.Popen(_command(settings, out, 100_000), env=_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 240
    while len(_logged_steps(out)) < 3 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before the signal was sent"
    os.killpg(process.pid, signum)  # the whole group, workers included, as Ctrl-C in a terminal
    _, err = process.communicate(timeout=120)

    assert process.returncode == 128 + signum, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    said = [line for line in err.splitlines() if "interrupted" in line]
    step = load_checkpoint(str(out / "checkpoint.pt"))["step"]
    assert said == [f"dcae-ext train: interrupted at step {step}; resume with --resume"], err
    assert 3 <= step < STEPS and max(_logged_steps(out)) >= step

    done = subprocess.run(_command(settings, out, STEPS, "--resume"), env=_env(), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    resumed = load_checkpoint(str(out / "checkpoint.pt"))
    assert resumed["step"] == STEPS and _logged_steps(out) == list(range(1, STEPS + 1))
    for part in ("model", "ema"):
        expected = reference[part] if part == "model" else reference[part]["model"]
        actual = resumed[part] if part == "model" else resumed[part]["model"]
        different = [name for name in expected if not torch.equal(expected[name], actual[name])]
        assert different == [], part
