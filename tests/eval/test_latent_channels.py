"""PSNR per channel prefix of a structured latent: the evaluation loop and `dcae-ext eval --latent-channels`."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from dcae_ext.data.psnr import psnr_per_image
from dcae_ext.eval.evaluate import evaluate
from dcae_ext.eval.images import EvalImages
from dcae_ext.models.output import AutoencoderOutput


def _write_images(folder, count=3, size=32):
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8)).save(folder / f"img{i}.png")
    return folder


class PrefixStandIn(torch.nn.Module):
    """A stand-in structured autoencoder: from c of 16 channels, the image with noise (16 - c) / 40."""

    def __init__(self):
        super().__init__()
        self.asked = []

    def forward(self, x, latent_channels=None):
        self.asked.append(latent_channels)
        channels = 16 if latent_channels is None else latent_channels
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
        return AutoencoderOutput(x + (16 - channels) / 40 * noise)


def test_evaluate_reports_the_psnr_of_each_prefix(tmp_path):
    dataset = EvalImages([str(p) for p in sorted(_write_images(tmp_path).iterdir())], 32)
    model = PrefixStandIn()
    result = evaluate(model, DataLoader(dataset, batch_size=2), latent_channels=[4, 8, 15])
    table = result["metrics"]["psnr_by_latent_channels"]
    assert list(table) == [4, 8, 15] and table[4] < table[8] < table[15]
    assert model.asked == [None, 4, 8, 15, None, 4, 8, 15]  # two batches: the full latent, then each prefix
    result = evaluate(model, DataLoader(dataset, batch_size=3), latent_channels=[8])
    images = torch.stack([dataset[i][1] for i in range(3)])
    table = result["metrics"]["psnr_by_latent_channels"]
    expected = psnr_per_image(((model(images * 2 - 1, latent_channels=8).reconstruction + 1) / 2).clamp(0, 1), images)
    assert table[8] == pytest.approx(float(expected.mean()), rel=1e-5)
    assert "psnr_by_latent_channels" not in evaluate(PrefixStandIn(), DataLoader(dataset))["metrics"]


@pytest.fixture
def data(tmp_path, monkeypatch):
    monkeypatch.delenv("DCAE_EXT_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.delenv("DCAE_EXT_LPIPS_WEIGHTS", raising=False)
    folder = tmp_path / "data"
    folder.mkdir()
    return _write_images(folder)


def _eval(data, out, *flags, model="tiny-structured"):
    from dcae_ext.cli import main

    main(["eval", "--model", model, "--data", str(data), "--resolution", "32", "--batch-size", "2",
          "--out", str(out), *flags])
    return json.loads((out / "eval.json").read_text())


def test_eval_command_writes_the_prefix_table(data, tmp_path, capsys):
    document = _eval(data, tmp_path / "auto")
    table = document["metrics"]["psnr_by_latent_channels"]
    assert list(table) == ["2", "4", "6", "8", "10", "12", "14", "16"]  # eighths of the 16 channels
    assert document["latent_channels"] == [2, 4, 6, 8, 10, 12, 14, 16]
    assert table["16"] == pytest.approx(document["metrics"]["psnr"], rel=1e-5)  # all channels: the full latent
    assert len({round(value, 6) for value in table.values()}) == 8  # each from its own prefix
    printed = capsys.readouterr().out
    assert "PSNR by latent channels" in printed and f"{table['6']:.3f}" in printed
    assert list(_eval(data, tmp_path / "some", "--latent-channels", "3,5")["metrics"]["psnr_by_latent_channels"]) \
        == ["3", "5"]
    assert "psnr_by_latent_channels" not in _eval(data, tmp_path / "none", "--latent-channels", "none")["metrics"]
    assert "psnr_by_latent_channels" not in _eval(data, tmp_path / "plain", model="tiny")["metrics"]
    native = _eval(data, tmp_path / "native", "--latent-channels", "4", "--resolution", "0", "--batch-size", "1")
    assert list(native["metrics"]["psnr_by_latent_channels"]) == ["4"]
    assert native["metrics"]["psnr_by_latent_channels"]["4"] != pytest.approx(native["metrics"]["psnr"], rel=1e-4)


@pytest.mark.parametrize("model,value,message", [
    ("tiny", "4", "no structured latent"),
    ("tiny-structured", "0,4", r"1\.\.16"),
    ("tiny-structured", "17", r"1\.\.16"),
    ("tiny-structured", "four", "comma"),
])
def test_eval_command_refuses_bad_channel_counts(data, tmp_path, model, value, message):
    with pytest.raises(SystemExit, match=f"--latent-channels.*{message}"):
        _eval(data, tmp_path / "out", "--latent-channels", value, model=model)
