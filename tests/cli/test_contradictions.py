"""Flags that contradict each other are one-line errors before anything is written, a run's config.json
records what trained, and the errors of issue 22 point the right way (decode's model kind, a run's
config.json as --preset, eval --out, reconstruct with nothing readable, a diverged run)."""
import json
import os

import pytest
from PIL import Image

from dcae_ext.cli import main


@pytest.fixture
def structured_weights(tmp_path):
    from dcae_ext.models import DCAE

    folder = tmp_path / "structured"
    DCAE.from_config("tiny-structured").save_pretrained(str(folder))
    return str(folder)


def _one_line_error(capsys, argv, *expected, status=1):
    """The command fails with one line on stderr (besides a training run's progress bar and checkpoint notes)."""
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(("train (", "checkpoint: "))]
    assert code == status, err
    assert len(lines) == 1 and "Traceback" not in err, err
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def _system_exit(capsys, argv, *expected):
    """Commands that stop with SystemExit(message): the interpreter prints it and exits with 1."""
    with pytest.raises(SystemExit) as caught:
        main(argv)
    message = caught.value.code
    assert isinstance(message, str), message
    for text in expected:
        assert text in message, message
    return message


def test_a_preset_that_contradicts_init_weights_is_an_error(tmp_path, capsys, settings, structured_weights):
    out = tmp_path / "run"
    _one_line_error(capsys, ["train", "dcae", "--config", settings, "--out", str(out), "--preset", "tiny",
                             "--init-weights", structured_weights],
                    "--preset tiny: contradicts --init-weights", "preset tiny-structured", "leave out --preset")
    assert not out.exists()


def test_init_weights_alone_records_the_architecture_that_trained(tmp_path, capsys, settings, structured_weights):
    out = tmp_path / "run"
    assert main(["train", "dcae", "--config", settings, "--out", str(out), "--init-weights", structured_weights]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["preset"] == "tiny-structured" and saved["init_weights"] == structured_weights
    # a preset that agrees with the weights is fine, and so is the resumed run reading it back
    assert main(["train", "dcae", "--config", settings, "--out", str(tmp_path / "agree"), "--preset",
                 "tiny-structured", "--init-weights", structured_weights]) == 0
    assert main(["train", "dcae", "--out", str(out), "--resume", "--steps", "2"]) == 0


@pytest.mark.parametrize("flags,expected", [
    (["--lecam-weight", "0.1"], "--lecam-weight 0.1: acts only with gan weight > 0"),
    (["--phase", "3", "--gan-weight", "0", "--disc-first"], "--disc-first: acts only with gan weight > 0"),
    (["--lpips-net", "alex"], "--lpips-net alex: acts only with lpips weight > 0"),
    (["--phase", "3", "--disc-start", "5", "--steps", "5"], "--disc-start 5: the run ends at step 5"),
])
def test_a_flag_that_would_be_ignored_is_an_error(tmp_path, capsys, settings, flags, expected):
    out = tmp_path / "run"
    _one_line_error(capsys, ["train", "dcae", "--config", settings, "--out", str(out), *flags], expected)
    assert not out.exists()


@pytest.mark.parametrize("flag,value", [("--preset", "tiny-structured"), ("--phase", "2")])
def test_a_resume_that_would_change_the_model_is_an_error(tmp_path, capsys, settings, flag, value):
    out = tmp_path / "run"
    assert main(["train", "dcae", "--config", settings, "--out", str(out)]) == 0
    capsys.readouterr()
    _one_line_error(capsys, ["train", "dcae", "--out", str(out), "--resume", "--steps", "2", flag, value],
                    f"{flag} {value}", "a resumed run keeps its model", "--init-weights")


def test_a_runs_config_json_as_preset_points_to_init_weights(tmp_path, capsys, settings):
    out = tmp_path / "run"
    assert main(["train", "dcae", "--config", settings, "--out", str(out)]) == 0
    capsys.readouterr()
    run_config = str(out / "config.json")
    _one_line_error(capsys, ["train", "dcae", "--config", settings, "--out", str(tmp_path / "new"),
                             "--preset", run_config],
                    f"--preset {run_config}", "training run's settings", f"--init-weights {out}", "--resume")


def test_a_diverging_run_stops_with_an_error_and_keeps_its_last_good_checkpoint(tmp_path, capsys, settings):
    out = tmp_path / "run"
    line = _one_line_error(capsys, ["train", "dcae", "--config", settings, "--out", str(out), "--steps", "30",
                                    "--lr", "1e9", "--max-nonfinite-steps", "3", "--checkpoint-every", "1"],
                           "not finite for 3 steps in a row", "lower the learning rate", "is kept")
    from dcae_ext.train.checkpoint import load_checkpoint

    kept = load_checkpoint(str(out / "checkpoint.pt"))
    assert f"checkpoint of step {kept['step']} is kept" in line and kept["skipped_steps"] == 0
    assert not (out / "model").exists()  # no final export of a diverged run


def test_decode_with_the_wrong_model_kind_names_decodes_counterpart(tmp_path, capsys):
    from dcae_ext.models import IBQTokenizer

    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (16, 16), (10, 200, 30)).save(images / "a.png")
    encoded = str(tmp_path / "latents")
    assert main(["encode", "--model", "tiny", "--data", str(images), "--out", encoded, "--resolution", "16",
                 "--workers", "0", "--device", "cpu"]) == 0
    tokenizer = str(tmp_path / "tokenizer")
    IBQTokenizer.from_config("tiny").save_pretrained(tokenizer)
    message = _system_exit(capsys, ["decode", "--input", encoded, "--out", str(tmp_path / "png"), "--model", tokenizer,
                                    "--device", "cpu"],
                           "is an IBQ tokenizer", "holds latents written by dcae-ext encode", "decode them with a DC-AE")
    assert "use dcae-ext" not in message


