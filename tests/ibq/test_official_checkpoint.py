"""The paper's tokenizer against the official code: an independent copy of SEED-Voken's IBQ
(seed_voken_ibq.py) with random weights, written in the official Lightning checkpoint layout, loads
into IBQTokenizer and gives the same indices and reconstructions."""
import os

import pytest
import torch
from safetensors.torch import save_file

import seed_voken_ibq as official
from dcae_ext.models import IBQTokenizer
from dcae_ext.models.ibq.tokenizer import IBQConfig, get_ibq_config
from dcae_ext.models.ibq.vqgan import VQGANConfig
from dcae_ext.train.discriminator import PatchDiscriminator

# The official ddconfig shape at small widths: two levels, attention at 16x16 (the second level)
# and in the middle blocks, nin shortcuts where the width changes.
DDCONFIG = dict(double_z=False, z_channels=32, resolution=32, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 2],
                num_res_blocks=2, attn_resolutions=[16], dropout=0.0)
CODES, DIM = 96, 16


def _relative_error(actual, expected):
    return float((actual - expected).detach().abs().max() / expected.abs().max())


@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(0)
    model = official.IBQ(DDCONFIG, n_embed=CODES, embed_dim=DIM).eval()
    with torch.no_grad():  # non-trivial norm affines and biases, so a swapped or dropped one shows
        for name, parameter in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                parameter.add_(0.1 * torch.randn_like(parameter))
    return model


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(1)
    return torch.rand(2, 3, 32, 48) * 2 - 1  # not square, not the configured resolution


def _official_outputs(model, images):
    with torch.no_grad():
        quant, _, (_, _, indices) = model.encode(images)
        return indices.reshape(images.shape[0], images.shape[2] // 2, images.shape[3] // 2), model.decode(quant)


def _assert_same(tokenizer, reference, images):
    indices, reconstruction = _official_outputs(reference, images)
    with torch.no_grad():
        ours = tokenizer(images)
    assert torch.equal(ours.indices, indices)
    assert _relative_error(ours.reconstruction, reconstruction) <= 1e-5
    assert _relative_error(tokenizer.decode_indices(indices), reconstruction) <= 1e-5


def test_lightning_checkpoint_loads_without_running_pickled_code(reference, images, tmp_path):
    marker = tmp_path / "pickled_code_ran"
    path = tmp_path / "imagenet256_96.ckpt"
    loss = torch.nn.Module()
    loss.discriminator = PatchDiscriminator(3, 8, 2)
    official.lightning_checkpoint(reference, path, loss=loss, ema_shift=0.0, hostile_marker=str(marker))

    tokenizer = IBQTokenizer.from_pretrained(path)

    assert not marker.exists(), "loading the checkpoint executed pickled code"
    assert not tokenizer.training
    backbone = tokenizer.config.backbone
    assert isinstance(backbone, VQGANConfig) and backbone.ch == 32 and backbone.ch_mult == (1, 2)
    assert backbone.num_res_blocks == 2 and tokenizer.config.num_codes == CODES and tokenizer.config.dim == DIM
    _assert_same(tokenizer, reference, images)


def test_ema_weights_and_given_config(reference, images, tmp_path):
    path = tmp_path / "run.ckpt"
    official.lightning_checkpoint(reference, path, ema_shift=0.01)
    shifted = official.IBQ(DDCONFIG, n_embed=CODES, embed_dim=DIM).eval()
    with torch.no_grad():
        for mine, theirs in zip(shifted.parameters(), reference.parameters()):
            mine.copy_(theirs + 0.01)
    config = IBQConfig(VQGANConfig(**{k: v for k, v in DDCONFIG.items() if k != "double_z"}), num_codes=CODES, dim=DIM)
    tokenizer = IBQTokenizer.from_pretrained(tmp_path, config=config, use_ema=True)  # the folder holding one .ckpt
    _assert_same(tokenizer, shifted, images)
    official.lightning_checkpoint(reference, tmp_path / "no_ema.ckpt")
    with pytest.raises(ValueError, match="use_ema"):
        IBQTokenizer.from_pretrained(tmp_path / "no_ema.ckpt", use_ema=True)
    with pytest.raises(ValueError, match="'config'"):
        IBQTokenizer.from_pretrained(path, config="ibq-f16-16384")


def test_safetensors_export_and_dtype(reference, images, tmp_path):
    folder = tmp_path / "export" / "tokenizer"
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(folder / "ibq.safetensors"))
    tokenizer = IBQTokenizer.from_pretrained(tmp_path / "export", subfolder="tokenizer")
    _assert_same(tokenizer, reference, images)
    half = IBQTokenizer.from_pretrained(folder / "ibq.safetensors", torch_dtype=torch.bfloat16)
    assert half.encoder.conv_in.weight.dtype == torch.bfloat16 and not half.training


