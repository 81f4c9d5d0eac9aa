"""The evaluation loop, its outputs, and the `dcae-ext eval` command."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from dcae_ext.eval.evaluate import evaluate, write_results
from dcae_ext.eval.images import EvalImages, load_image
from dcae_ext.data.psnr import psnr_per_image
from dcae_ext.eval.metrics import build_fid
from dcae_ext.models.output import AutoencoderOutput


def _write_images(folder, count=6, size=(40, 48)):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        array = (rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)
        path = folder / f"img{i}.png"
        Image.fromarray(array).save(path)
        paths.append(str(path))
    return paths


class NoisyCopy(torch.nn.Module):
    """Stand-in autoencoder: image i comes back with noise of strength (i+1)/20, so the order of
    PSNR is known. Images in [-1, 1] in and out."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        generator = torch.Generator().manual_seed(0)
        strength = torch.arange(self.calls, self.calls + x.shape[0]).float().add(1).div(20).view(-1, 1, 1, 1)
        self.calls += x.shape[0]
        return AutoencoderOutput(x + strength * torch.randn(x.shape, generator=generator))


class StandInTokenizer(torch.nn.Module):
    """Stand-in IBQ tokenizer: the input back, with code indices."""

    quantizer = SimpleNamespace(num_codes=8)

    def forward(self, x):
        indices = torch.zeros(x.shape[0], 2, 2, dtype=torch.int64)
        indices[:, 0, 0] = 1
        return AutoencoderOutput(x, indices=indices)


def test_load_image_resizes_and_centre_crops(tmp_path):
    path = _write_images(tmp_path, count=1, size=(40, 48))[0]
    image = load_image(path, 32)
    assert image.shape == (3, 32, 32) and 0 <= float(image.min()) and float(image.max()) <= 1
    assert load_image(path, None).shape == (3, 48, 40)


def test_evaluate_metrics_extremes_and_outputs(tmp_path, small_features):
    dataset = EvalImages(_write_images(tmp_path), 32)
    loader = DataLoader(dataset, batch_size=4)
    result = evaluate(NoisyCopy(), loader, fid=build_fid(feature_extractor=small_features), names=dataset.name, keep=2)
    metrics, per_image = result["metrics"], result["per_image"]
    assert metrics["num_images"] == 6 and metrics["lpips"] is None and "codebook" not in metrics
    psnrs = [r["psnr"] for r in per_image]
    assert psnrs == sorted(psnrs, reverse=True)  # more noise on later images
    assert metrics["psnr"] == pytest.approx(sum(psnrs) / 6)
    assert metrics["rfid"] > 0
    assert [e["name"] for e in result["worst"]] == ["img5.png", "img4.png"]
    assert [e["name"] for e in result["best"]] == ["img0.png", "img1.png"]
    # the kept reconstruction is the one the metric saw
    worst = result["worst"][0]
    assert float(psnr_per_image(worst["reconstruction"][None], worst["original"][None])) == pytest.approx(worst["psnr"])

    paths = write_results(result, str(tmp_path / "out"), {"model": "stand-in"})
    document = json.loads(open(paths["json"]).read())
    assert document["model"] == "stand-in" and document["metrics"]["num_images"] == 6
    assert len(document["per_image"]) == 6 and document["worst"] == ["img5.png", "img4.png"]
    with Image.open(paths["grid"]) as grid:
        assert grid.size[0] > 300 and grid.size[1] > 300


def test_evaluate_tokenizer_reports_codebook_usage(tmp_path):
    dataset = EvalImages(_write_images(tmp_path, count=3), 16)
    result = evaluate(StandInTokenizer(), DataLoader(dataset, batch_size=2), num_codes=8)
    codes = result["metrics"]["codebook"]
    assert codes["num_indices"] == 12 and codes["used_codes"] == 2 and codes["usage"] == 0.25
    assert codes["perplexity"] == pytest.approx(float(np.exp(-(0.25 * np.log(0.25) + 0.75 * np.log(0.75)))))
    assert result["metrics"]["psnr"] > 100  # copies, up to the [-1, 1] round trip
    result["metrics"]["psnr"] = float("inf")  # an exact copy: JSON has no infinity
    write_results(result, str(tmp_path / "out"), {})
    assert json.loads(open(tmp_path / "out" / "eval.json").read())["metrics"]["psnr"] == "inf"


