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

    from dcae_ext.models import IBQTokenizer

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
    IBQTokenizer.from_config("tiny").save_pretrained(tmp_path / "ibq")
    with pytest.raises(SystemExit, match="--model: .* IBQTokenizer; reconstruct takes a DC-AE"):
        main(["reconstruct", "--model", str(tmp_path / "ibq"), "--input", str(images), "--out", str(out)])
