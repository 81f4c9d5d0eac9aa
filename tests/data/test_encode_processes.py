"""`dcae-ext encode` as a user runs it, in separate processes: killed with SIGKILL and run again, its
shards equal an uninterrupted run's byte for byte; under torchrun with 2 CPU processes (gloo) the
union of the ranks' output equals the single-process output byte for byte."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from dcae_ext.models import DCAE

from data_helpers import write_image

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
ENV = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
NUM_IMAGES, SHARD_SIZE = 40, 2


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("processes")
    (root / "images").mkdir()
    for i in range(NUM_IMAGES):
        write_image(root / "images" / f"{i:03d}.png", 120 + i, 100, i)
    (root / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    torch.manual_seed(0)
    DCAE.from_config("tiny").save_pretrained(root / "model")
    return root


def _args(setup, out):
    return ["encode", "--model", str(setup / "model"), "--data", str(setup / "images"), "--out", str(out),
            "--resolution", "192", "--shard-size", str(SHARD_SIZE), "--batch-size", "2", "--workers", "1",
            "--device", "cpu"]


def _encode(argv):
    result = subprocess.run([sys.executable, "-m", "dcae_ext.cli", *argv], env=ENV, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _files(out):
    """Every file of the encoded dataset except metadata.json (it names the command and process count)."""
    found = {}
    for folder, _, names in os.walk(out):
        for name in names:
            path = os.path.join(folder, name)
            if name != "metadata.json":
                found[os.path.relpath(path, out)] = open(path, "rb").read()
    return found


@pytest.fixture(scope="module")
def uninterrupted(setup):
    out = setup / "uninterrupted"
    _encode(_args(setup, out))
    files = _files(out)
    assert len([n for n in files if n.endswith(".safetensors")]) == -(-(NUM_IMAGES + 1) // SHARD_SIZE)
    return files


def test_sigkill_then_resume_equals_an_uninterrupted_run(setup, uninterrupted):
    out = setup / "killed"
    process = subprocess.Popen([sys.executable, "-m", "dcae_ext.cli", *_args(setup, out)], env=ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    markers = out / "shards"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if markers.is_dir() and sum(name.endswith(".json") for name in os.listdir(markers)) >= 2:
            break
        time.sleep(0.002)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    done = sum(name.endswith(".json") for name in os.listdir(markers))
    assert 2 <= done < len(uninterrupted) // 2, f"the kill came too late to test anything ({done} shards done)"
    assert not (out / "index.jsonl").exists()

    result = _encode(_args(setup, out))
    assert "continuing an interrupted run" in result.stdout
    resumed = _files(out)
    assert resumed.keys() == uninterrupted.keys()
    assert [name for name in resumed if resumed[name] != uninterrupted[name]] == []


def test_two_torchrun_processes_equal_one(setup, uninterrupted):
    out = setup / "ranks"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "dcae_ext.cli", *_args(setup, out), "--deterministic"]  # the GPU setting works on CPU too
    result = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"encoded {NUM_IMAGES} images in" in result.stdout and "2 processes" in result.stdout  # no image twice
    two = _files(out)
    assert two.keys() == uninterrupted.keys()
    assert [name for name in two if two[name] != uninterrupted[name]] == []
