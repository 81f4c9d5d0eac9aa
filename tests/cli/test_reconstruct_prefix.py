"""`dcae-ext reconstruct --latent-channels C`: a structured latent's reconstruction from its first C
channels, as `ae(x, latent_channels=C)`; refused for models without one and for C out of range."""
import numpy as np
import pytest
import torch
from PIL import Image

from dcae_ext.cli import main
from dcae_ext.data.images import load_image
from dcae_ext.data.psnr import to_unit
from dcae_ext.models import DCAE

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("prefix")
    torch.manual_seed(0)
    for name in ("tiny-structured", "tiny"):
        DCAE.from_config(name).save_pretrained(root / name)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (37, 50, 3), dtype=np.uint8)).save(root / "a.png")
    return root


def _reconstructed(saved, tmp_path, channels):
    out = tmp_path / f"out{channels}"
    assert main(["reconstruct", "--model", str(saved / "tiny-structured"), "--input", str(saved / "a.png"),
                 "--out", str(out), "--latent-channels", str(channels), "--device", "cpu"]) == 0
    return np.asarray(Image.open(out / "a.png"))


def test_a_prefix_reconstruction_is_the_model_s(saved, tmp_path):
    model = DCAE.from_pretrained(saved / "tiny-structured")
    x = load_image(str(saved / "a.png"), None)[None] * 2 - 1
    for channels in (4, 16):
        with torch.no_grad():
            want = to_unit(model(x, pad=True, latent_channels=channels).reconstruction)[0]
        want = (want * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        np.testing.assert_array_equal(_reconstructed(saved, tmp_path, channels), want)
    assert not np.array_equal(_reconstructed(saved, tmp_path, 4), _reconstructed(saved, tmp_path, 16))


@pytest.mark.parametrize("model, channels, message", [
    ("tiny", 2, "--latent-channels: .*no structured latent"),
    ("tiny-structured", 17, "--latent-channels: 17 outside 1..16"),
    ("tiny-structured", 0, "--latent-channels: 0 outside 1..16"),
])
def test_a_prefix_the_model_cannot_take_is_one_line(saved, tmp_path, model, channels, message):
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match=message):
        main(["reconstruct", "--model", str(saved / model), "--input", str(saved / "a.png"), "--out", str(out),
              "--latent-channels", str(channels), "--device", "cpu"])
    assert not out.exists()


def test_a_tokenizer_has_no_prefix(saved, tmp_path):
    with pytest.raises(SystemExit, match="--latent-channels: IBQTokenizer is a tokenizer"):
        main(["reconstruct", "--model", "ibq-tiny", "--input", str(saved / "a.png"), "--out", str(tmp_path / "o"),
              "--latent-channels", "4", "--device", "cpu"])
