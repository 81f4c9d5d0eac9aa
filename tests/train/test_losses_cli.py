import json
import os

import pytest
import torch
import torchvision

from dcae_ext.train.discriminator import PatchDiscriminator
from dcae_ext.train.ema import EMA
from dcae_ext.models.perceptual import PerceptualLoss
from dcae_ext.train.losses import (LeCAM, hinge_discriminator_loss, hinge_generator_loss,
                                   reconstruction_loss)


def test_lpips_loads_local_torchvision_trunk_and_never_downloads(tmp_path, monkeypatch):
    torch.manual_seed(0)
    trunk = torchvision.models.alexnet(weights=None).features.state_dict()
    torch.save({f"features.{k}": v for k, v in trunk.items()}, tmp_path / "alexnet.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no_cache"))  # a download would land here
    loss = PerceptualLoss("alex", weights=str(tmp_path / "alexnet.pth"))
    assert loss.pretrained_trunk
    torch.testing.assert_close(getattr(loss.lpips.net.slice1, "0").weight, trunk["0.weight"])
    torch.testing.assert_close(getattr(loss.lpips.net.slice5, "10").weight, trunk["10.weight"])
    assert not os.path.exists(tmp_path / "no_cache")
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert float(loss(x, x)) == pytest.approx(0.0, abs=1e-6) and float(loss(x, -x)) > 0


def test_lpips_without_weights_warns_and_bad_weights_fail(tmp_path, monkeypatch):
    monkeypatch.delenv("DCAE_EXT_LPIPS_WEIGHTS", raising=False)
    with pytest.warns(UserWarning, match="RANDOM"):
        PerceptualLoss("alex")
    torch.save({"features.0.weight": torch.zeros(64, 3, 11, 11)}, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="missing"):
        PerceptualLoss("alex", weights=str(tmp_path / "partial.pth"))


def test_gan_losses_and_lecam():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    assert float(hinge_discriminator_loss(real, fake)) == pytest.approx(0.5 * (0.25 + 0.5))
    assert float(hinge_generator_loss(fake)) == pytest.approx(1.0)
    lecam = LeCAM(decay=0.5)
    lecam.update(torch.tensor(1.0), torch.tensor(-1.0))
    assert float(lecam.ema_real) == 0.5 and float(lecam.ema_fake) == -0.5
    assert float(lecam(real, fake)) == pytest.approx(((2.5 ** 2 + 1.0) / 2) + ((2.5 ** 2 + 0.25) / 2))
    assert float(reconstruction_loss(real, fake, "l2")) == pytest.approx((16 + 0.25) / 2)
    with pytest.raises(ValueError, match="'kind'"):
        reconstruction_loss(real, fake, "l3")


def test_patch_discriminator_shapes():
    disc = PatchDiscriminator(3, 8, num_layers=3)
    assert disc(torch.rand(2, 3, 64, 64)).shape == (2, 1, 6, 6)
    assert PatchDiscriminator(3, 8, 2, norm="group")(torch.rand(1, 3, 32, 32)).shape[1] == 1


def test_ema_tracks_trainable_and_copies_frozen():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    model[1].weight.requires_grad_(False)
    ema = EMA(model, decay=0.75, warmup=False)
    with torch.no_grad():
        model[0].weight.add_(4.0)
        model[1].weight.add_(1.0)
        model[1].running_mean.add_(2.0)
    start = ema.model[0].weight.clone()
    ema.update(model)
    torch.testing.assert_close(ema.model[0].weight, start + 1.0)
    torch.testing.assert_close(ema.model[1].weight, model[1].weight)
    torch.testing.assert_close(ema.model[1].running_mean, model[1].running_mean)


def test_ema_warms_up_so_a_short_run_exports_trained_weights():
    """decay min(0.999, (1 + n) / (10 + n)) at update n (LitEma's): the first update moves the shadow
    9/11 of the way, and the warm-up count survives a state_dict round trip."""
    model = torch.nn.Linear(2, 2)
    ema = EMA(model, decay=0.999)
    start = ema.model.weight.clone()
    with torch.no_grad():
        model.weight.add_(11.0)
    ema.update(model)
    torch.testing.assert_close(ema.model.weight, start + 9.0)
    for _ in range(20):
        ema.update(model)
    assert ema.current_decay() == pytest.approx(23 / 32)
    restored = EMA(model, decay=0.999)
    restored.load_state_dict(ema.state_dict())
    assert restored.updates == 21 and restored.current_decay() == ema.current_decay()
    assert EMA(model, decay=0.5, warmup=False).current_decay() == 0.5


def test_cli_trains_dcae_and_resumes(tmp_path, capsys):
    from dcae_ext.commands import train
    import argparse

    parser = argparse.ArgumentParser()
    train.add_parser(parser.add_subparsers())
    out = str(tmp_path / "cli")
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"lpips_weight": 0.0, "num_workers": 0, "device": "cpu", "log_every": 1}))
    base = ["train", "dcae", "--preset", "tiny", "--batch-size", "2", "--resolution", "16", "--out", out,
            "--config", str(config), "--phase", "2"]
    assert train.run(parser.parse_args(base + ["--steps", "2"])) == 0
    assert train.run(parser.parse_args(base + ["--steps", "3", "--resume"])) == 0
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for name in ("checkpoint.pt", "config.json", "loss_curve.png", "model/config.json", "model_ema/config.json"):
        assert os.path.isfile(os.path.join(out, name)), name
    assert any(f.endswith(".png") for f in os.listdir(os.path.join(out, "images")))
    assert "step 3:" in capsys.readouterr().out