def test_decode_with_a_tokenizer_of_another_codebook_or_factor_is_refused(tmp_path, capsys):
    """Tokens index one codebook: another tokenizer's codes of the same index are other images, and its
    decoder would run without a complaint wherever the indices lie below its codebook size."""
    from dcae_ext.models import IBQTokenizer
    from dcae_ext.models.ibq.tokenizer import IBQConfig, _conv_backbone, get_ibq_config

    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (16, 16), (10, 200, 30)).save(images / "a.png")
    IBQTokenizer.from_config("tiny").save_pretrained(tmp_path / "tokenizer")
    encoded = str(tmp_path / "tokens")
    assert main(["tokenize", "--model", str(tmp_path / "tokenizer"), "--data", str(images), "--out", encoded,
                 "--resolution", "16", "--workers", "0", "--device", "cpu"]) == 0
    larger = get_ibq_config("tiny").to_dict()
    larger["num_codes"] = 1024
    IBQTokenizer.from_config(IBQConfig.from_dict(larger)).save_pretrained(tmp_path / "larger")
    coarser = IBQConfig(_conv_backbone((16, 32, 64, 64), 1, 1, 32), num_codes=512, dim=16)  # 8x, not 4x
    IBQTokenizer.from_config(coarser).save_pretrained(tmp_path / "coarser")
    for other, expected in (("larger", "512 codes, and --model"), ("coarser", "spatial factor 4, and --model")):
        out = tmp_path / f"png_{other}"
        _system_exit(capsys, ["decode", "--input", encoded, "--out", str(out), "--model", str(tmp_path / other),
                              "--device", "cpu"], f"--model: {encoded} holds", expected, "leave out --model")
        assert not out.exists()
    assert main(["decode", "--input", encoded, "--out", str(tmp_path / "png"), "--device", "cpu"]) == 0


def test_eval_out_is_checked_before_the_evaluation(tmp_path, capsys, monkeypatch):
    import dcae_ext.commands._models as models

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("the model was loaded before --out was checked"))
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    _system_exit(capsys, ["eval", "--model", "tiny", "--out", str(a_file), "--device", "cpu"], "--out", "is a file")
    _system_exit(capsys, ["eval", "--model", "tiny", "--out", str(a_file / "eval"), "--device", "cpu"],
                 "--out", "is a file, so no folder can be made under it")
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        _system_exit(capsys, ["eval", "--model", "tiny", "--out", str(locked / "eval"), "--device", "cpu"],
                     "not writable")


def test_reconstruct_with_nothing_readable_exits_non_zero(tmp_path, capsys):
    folder = tmp_path / "unreadable"
    folder.mkdir()
    (folder / "a.png").write_text("not an image")
    (folder / "b.jpg").write_bytes(b"\xff\xd8 truncated")
    _system_exit(capsys, ["reconstruct", "--model", "tiny", "--input", str(folder), "--out", str(tmp_path / "out"),
                          "--device", "cpu"], "--input", "none of its 2 image(s) could be read")
