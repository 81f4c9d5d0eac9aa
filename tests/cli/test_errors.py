"""`dcae-ext` reports bad input as one line on stderr (what is wrong, the flag, what would work)
with a non-zero exit status, before any work starts; --debug shows the traceback instead."""
import json
import os

import pytest
import torch

from dcae_ext import __version__
from dcae_ext.cli import main


def _fails(capsys, argv, *expected, status=None):
    code = main(argv) if status is None else None
    if status is not None:
        with pytest.raises(SystemExit) as caught:
            main(argv)
        code = caught.value.code
    err = capsys.readouterr().err
    if isinstance(code, str):  # SystemExit("message"): the interpreter prints it and exits with 1
        err, code = code, 1
    lines = [line for line in err.splitlines() if line.strip()]
    assert code not in (0, None), err
    assert len(lines) == 1 and "Traceback" not in err, err
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def test_train_errors_name_the_flag_and_what_would_work(tmp_path, capsys, settings):
    out = str(tmp_path / "run")
    base = ["train", "dcae", "--config", settings, "--out", out]
    _fails(capsys, base + ["--resolution", "50"], "--resolution 50", "spatial factor 8", "use 48 or 56")
    _fails(capsys, base + ["--log-every", "0"], "--log-every 0", ">= 1")
    _fails(capsys, base + ["--preset", "dc-ae-f32c32"], "--preset", "known:", "dc-ae-f32c32-in-1.0")
    _fails(capsys, base + ["--data", str(tmp_path / "missing")], "--data", "missing")
    _fails(capsys, base + ["--init-weights", str(tmp_path / "nothing")], "--init-weights", "does not exist")
    _fails(capsys, ["train", "ibq", "--phase", "2", "--out", out], "--phase 2", "dcae only")
    _fails(capsys, base + ["--steps", "x"], "--steps", "invalid int value", "--help", status=2)
    assert not os.path.exists(out)  # validated before anything was written


def test_config_file_values_and_model_conflicts(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: fast\n")
    _fails(capsys, ["train", "dcae", "--config", str(bad)], "bad.yaml", "'lr'", "expected a number")
    other = tmp_path / "ibq.yaml"
    other.write_text("model: ibq\n")
    _fails(capsys, ["train", "dcae", "--config", str(other)], "ibq.yaml", "set to ibq there, but dcae")
    _fails(capsys, ["train", "dcae", "--config", str(tmp_path / "absent.yaml")], "absent.yaml", "does not exist")


@pytest.mark.parametrize("command", [["train", "dcae"], ["eval", "--model", "tiny"],
                                     ["reconstruct", "--model", "tiny", "--input", ".", "--out", "o"]])
def test_a_misspelt_device_is_one_line_for_every_command(capsys, command):
    status = None if command[0] in ("reconstruct", "eval") else 2  # None: an error exit of main, no usage error
    _fails(capsys, command + ["--device", "cdua"], "--device", "cdua", status=status)


@pytest.mark.parametrize("limit", ["-1", "0"])
def test_a_limit_below_one_is_refused_not_sliced(tmp_path, capsys, limit):
    _fails(capsys, ["eval", "--model", "tiny", "--limit", limit, "--out", str(tmp_path / "eval"), "--device", "cpu"],
           f"--limit: expected a positive number of images, got {limit}", status=1)
    _fails(capsys, ["decode", "--input", str(tmp_path), "--out", str(tmp_path / "out"), "--limit", limit,
                    "--device", "cpu"], f"--limit: expected a positive number of images, got {limit}", status=1)
    assert not os.path.exists(tmp_path / "eval") and not os.path.exists(tmp_path / "out")


def test_truncated_and_empty_checkpoints_say_which_file(tmp_path, capsys, settings):
    out = tmp_path / "run"
    assert main(["train", "dcae", "--config", settings, "--out", str(out)]) == 0
    checkpoint = out / "checkpoint.pt"
    data = checkpoint.read_bytes()
    capsys.readouterr()
    for content, words in ((data[: len(data) // 2], "truncated"), (b"", "empty")):
        checkpoint.write_bytes(content)
        line = _fails(capsys, ["train", "dcae", "--out", str(out), "--steps", "2", "--resume"], words)
        assert str(checkpoint) in line
        _fails(capsys, ["eval", "--model", str(checkpoint)], str(checkpoint), words)


def test_existing_run_is_refused_with_the_flags_that_continue_or_replace_it(tmp_path, capsys, settings):
    out = str(tmp_path / "run")
    assert main(["train", "dcae", "--config", settings, "--out", out]) == 0
    capsys.readouterr()
    _fails(capsys, ["train", "dcae", "--config", settings, "--out", out], "already holds a run", "--resume",
           "--overwrite")
    assert main(["train", "dcae", "--config", settings, "--out", out, "--overwrite"]) == 0
    assert main(["train", "dcae", "--out", out, "--resume", "--steps", "2"]) == 0  # saved settings + --steps
    saved = json.load(open(os.path.join(out, "config.json")))
    assert saved["steps"] == 2 and saved["lpips_weight"] == 0.0 and saved["resolution"] == 16


def test_debug_shows_the_traceback(capsys):
    with pytest.raises(ValueError, match="--log-every 0"):
        main(["train", "dcae", "--log-every", "0", "--debug"])


def test_version_and_help_describe_every_flag_with_its_default(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["--version"])
    assert caught.value.code == 0 and capsys.readouterr().out.strip() == f"dcae-ext {__version__}"
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--log-every LOG_EVERY write a metrics.jsonl row every N steps (default: 10)" in text
    assert "--lr LR peak learning rate (AdamW) (default: 6.4e-05; recipe: ibq 0.0001; phase 1 of a CPU-sized " \
           "preset: dcae tiny 0.002, dcae tiny-structured 0.002, ibq tiny 0.001)" in text
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    assert "(default: 8)" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message where no GPU is visible")
def test_cuda_without_a_gpu_is_one_line(capsys):
    _fails(capsys, ["train", "dcae", "--device", "cuda"], "--device cuda", "no CUDA GPU")
    _fails(capsys, ["reconstruct", "--model", "tiny", "--input", ".", "--out", "o", "--device", "cuda"],
           "--device cuda", "no CUDA GPU")


def test_eval_checks_data_and_tile_flags_by_name(tmp_path, capsys, settings):
    _fails(capsys, ["eval", "--model", "tiny", "--data", str(tmp_path / "none")], "--data", "neither a folder",
           status=1)
    _fails(capsys, ["eval", "--model", "tiny", "--tile", "8"], "--tile 8", "use tile >= 16", status=1)
    _fails(capsys, ["train", "dcae", "--config", settings, "--out", str(tmp_path / "r"), "--lpips-weight", "1",
                    "--lpips-weights", str(tmp_path / "absent.pth")], "--lpips-weights", "does not exist")
