"""The DC-Gen presets (DC-AE 1.5 / 1.1, Lite, in-1.0-256px) against an independent copy of the official
modules (official_dc_ae.py): the same checkpoint names and shapes at full size (meta device), and the
same encode / decode numbers on the official weights at reduced widths and depths (float32, 1e-5
relative), full latents and channel prefixes of the structured latent."""
import json

import pytest
import torch

from dcae_ext.models import DCAE
from dcae_ext.models.dcae.config import efficientvit_model_name
from dcae_ext.models.formats.dcae_weights import to_efficientvit
from dcae_ext.ops import use_reference
from dcae_configs import MAX_DEPTH, WIDTH_DIVISOR, reduced
from official_dc_ae import ZOO, OfficialDCAE, official_config

STRUCTURED = ["dc-ae-f32c128-1.5", "dc-ae-f64c128-1.5"]
WITH_ATTENTION = ["dc-ae-lite-f32c32-sana-1.1", "dc-ae-f32c32-in-1.0-256px"]


def _randomise_norms(model: torch.nn.Module) -> None:
    gen = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(0.2 * torch.randn(module.num_features, generator=gen))
            module.running_var.copy_(0.5 + torch.rand(module.num_features, generator=gen))
        if isinstance(module, (torch.nn.BatchNorm2d, torch.nn.LayerNorm)):
            module.weight.copy_(1 + 0.2 * torch.randn(module.weight.shape, generator=gen))
            module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=gen))


def _assert_rel_close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5 * theirs.abs().max().item())


@pytest.mark.parametrize("name", list(ZOO))
def test_full_size_checkpoint_names_and_shapes_are_the_official_ones(name):
    with torch.device("meta"):
        official = OfficialDCAE(official_config(name))
        ours = DCAE.from_config(name)
    theirs = {k: tuple(v.shape) for k, v in official.state_dict().items()}
    mapped = {k: tuple(v.shape) for k, v in to_efficientvit(ours).items()}
    assert mapped == theirs
    assert efficientvit_model_name(ours.config) == name
    assert ours.config.structured_latent == (name in STRUCTURED)


@pytest.fixture(scope="module", params=list(ZOO))
def loaded_pair(request, tmp_path_factory):
    """The official copy at reduced size with random weights, and ours loaded from its state dict as
    DC-Gen saves it (model.safetensors)."""
    from safetensors.torch import save_file

    name = request.param
    torch.manual_seed(0)
    official = OfficialDCAE(official_config(name, WIDTH_DIVISOR, MAX_DEPTH)).eval()
    with torch.no_grad():
        _randomise_norms(official)
    path = tmp_path_factory.mktemp(name)
    save_file({k: v.contiguous() for k, v in official.state_dict().items()}, str(path / "model.safetensors"))
    return name, official, DCAE.from_pretrained(path, config=reduced(name))


@pytest.mark.parametrize("reference_ops", [False, True], ids=["fast_ops", "reference_ops"])
def test_encode_decode_match_the_official_modules(loaded_pair, reference_ops):
    name, official, ours = loaded_pair
    size = 128 if name in WITH_ATTENTION else 64  # attention at 16x16 tokens (linear form) and 4x4 (quadratic)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(2))
    use_reference(reference_ops)
    try:
        with torch.no_grad():
            latent = official.encode(x)
            _assert_rel_close(ours.encode(x), latent)
            _assert_rel_close(ours.decode(latent), official.decode(latent))
            if name in STRUCTURED:
                for channels in (16, 64):
                    _assert_rel_close(ours.encode(x, latent_channels=channels), official.encode(x, channels))
                for ours_z, theirs_z in zip(ours.encode(x, latent_channels=[16, 64]), official.encode(x, [16, 64])):
                    _assert_rel_close(ours_z, theirs_z)
                prefix = latent[:, :16]
                _assert_rel_close(ours.decode(prefix), official.decode(prefix))
                _assert_rel_close(ours(x, latent_channels=16).reconstruction, official.decode(official.encode(x, 16)))
            else:
                with pytest.raises(ValueError, match="no structured latent"):
                    ours.encode(x, latent_channels=16)
                with pytest.raises(ValueError, match="no structured latent"):
                    ours.decode(latent[:, :16])
    finally:
        use_reference(False)


def test_efficientvit_folder_names_the_dc_gen_model(tmp_path):
    for name in ZOO:
        with torch.device("meta"):
            model = DCAE.from_config(name)
        assert efficientvit_model_name(model.config.replace(name=None)) == name
    model = DCAE.from_config(reduced("dc-ae-f32c128-1.5").replace(name="dc-ae-f32c128-1.5"))
    model.save_pretrained(tmp_path, format="efficientvit")
    meta = json.loads((tmp_path / "config.json").read_text())
    assert meta["model_name"] == "dc-ae-f32c128-1.5"
    assert DCAE.from_pretrained(tmp_path).config.structured_latent