def test_evaluate_rejects_non_finite_reconstructions(tmp_path):
    dataset = EvalImages(_write_images(tmp_path, count=1), 16)

    class Broken(torch.nn.Module):
        def forward(self, x):
            return AutoencoderOutput(x * float("nan"))

    with pytest.raises(FloatingPointError):
        evaluate(Broken(), DataLoader(dataset, batch_size=1))


def test_eval_command_on_a_tiny_model(tmp_path, capsys, monkeypatch):
    pytest.importorskip("dcae_ext.models", reason="needs the DC-AE models")
    from dcae_ext.cli import main

    monkeypatch.delenv("DCAE_EXT_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.delenv("DCAE_EXT_LPIPS_WEIGHTS", raising=False)
    data = tmp_path / "data"
    data.mkdir()
    _write_images(data, count=3, size=(40, 40))
    out = tmp_path / "out"
    main(["eval", "--model", "tiny", "--data", str(data), "--resolution", "32", "--batch-size", "2",
          "--out", str(out)])
    printed = capsys.readouterr()
    assert "rFID    unavailable" in printed.out and "LPIPS   unavailable" in printed.out
    assert "RANDOM weights" in printed.err
    document = json.loads((out / "eval.json").read_text())
    assert document["metrics"]["num_images"] == 3 and document["metrics"]["rfid"] is None
    assert "--inception-weights" in document["notes"]["rfid"]
    assert (out / "worst_best.png").stat().st_size > 1000


def test_eval_command_rejects_a_resolution_off_the_factor(tmp_path):
    pytest.importorskip("dcae_ext.models", reason="needs the DC-AE models")
    from dcae_ext.cli import main

    _write_images(tmp_path, count=1)
    with pytest.raises(SystemExit, match="multiple"):
        main(["eval", "--model", "tiny", "--data", str(tmp_path), "--resolution", "30"])


@pytest.mark.parametrize("model,size", [("tiny", (36, 44)),        # not multiples of the DC-AE's factor 8
                                        ("ibq-tiny", (200, 150))])  # 150 rows: not a multiple of the IBQ's 4
def test_eval_command_native_sizes_pad_either_model(tmp_path, monkeypatch, model, size):
    pytest.importorskip("dcae_ext.models", reason="needs the DC-AE models")
    from dcae_ext.cli import main

    monkeypatch.delenv("DCAE_EXT_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.delenv("DCAE_EXT_LPIPS_WEIGHTS", raising=False)
    data = tmp_path / "data"
    data.mkdir()
    _write_images(data, count=2, size=size)
    assert main(["eval", "--model", model, "--data", str(data), "--resolution", "0", "--batch-size", "1",
                 "--out", str(tmp_path / "out")]) == 0
    document = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert document["metrics"]["num_images"] == 2 and document["resolution"] is None


def test_eval_command_reads_a_training_run_and_its_checkpoint(tmp_path, capsys, monkeypatch):
    from dcae_ext.cli import main

    monkeypatch.delenv("DCAE_EXT_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.delenv("DCAE_EXT_LPIPS_WEIGHTS", raising=False)
    data = tmp_path / "data"
    data.mkdir()
    _write_images(data, count=2, size=(32, 32))
    settings = tmp_path / "quick.json"
    settings.write_text(json.dumps({"lpips_weight": 0.0, "num_workers": 0, "device": "cpu", "image_every": 0}))
    run = tmp_path / "run"
    assert main(["train", "dcae", "--steps", "1", "--batch-size", "1", "--resolution", "16", "--data", str(data),
                 "--out", str(run), "--config", str(settings)]) == 0
    for model in (run, run / "checkpoint.pt"):
        main(["eval", "--model", str(model), "--data", str(data), "--resolution", "32", "--batch-size", "2",
              "--out", str(tmp_path / "eval"), "--ema"])
        document = json.loads((tmp_path / "eval" / "eval.json").read_text())
        assert document["pretrained"] and document["model_kind"] == "DC-AE"
        assert document["metrics"]["num_images"] == 2


def test_a_metric_undefined_for_an_image_is_missing_there_and_the_rest_go_on(tmp_path):
    """A 1x1 image: SSIM (11x11 window) and LPIPS (its trunk pools the image to nothing) are undefined for
    it; the image is named, its values are None, the means are those of the other images."""
    import warnings

    from dcae_ext.models.perceptual import PerceptualLoss

    paths = _write_images(tmp_path, count=3, size=(40, 40))
    Image.new("RGB", (1, 1), (200, 10, 10)).save(tmp_path / "dot.png")
    paths.insert(1, str(tmp_path / "dot.png"))
    dataset = EvalImages(paths, None)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="LPIPS: no trunk weights")
        lpips = PerceptualLoss("vgg", None)
    undefined = []
    result = evaluate(NoisyCopy(), DataLoader(dataset, batch_size=1), names=dataset.name, lpips=lpips,
                      on_undefined=lambda name, metric, reason: undefined.append((name, metric, reason)))
    assert [(name, metric) for name, metric, _ in undefined] == [("dot.png", "ssim"), ("dot.png", "lpips")]
    assert "1x1" in undefined[0][2]
    records = {record["name"]: record for record in result["per_image"]}
    assert records["dot.png"]["ssim"] is None and records["dot.png"]["psnr"] > 0
    metrics = result["metrics"]
    assert metrics["num_images"] == 4 and metrics["missing"] == {"ssim": 1, "lpips": 1}
    others = [record["ssim"] for name, record in records.items() if name != "dot.png"]
    assert metrics["ssim"] == pytest.approx(sum(others) / 3)
    assert metrics["lpips"] is not None and metrics["psnr"] == pytest.approx(
        sum(record["psnr"] for record in records.values()) / 4)


def test_eval_command_goes_on_past_a_one_pixel_image(tmp_path, capsys, monkeypatch):
    from dcae_ext.cli import main

    monkeypatch.delenv("DCAE_EXT_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.delenv("DCAE_EXT_LPIPS_WEIGHTS", raising=False)
    data = tmp_path / "data"
    data.mkdir()
    _write_images(data, count=2, size=(36, 44))
    Image.new("RGB", (1, 1), (0, 0, 0)).save(data / "dot.png")
    out = tmp_path / "out"
    assert main(["eval", "--model", "tiny", "--data", str(data), "--resolution", "0", "--batch-size", "1",
                 "--out", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr()
    warned = [line for line in printed.err.splitlines() if "dot.png" in line]
    assert len(warned) == 1 and "SSIM undefined" in warned[0], printed.err
    assert "mean over 2 of 3 images: undefined for 1" in printed.out
    document = json.loads((out / "eval.json").read_text())
    assert document["metrics"]["missing"] == {"ssim": 1} and document["metrics"]["num_images"] == 3
    assert [record["ssim"] is None for record in document["per_image"]].count(True) == 1


def test_images_of_one_name_in_several_folders_are_told_apart(tmp_path):
    # an ImageFolder tree often repeats file names across classes: eval.json must say which file
    for folder in ("cats", "dogs"):
        (tmp_path / folder).mkdir()
        Image.new("RGB", (16, 16)).save(tmp_path / folder / "0001.png")
    Image.new("RGB", (16, 16)).save(tmp_path / "dogs" / "0002.png")
    dataset = EvalImages([str(tmp_path / "cats" / "0001.png"), str(tmp_path / "dogs" / "0001.png"),
                          str(tmp_path / "dogs" / "0002.png")], 16)
    assert [dataset.name(i) for i in range(3)] == ["cats/0001.png", "dogs/0001.png", "0002.png"]
