"""The folder a run writes into (`train`, `encode`, `tokenize`): `--overwrite` deletes only what runs
wrote there, one process writes into it at a time (a second gets one line naming the folder and the
holder's pid; a killed holder leaves nothing locked), and `--resume` says what it found."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from dcae_ext.cli import main
from dcae_ext.models import DCAE, IBQTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")


@pytest.fixture
def models(tmp_path):
    """Saved tiny models, so that no random-weights note joins the one error line."""
    torch.manual_seed(0)
    DCAE.from_config("tiny").save_pretrained(tmp_path / "dcae")
    IBQTokenizer.from_config("tiny").save_pretrained(tmp_path / "ibq")
    return {"encode": str(tmp_path / "dcae"), "tokenize": str(tmp_path / "ibq")}


def _error_line(capsys, argv) -> str:
    """The one line a failing command prints (or its SystemExit message)."""
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exit:
        code = exit.code
        if isinstance(code, str):
            return code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code not in (0, None) and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _steps(out):
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def _users_folders(out):
    """What a user keeps in a folder: subfolders named like ones a run writes, with files in them."""
    for name in ("images", "shards"):
        os.makedirs(out / name)
        (out / name / "holiday.png").write_bytes(b"the user's only copy")
    return {str(p): p.read_bytes() for p in out.rglob("*") if p.is_file()}


def _unchanged(files):
    return all(open(path, "rb").read() == content for path, content in files.items())


def test_overwrite_never_deletes_a_users_folders(tmp_path, capsys, settings, models, data):
    out = tmp_path / "mine"
    out.mkdir()
    files = _users_folders(out)
    line = _error_line(capsys, ["train", "dcae", "--config", settings, "--out", str(out), "--overwrite"])
    assert str(out) in line and "images/" in line and "no dcae-ext run wrote" in line
    line = _error_line(capsys, ["train", "dcae", "--config", settings, "--out", str(out)])  # nor writes into them
    assert "images/" in line
    line = _error_line(capsys, ["encode", "--model", models["encode"], "--data", str(data), "--out", str(out),
                                "--resolution", "32", "--workers", "0", "--device", "cpu"])
    assert str(out) in line and "(images/, shards/)" in line
    for command in ("encode", "tokenize"):
        line = _error_line(capsys, [command, "--model", models[command], "--data", str(data), "--out", str(out),
                                    "--resolution", "32", "--workers", "0", "--device", "cpu", "--overwrite"])
        assert str(out) in line and "shards/" in line and "no dcae-ext run wrote" in line
    assert _unchanged(files)


def test_overwrite_deletes_what_runs_wrote_and_keeps_the_rest(tmp_path, capsys, settings, models, data):
    run, encoded = tmp_path / "run", tmp_path / "encoded"
    assert main(["train", "dcae", "--config", settings, "--out", str(run)]) == 0
    encode = ["encode", "--model", models["encode"], "--data", str(data), "--out", str(encoded), "--resolution", "32",
              "--workers", "0", "--device", "cpu"]
    assert main(encode) == 0
    for folder in (run, encoded):
        (folder / "notes.txt").write_text("mine")
    with open(run / "metrics.jsonl", "a") as stream:
        stream.write('{"step": 99}\n')  # marks the old run's files: gone after --overwrite
    (encoded / "shards" / "000099.json").write_text("{}")
    assert main(["train", "dcae", "--config", settings, "--out", str(run), "--overwrite"]) == 0
    assert main(encode + ["--overwrite"]) == 0
    assert _steps(run) == [1] and (run / "images").is_dir() and (run / "checkpoint.pt").is_file()
    assert sorted(os.listdir(encoded / "shards")) == ["000000.json", "000000.safetensors"]
    assert (run / "notes.txt").read_text() == (encoded / "notes.txt").read_text() == "mine"
    assert not (run / ".dcae-ext.lock").exists() and not (encoded / ".dcae-ext.lock").exists()


def test_a_run_from_before_the_record_is_still_overwritten(tmp_path, capsys, settings):
    out = tmp_path / "run"
    assert main(["train", "dcae", "--config", settings, "--out", str(out)]) == 0
    os.unlink(out / ".dcae-ext-outputs.json")  # as an earlier version left it: its config.json says it is a run
    with open(out / "metrics.jsonl", "a") as stream:
        stream.write('{"step": 99}\n')
    assert main(["train", "dcae", "--config", settings, "--out", str(out), "--overwrite"]) == 0
    assert _steps(out) == [1] and (out / ".dcae-ext-outputs.json").is_file()


def _hold_lock(folder):
    """A second process holding `folder`'s lock, as a running `train` or `encode` does."""
    code = ("import sys, time; from dcae_ext.output_folder import acquire; acquire(sys.argv[1]); "
            "print('locked', flush=True); time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(folder)], env=ENV, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def _kill(process):
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)


