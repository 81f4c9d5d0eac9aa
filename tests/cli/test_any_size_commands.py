"""Every command takes images of any size, for both model kinds (docs/any_size.md): `reconstruct`,
`eval --resolution 0`, `encode`/`tokenize --keep-size` then `decode`, tiled and not. The outputs
have the sources' sizes and hold the top-left corner of the padded image's reconstruction."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from dcae_ext.cli import main
from dcae_ext.data.images import load_image
from dcae_ext.data.psnr import psnr_per_image, to_unit
from dcae_ext.models import DCAE, IBQTokenizer
from dcae_ext.models.padding import pad_to_multiple

pytestmark = pytest.mark.usefixtures("one_thread")

# (height, width): 250x333, one pixel over a multiple of the factor (8 for DC-AE, 4 for IBQ), smaller than it
SIZES = {"dcae": {"odd": (250, 333), "one_over": (33, 40), "small": (5, 3)},
         "ibq": {"odd": (250, 333), "one_over": (17, 16), "small": (3, 2), "ibq_eval_abort": (150, 200)}}
COMMAND = {"dcae": "encode", "ibq": "tokenize"}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The tiny model of each kind saved to a folder, and a folder of images of its sizes."""
    root = tmp_path_factory.mktemp("any_size")
    torch.manual_seed(0)
    models = {"dcae": DCAE.from_config("tiny"), "ibq": IBQTokenizer.from_config("tiny")}
    rng = np.random.default_rng(0)
    result = {}
    for kind, model in models.items():
        model.save_pretrained(root / kind / "model")
        images = root / kind / "images"
        images.mkdir()
        for name, (height, width) in SIZES[kind].items():
            Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(images / f"{name}.png")
        result[kind] = {"model": str(root / kind / "model"), "images": images}
    return result


def _loaded(kind, path):
    cls = DCAE if kind == "dcae" else IBQTokenizer
    return cls.from_pretrained(path).eval()


def _expected(model, path, tile=None):
    """The reconstruction of the image padded by hand, its top-left corner cut by hand; in [0, 1]."""
    target = load_image(str(path), None)[None]
    height, width = target.shape[-2:]
    if tile is not None:
        model.enable_tiling(tile)
    with torch.no_grad():
        padded = pad_to_multiple(target * 2 - 1, model.spatial_compression)
        full = model(padded).reconstruction
    model.disable_tiling()
    return to_unit(full[..., :height, :width]), target


def _png(path):
    return torch.from_numpy(np.asarray(Image.open(path), dtype=np.float32)).permute(2, 0, 1)[None] / 255


def _assert_png_is(path, expected):
    written = _png(path)
    assert written.shape == expected.shape
    assert float((written - expected).abs().max()) <= 1 / 255 + 1e-6   # rounding to 8-bit levels


@pytest.mark.parametrize("tile", [None, 64])
@pytest.mark.parametrize("kind", ["dcae", "ibq"])
def test_reconstruct(saved, kind, tile, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["reconstruct", "--model", saved[kind]["model"], "--input", str(saved[kind]["images"]), "--out", str(out),
            "--device", "cpu"] + (["--tile", str(tile)] if tile else [])
    assert main(argv) == 0
    printed = capsys.readouterr().out
    model = _loaded(kind, saved[kind]["model"])
    for name in SIZES[kind]:
        expected, target = _expected(model, saved[kind]["images"] / f"{name}.png", tile)
        _assert_png_is(out / f"{name}.png", expected)
        assert f"{name}.png: PSNR {float(psnr_per_image(expected, target)):.2f} dB" in printed


@pytest.mark.parametrize("tile", [None, 64])
@pytest.mark.parametrize("kind", ["dcae", "ibq"])
def test_eval_at_native_sizes(saved, kind, tile, tmp_path, monkeypatch):
    monkeypatch.delenv("DCAE_EXT_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.delenv("DCAE_EXT_LPIPS_WEIGHTS", raising=False)
    # SSIM needs 11x11 pixels: an image smaller than the factor goes through reconstruct and decode only
    names = [f"{name}.png" for name in SIZES[kind] if name != "small"]
    listing = saved[kind]["images"] / f"eval_list_{tile}.txt"
    listing.write_text("".join(name + "\n" for name in names))
    out = tmp_path / "eval"
    argv = ["eval", "--model", saved[kind]["model"], "--data", str(listing), "--resolution", "0",
            "--batch-size", "1", "--out", str(out), "--device", "cpu"] + (["--tile", str(tile)] if tile else [])
    assert main(argv) == 0
    document = json.loads((out / "eval.json").read_text())
    assert document["metrics"]["num_images"] == len(names)
    model = _loaded(kind, saved[kind]["model"])
    for record in document["per_image"]:
        expected, target = _expected(model, saved[kind]["images"] / record["name"], tile)
        assert record["psnr"] == pytest.approx(float(psnr_per_image(expected, target)), abs=1e-4)
    if kind == "ibq":
        assert document["metrics"]["codebook"]["num_codes"] == model.config.num_codes


@pytest.mark.parametrize("tile", [None, 64])
@pytest.mark.parametrize("kind", ["dcae", "ibq"])
def test_encode_then_decode_restores_each_size(saved, kind, tile, tmp_path):
    encoded, decoded = tmp_path / "encoded", tmp_path / "decoded"
    argv = [COMMAND[kind], "--model", saved[kind]["model"], "--data", str(saved[kind]["images"]), "--out",
            str(encoded), "--keep-size", "--workers", "0", "--device", "cpu", "--dtype", "fp32"]
    assert main(argv + (["--tile", str(tile)] if tile else [])) == 0
    assert main(["decode", "--input", str(encoded), "--out", str(decoded), "--device", "cpu"]) == 0
    index = [json.loads(line) for line in (encoded / "index.jsonl").read_text().splitlines()]
    model = _loaded(kind, saved[kind]["model"])
    f = model.spatial_compression
    from dcae_ext.data.datasets import open_encoded

    dataset = open_encoded(encoded)
    for i, record in enumerate(index):
        name = record["path"].rsplit("/", 1)[-1]
        height, width = SIZES[kind][name[:-4]]
        assert record["size"] == [height, width] and dataset.image_size(i) == (height, width)
        assert record["shape"][-2:] == [-(-height // f), -(-width // f)]
        expected, _ = _expected(model, saved[kind]["images"] / name, tile)
        _assert_png_is(decoded / name, expected)
