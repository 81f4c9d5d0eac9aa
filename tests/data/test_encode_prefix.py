"""`dcae-ext encode --latent-channels C`: the first C channels of a structured latent (DC-AE 1.5) in the
shards, `decode` reconstructing from them, and the refusals (a model without a structured latent, C
out of range, a resumed run with another C, decoding them with a model that cannot take C channels)."""
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from dcae_ext.cli import main
from dcae_ext.data import LatentDataset
from dcae_ext.data.images import load_image
from dcae_ext.data.psnr import to_unit
from dcae_ext.models import DCAE

from data_helpers import cli_error, write_image

NAMES = ("a.png", "b.png", "c.png")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("prefix")
    (root / "images").mkdir()
    for seed, name in enumerate(NAMES):
        write_image(root / "images" / name, 32, 32, seed)
    torch.manual_seed(0)
    structured = DCAE.from_config("tiny-structured")  # 16 channels, random weights
    structured.scaling_factor = 0.5
    structured.save_pretrained(root / "structured")
    DCAE.from_config("tiny").save_pretrained(root / "plain")
    return root


def _encode(setup, out, *flags, model="structured"):
    return ["encode", "--model", str(setup / model), "--data", str(setup / "images"), "--out", str(out),
            "--resolution", "32", "--workers", "0", "--device", "cpu", *flags]


@pytest.mark.parametrize("tile", [None, 16], ids=["whole", "tiled"])
def test_prefix_round_trip_equals_the_model_on_a_prefix(setup, tmp_path, tile):
    tiling = [] if tile is None else ["--tile", str(tile)]
    out = tmp_path / "latents"
    assert main(_encode(setup, out, "--latent-channels", "6", *tiling)) == 0
    assert main(["decode", "--input", str(out), "--out", str(tmp_path / "decoded"), "--device", "cpu"]) == 0

    model = DCAE.from_pretrained(setup / "structured")
    if tile is not None:
        model.enable_tiling(tile)
    images = torch.stack([load_image(str(setup / "images" / name), 32) for name in NAMES]) * 2 - 1
    with torch.no_grad():
        latents = model.encode(images, latent_channels=6)
        reconstructions = to_unit(model.decode(latents))
    dataset = LatentDataset(out, scaled=False)
    assert latents.shape == (3, 6, 4, 4) and len(dataset) == 3
    for i, name in enumerate(NAMES):
        assert torch.equal(dataset[i], latents[i]), name
        expected = (reconstructions[i] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        assert np.array_equal(np.asarray(Image.open(tmp_path / "decoded" / name)), expected), name
    assert torch.equal(LatentDataset(out)[0], latents[0] * 0.5)  # scaled like the full latent
    metadata = json.loads((out / "metadata.json").read_text())
    assert (metadata["latent_channels"], metadata["model_latent_channels"]) == (6, 16)
    assert metadata["plan"]["latent_channels"] == 6 and "--latent-channels 6" in metadata["command"]


def test_bad_channel_counts_stop_before_any_output(setup, tmp_path, capsys):
    out = tmp_path / "out"
    cases = [(("--latent-channels", "2"), "plain", "--latent-channels: .*no structured latent"),
             (("--latent-channels", "17"), "structured", r"--latent-channels: 17 outside 1\.\.16"),
             (("--latent-channels", "0"), "structured", r"--latent-channels: 0 outside 1\.\.16")]
    for flags, model, message in cases:
        error = cli_error(_encode(setup, out, *flags, model=model), capsys)
        assert re.search(message, error) and "\n" not in error, error
        assert not out.exists()


def test_a_resumed_run_keeps_its_channel_count(setup, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(_encode(setup, out, "--latent-channels", "6")) == 0
    for flags, shown in ((["--latent-channels", "8"], "6 -> 8"), ([], "6 -> all")):
        with pytest.raises(SystemExit, match=f"--out: .*latent_channels {shown}.*--overwrite"):
            main(_encode(setup, out, *flags))
    capsys.readouterr()
    assert main(_encode(setup, out, "--latent-channels", "6")) == 0
    assert "nothing left to do" in capsys.readouterr().out
    full = tmp_path / "full"  # every channel, named or not, is one plan
    assert main(_encode(setup, full)) == 0
    capsys.readouterr()
    assert main(_encode(setup, full, "--latent-channels", "16")) == 0
    assert "nothing left to do" in capsys.readouterr().out
    assert LatentDataset(full)[0].shape == (16, 4, 4)


def test_decoding_a_prefix_with_a_model_that_cannot_take_it_is_refused(setup, tmp_path):
    out = tmp_path / "latents"
    assert main(_encode(setup, out, "--latent-channels", "6")) == 0
    with pytest.raises(SystemExit, match="--model: .* holds latents of 6 channels, and .*no structured latent"):
        main(["decode", "--input", str(out), "--out", str(tmp_path / "decoded"), "--model", str(setup / "plain"),
              "--device", "cpu"])
    assert not (tmp_path / "decoded").exists()