def test_a_second_writer_is_refused_with_the_holders_pid_until_the_holder_dies(tmp_path, capsys, settings):
    out = tmp_path / "run"
    assert main(["train", "dcae", "--config", settings, "--out", str(out)]) == 0
    # the case: a resume started while the same run trains (the first run resumed in another process)
    training = subprocess.Popen([sys.executable, "-m", "dcae_ext.cli", "train", "dcae", "--out", str(out), "--resume",
                                 "--steps", "1000000", "--log-every", "1000000", "--checkpoint-every", "0"], env=ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / ".dcae-ext.lock").is_file() or not (out / ".dcae-ext.lock").read_text().strip():
            assert training.poll() is None, training.stderr.read()
            assert time.monotonic() < deadline, "the training process never took the lock"
            time.sleep(0.2)
        metrics = (out / "metrics.jsonl").read_text()
        for argv in (["train", "dcae", "--out", str(out), "--resume", "--steps", "3"],
                     ["train", "dcae", "--config", settings, "--out", str(out), "--overwrite"]):
            line = _error_line(capsys, argv)
            assert f"{out} is in use by another dcae-ext process (pid {training.pid})" in line, line
        assert (out / "metrics.jsonl").read_text() == metrics and (out / "checkpoint.pt").is_file()
    finally:
        _kill(training)
    assert main(["train", "dcae", "--out", str(out), "--resume", "--steps", "2"]) == 0  # kill -9 left no lock
    assert _steps(out) == [1, 2]


@pytest.mark.parametrize("command", ["encode", "tokenize"])
def test_a_second_encoding_into_a_locked_folder_is_refused(tmp_path, capsys, models, data, command):
    out, model = tmp_path / "out", models[command]
    holder = _hold_lock(out)
    try:
        line = _error_line(capsys, [command, "--model", model, "--data", str(data), "--out", str(out),
                                    "--resolution", "32", "--workers", "0", "--device", "cpu"])
        assert f"{out} is in use by another dcae-ext process (pid {holder.pid})" in line
        assert sorted(os.listdir(out)) == [".dcae-ext.lock"]  # nothing written
    finally:
        _kill(holder)
    assert main([command, "--model", model, "--data", str(data), "--out", str(out), "--resolution", "32",
                 "--workers", "0", "--device", "cpu"]) == 0


def test_resume_with_nothing_to_resume_is_an_error_naming_the_folder(tmp_path, capsys, settings):
    empty = tmp_path / "empty"
    line = _error_line(capsys, ["train", "dcae", "--config", settings, "--out", str(empty), "--resume"])
    assert f"--resume: {empty} holds no run to resume" in line
    assert not empty.exists()  # and no run on all defaults started there


def test_resume_of_a_finished_run_says_there_is_nothing_to_do(tmp_path, capsys, settings):
    out = tmp_path / "run"
    assert main(["train", "dcae", "--config", settings, "--out", str(out)]) == 0
    names = ("checkpoint.pt", "config.json", "metrics.jsonl", "model/diffusion_pytorch_model.safetensors")
    before = {name: (out / name).read_bytes() for name in names}
    capsys.readouterr()
    assert main(["train", "dcae", "--out", str(out), "--resume"]) == 0
    printed = capsys.readouterr().out
    assert "nothing to do" in printed and "finished its 1 steps" in printed and "--resume --steps 2" in printed
    assert {name: (out / name).read_bytes() for name in names} == before  # no step, no new settings
    shutil.rmtree(out / "model_ema")  # as a kill during the final export leaves it
    assert main(["train", "dcae", "--out", str(out), "--resume"]) == 0
    assert (out / "model_ema" / "config.json").is_file() and "nothing to do" in capsys.readouterr().out


def test_a_text_file_is_not_a_checkpoint_and_not_a_dataset(tmp_path, capsys, settings):
    text = tmp_path / "notes.txt"
    text.write_text("this is a text file, not a model\n")
    line = _error_line(capsys, ["eval", "--model", str(text), "--device", "cpu"])
    assert str(text) in line and "not a checkpoint" in line and "truncated" not in line
    line = _error_line(capsys, ["train", "dcae", "--config", settings, "--data", str(text), "--out",
                                str(tmp_path / "run")])
    assert "--data" in line and str(text) in line and "loader" not in line


def test_reconstruct_and_decode_never_write_over_their_input_images(tmp_path, capsys, data, models):
    originals = {path: path.read_bytes() for path in data.iterdir()}
    line = _error_line(capsys, ["reconstruct", "--model", models["encode"], "--input", str(data), "--out", str(data),
                                "--device", "cpu"])
    assert line.startswith("--out: ") and "would replace the input image" in line and "0.png and 1 more" in line
    encoded = tmp_path / "encoded"
    assert main(["encode", "--model", models["encode"], "--data", str(data), "--out", str(encoded), "--resolution",
                 "32", "--workers", "0", "--device", "cpu"]) == 0
    line = _error_line(capsys, ["decode", "--input", str(encoded), "--out", str(data), "--device", "cpu"])
    assert line.startswith("--out: ") and "would replace the source image" in line
    assert {path: path.read_bytes() for path in data.iterdir()} == originals
    assert main(["decode", "--input", str(encoded), "--out", str(tmp_path / "decoded"), "--device", "cpu"]) == 0
