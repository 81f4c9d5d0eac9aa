"""Numerical parity with diffusers' AutoencoderDC on the same weights (the models' acceptance test)."""
import copy

import pytest
import torch

from dcae_ext.models import DCAE
from dcae_ext.models.dcae.config import EFFICIENTVIT_MODEL_NAMES, get_config, preset_names
from dcae_ext.models.formats.dcae_weights import to_efficientvit
from dcae_ext.ops import use_reference
from dcae_configs import CONFIGS, diffusers_kwargs, reduced
from official_dc_ae import ZOO

diffusers = pytest.importorskip("diffusers")


def _randomise_norms(model: torch.nn.Module) -> None:
    """Non-trivial affine norm parameters and BatchNorm running statistics."""
    gen = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(0.2 * torch.randn(module.num_features, generator=gen))
            module.running_var.copy_(0.5 + torch.rand(module.num_features, generator=gen))
        weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
        if type(module).__name__ in ("RMSNorm", "BatchNorm2d") and weight is not None:
            weight.copy_(1 + 0.2 * torch.randn(weight.shape, generator=gen))
            if bias is not None:
                bias.copy_(0.1 * torch.randn(bias.shape, generator=gen))


def _assert_rel_close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    assert ours.shape == theirs.shape
    scale = theirs.abs().max().item()
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5 * scale)


@pytest.fixture(scope="module", params=list(CONFIGS))
def saved_pair(request, tmp_path_factory):
    torch.manual_seed(0)
    config = CONFIGS[request.param]
    reference = diffusers.AutoencoderDC(**diffusers_kwargs(config)).eval()
    with torch.no_grad():
        _randomise_norms(reference)
    path = tmp_path_factory.mktemp(request.param)
    reference.save_pretrained(path)
    return reference, DCAE.from_pretrained(path).eval(), config


@pytest.mark.parametrize("reference_ops", [False, True], ids=["fast_ops", "reference_ops"])
def test_encode_decode_match_diffusers(saved_pair, reference_ops):
    reference, ours, config = saved_pair
    assert ours.config == config
    assert ours.scaling_factor == pytest.approx(config.scaling_factor)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    use_reference(reference_ops)
    with torch.no_grad():
        latent = reference.encode(x).latent
        _assert_rel_close(ours.encode(x), latent)
        _assert_rel_close(ours.decode(latent), reference.decode(latent).sample)
        _assert_rel_close(ours(x).reconstruction, reference(x).sample)


def test_spatial_compression_matches_diffusers(saved_pair):
    reference, ours, _ = saved_pair
    assert ours.spatial_compression == reference.spatial_compression_ratio
    with torch.no_grad():
        assert ours.encode(torch.zeros(1, 3, 32, 32)).shape[-1] == 32 // ours.spatial_compression


def test_state_dict_keys_are_diffusers_keys(saved_pair):
    reference, ours, _ = saved_pair
    assert set(ours.state_dict()) == set(reference.state_dict())


@pytest.mark.parametrize("name", ["lite", "dc_ae_1_1"])
def test_our_diffusers_folder_loads_in_diffusers_with_the_same_outputs(name, tmp_path):
    torch.manual_seed(0)
    ours = DCAE(CONFIGS[name]).eval()
    with torch.no_grad():
        _randomise_norms(ours)  # ours has RMSNorm2d, not diffusers' RMSNorm: randomise by hand
        for module in ours.modules():
            if type(module).__name__ == "RMSNorm2d":
                module.weight.normal_(1, 0.2)
                module.bias.normal_(0, 0.1)
    ours.save_pretrained(tmp_path, format="diffusers")
    theirs = diffusers.AutoencoderDC.from_pretrained(tmp_path).eval()
    assert theirs.config.decoder_conv_act_fn == ours.config.decoder_conv_act_fn
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        latent = theirs.encode(x).latent
        _assert_rel_close(ours.encode(x), latent)
        _assert_rel_close(ours.decode(latent), theirs.decode(latent).sample)


DIFFUSERS_PRESETS = [name for name in preset_names() if not get_config(name).structured_latent]


@pytest.mark.parametrize("name", DIFFUSERS_PRESETS)
def test_every_full_size_preset_has_the_names_and_shapes_of_its_diffusers_model(name):
    """What our diffusers-format save of the preset writes (its state dict and config) is what
    diffusers' AutoencoderDC built from that config holds: no missing or unexpected key (meta device)."""
    with torch.device("meta"):
        ours = DCAE.from_config(name)
        theirs = diffusers.AutoencoderDC(**diffusers_kwargs(ours.config))
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in theirs.state_dict().items()}


# The efficientvit presets the official copy (official_dc_ae.py, DC-Gen's zoo) does not build; the
# names of their checkpoints are checked against diffusers' converter of efficientvit checkpoints.
EFFICIENTVIT_1_0 = [name for name in EFFICIENTVIT_MODEL_NAMES if name not in ZOO]


@pytest.mark.parametrize("name", EFFICIENTVIT_1_0)
def test_efficientvit_names_of_the_1_0_presets_convert_back_in_diffusers(name):
    single_file_utils = pytest.importorskip("diffusers.loaders.single_file_utils")
    with torch.device("meta"):
        ours = DCAE.from_config(name)
        official = to_efficientvit(ours)
        converted = single_file_utils.convert_autoencoder_dc_checkpoint_to_diffusers(dict(official))
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in ours.state_dict().items()}


def test_structured_latent_is_not_saved_in_diffusers_format(tmp_path):
    model = DCAE(reduced("dc-ae-f32c128-1.5"))
    with pytest.raises(ValueError, match="structured latent.*format='efficientvit'"):
        model.save_pretrained(tmp_path / "out", format="diffusers")
    assert not (tmp_path / "out").exists()
    model.save_pretrained(tmp_path / "out", format="efficientvit")
    assert DCAE.from_pretrained(tmp_path / "out").config == model.config


@pytest.mark.cuda
def test_cuda_float32_and_bf16_channels_last_match_diffusers(saved_pair):
    reference, ours, _ = saved_pair
    previous = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # a float32 comparison, not TF32
    try:
        reference, ours = reference.cuda(), ours.cuda()
        x = torch.randn(2, 3, 64, 64, device="cuda", generator=torch.Generator("cuda").manual_seed(2))
        with torch.no_grad():
            expected = reference(x).sample
            _assert_rel_close(ours(x).reconstruction, expected)
            fast = ours.to(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = fast(x.to(memory_format=torch.channels_last)).reconstruction
            assert ((out.float() - expected).norm() / expected.norm()).item() < 0.05
            half = copy.deepcopy(fast).to(torch.bfloat16)  # bf16 weights: the fused NHWC RMSNorm path
            out = half(x.to(torch.bfloat16, memory_format=torch.channels_last)).reconstruction
        assert ((out.float() - expected).norm() / expected.norm()).item() < 0.05
    finally:
        torch.backends.cudnn.allow_tf32 = previous
        reference.cpu(), ours.cpu().to(memory_format=torch.contiguous_format)
