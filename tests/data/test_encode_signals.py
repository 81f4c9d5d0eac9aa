"""SIGINT and SIGTERM during `dcae-ext encode`, sent to the process group as a terminal or a scheduler
does: one line saying the finished shards are kept, exit status 128 + the signal, no traceback from
the main process or the DataLoader workers; the same command then finishes the run."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from data_helpers import write_image

IMAGES = 200  # 50 shards: still encoding when the signal comes, even on a loaded machine


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("encode_signals") / "images"
    folder.mkdir()
    for index in range(IMAGES):
        write_image(folder / f"{index:03d}.png", 64, 64, index)
    return folder


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_encode_in_one_line_and_the_same_command_finishes(images, signum, tmp_path):
    out = tmp_path / "latents"
    command = [sys.executable, "-m", "dcae_ext.cli", "encode", "--model", "tiny", "--data", str(images), "--out",
               str(out), "--resolution", "64", "--workers", "2", "--shard-size", "4", "--batch-size", "1",
               "--device", "cpu"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    shards, deadline = out / "shards", time.monotonic() + 240
    while process.poll() is None and time.monotonic() < deadline and \
            len([name for name in os.listdir(shards) if name.endswith(".json")] if shards.is_dir() else []) < 2:
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before the signal was sent"
    os.killpg(process.pid, signum)
    _, err = process.communicate(timeout=120)

    assert process.returncode == 128 + signum, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    said = [line for line in err.splitlines() if "interrupted" in line]
    assert len(said) == 1 and said[0].startswith(f"dcae-ext encode: interrupted ({signal.Signals(signum).name})")
    assert "run the same command again" in said[0]
    assert not (out / "metadata.json").exists()

    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "continuing an interrupted run" in done.stdout
    assert json.loads((out / "metadata.json").read_text())["num_images"] == IMAGES