def test_save_and_from_pretrained_round_trip(reference, images, tmp_path):
    path = tmp_path / "run.ckpt"
    official.lightning_checkpoint(reference, path)
    tokenizer = IBQTokenizer.from_pretrained(path)
    tokenizer.save_pretrained(tmp_path / "saved")
    assert sorted(os.listdir(tmp_path / "saved")) == ["config.json", "model.safetensors"]
    loaded = IBQTokenizer.from_pretrained(tmp_path / "saved")
    assert loaded.config == tokenizer.config and not loaded.training
    for (name, mine), theirs in zip(loaded.state_dict().items(), tokenizer.state_dict().values()):
        assert torch.equal(mine, theirs), name
    _assert_same(loaded, reference, images)


def test_paper_presets_use_the_official_backbone():
    for name, codes in (("ibq-f16-16384", 2 ** 14), ("ibq-f16-262144", 2 ** 18)):
        config = get_ibq_config(name)
        assert config.backbone == VQGANConfig(ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=4,
                                              attn_resolutions=(16,), resolution=256, z_channels=256)
        assert (config.num_codes, config.dim, config.spatial_compression) == (codes, 256, 16)
        assert (config.beta, config.entropy_weight, config.entropy_temperature, config.codebook_init_std) == \
            (0.25, 0.05, 0.01, 1.0)
    assert get_ibq_config("ibq-dcae-f16-16384").backbone_type == "dc-ae"


def test_official_module_names_match():
    """Every parameter of the full-size official model has a same-named, same-shaped one here."""
    ddconfig = dict(DDCONFIG, ch=128, ch_mult=[1, 1, 2, 2, 4], num_res_blocks=4, resolution=256, z_channels=256)
    with torch.device("meta"):
        theirs = official.IBQ(ddconfig, n_embed=1024, embed_dim=256).state_dict()
        ours = IBQTokenizer("ibq-f16-1024").state_dict()
    theirs["quantizer.codebook"] = theirs.pop("quantize.embedding.weight")
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in theirs.items()}


def test_not_a_checkpoint_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="'path'"):
        IBQTokenizer.from_pretrained(bad)
    with pytest.raises(FileNotFoundError, match="'path'"):
        IBQTokenizer.from_pretrained(tmp_path / "missing")


def test_load_model_from_path_reads_official_checkpoints(reference, images, tmp_path):
    """What `dcae-ext eval/reconstruct --model FILE` use: the .ckpt (live or --ema weights) and a
    safetensors export are recognised as official IBQ checkpoints."""
    from dcae_ext.models.loading import load_model_from_path

    official.lightning_checkpoint(reference, tmp_path / "run.ckpt", ema_shift=0.0)
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(tmp_path / "export.safetensors"))
    for path, ema in ((tmp_path / "run.ckpt", False), (tmp_path / "run.ckpt", True),
                      (tmp_path / "export.safetensors", False)):
        model = load_model_from_path(path, ema=ema)
        assert isinstance(model, IBQTokenizer) and not model.training
        _assert_same(model, reference, images)
