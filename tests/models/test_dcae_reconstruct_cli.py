"""`dcae-ext reconstruct` end to end on the tiny preset and on a saved checkpoint."""
import pytest
import torch
from PIL import Image

from dcae_ext.cli import main
from dcae_ext.models import DCAE


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    gen = torch.Generator().manual_seed(0)
    for name, (h, w) in {"a.png": (32, 48), "b.jpg": (41, 30)}.items():  # b: not a multiple of f=8
        pixels = torch.randint(0, 256, (h, w, 3), generator=gen, dtype=torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / name)
    return folder


def test_preset_writes_pngs_and_warns_about_random_weights(images, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["reconstruct", "--model", "tiny", "--input", str(images), "--out", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "RANDOM" in printed and "a.png: PSNR" in printed and "b.jpg: PSNR" in printed
    assert Image.open(out / "a.png").size == (48, 32)
    assert Image.open(out / "b.png").size == (30, 41)


def test_checkpoint_with_tiling_and_bf16(images, tmp_path, capsys):
    checkpoint = tmp_path / "ckpt"
    DCAE.from_config("tiny").save_pretrained(checkpoint, format="efficientvit")
    out = tmp_path / "out"
    assert main(["reconstruct", "--model", str(checkpoint), "--input", str(images / "a.png"), "--out", str(out),
                 "--tile", "16", "--dtype", "bf16", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "RANDOM" not in printed and "mean PSNR over 1 images" in printed
    assert Image.open(out / "a.png").size == (48, 32)


def test_bad_arguments_exit_with_a_message(images, tmp_path):
    with pytest.raises(SystemExit, match="--tile"):
        main(["reconstruct", "--model", "tiny", "--input", str(images), "--out", str(tmp_path), "--tile", "12",
              "--device", "cpu"])
    with pytest.raises(SystemExit, match="--model"):
        main(["reconstruct", "--model", "no-such-model", "--input", str(images), "--out", str(tmp_path)])


def test_a_training_run_and_its_checkpoint(images, tmp_path, capsys):
    import json

    settings = tmp_path / "quick.json"
    settings.write_text(json.dumps({"lpips_weight": 0.0, "num_workers": 0, "device": "cpu", "image_every": 0}))
    run = tmp_path / "run"
    assert main(["train", "dcae", "--steps", "1", "--batch-size", "1", "--resolution", "16", "--data", str(images),
                 "--out", str(run), "--config", str(settings)]) == 0
    for model in (run, run / "checkpoint.pt"):
        out = tmp_path / "out"
        assert main(["reconstruct", "--model", str(model), "--input", str(images), "--out", str(out),
                     "--device", "cpu"]) == 0
        assert "RANDOM" not in capsys.readouterr().out and sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"]


class _QuarterGrayLevel(torch.nn.Module):
    """A 'DC-AE' whose reconstruction is the input plus 0.3 of an 8-bit gray level: rounding to PNG
    pixels would erase the error, so a PSNR measured after rounding reads inf."""
    spatial_compression = 8

    def forward(self, x, pad=False):
        from dcae_ext.models.output import AutoencoderOutput

        return AutoencoderOutput(x + 2 * 0.3 / 255)


def test_reconstruct_psnr_is_eval_psnr_before_rounding(tmp_path, monkeypatch, capsys):
    import json
    import math
    import re

    from dcae_ext.commands import _models

    folder = tmp_path / "in"
    folder.mkdir()
    gen = torch.Generator().manual_seed(0)
    for name in ("a.png", "b.png"):  # values below 200: no clamping at white
        Image.fromarray(torch.randint(0, 200, (16, 24, 3), generator=gen, dtype=torch.uint8).numpy()).save(folder / name)
    monkeypatch.setattr(_models, "load_model", lambda *args, **kwargs: (_QuarterGrayLevel(), "DC-AE", True))
    assert main(["reconstruct", "--model", "shift", "--input", str(folder), "--out", str(tmp_path / "out"),
                 "--device", "cpu"]) == 0
    printed = dict(re.findall(r"(\w\.png): PSNR (\S+) dB", capsys.readouterr().out))
    assert main(["eval", "--model", "shift", "--data", str(folder), "--resolution", "0", "--batch-size", "1",
                 "--out", str(tmp_path / "eval"), "--device", "cpu"]) == 0
    per_image = json.loads((tmp_path / "eval" / "eval.json").read_text())["per_image"]
    assert {r["name"]: f"{r['psnr']:.2f}" for r in per_image} == printed
    assert float(printed["a.png"]) == pytest.approx(20 * math.log10(255 / 0.3), abs=0.01)


def test_mean_line_counts_the_images_it_averages():
    from dcae_ext.commands.reconstruct import mean_psnr_line

    assert mean_psnr_line([30.0, float("inf"), 20.0], "out") == \
        "mean PSNR over 2 images: 25.00 dB (1 exact copy, PSNR inf, left out) -> out"
    assert mean_psnr_line([float("inf")], "out") == "mean PSNR over 0 images: inf (1 exact copy, PSNR inf, left out) -> out"
