import pytest
import torch

from dcae_ext.models import IBQTokenizer
from dcae_ext.models.ibq.tokenizer import IBQConfig, get_ibq_config


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return IBQTokenizer("tiny").eval()


def test_tiny_forward_encode_decode_agree(tiny):
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    out = tiny(x)
    f = tiny.spatial_compression
    assert f == 4 and out.reconstruction.shape == x.shape
    assert out.indices.shape == (2, 32 // f, 32 // f)
    indices = tiny.encode(x)
    assert torch.equal(indices, out.indices)
    torch.testing.assert_close(tiny.decode_indices(indices), out.reconstruction)
    assert out.losses["quantizer"].ndim == 0 and 0 < float(out.stats["codebook_usage"]) <= 1


def test_gradients_reach_encoder_codebook_and_decoder(tiny):
    model = IBQTokenizer("tiny")
    out = model(torch.rand(1, 3, 16, 16))
    (out.reconstruction.abs().mean() + out.losses["quantizer"]).backward()
    for name in ("encoder.conv_in.weight", "quant_conv.weight", "quantizer.codebook", "decoder.conv_out.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_save_and_load_roundtrip(tiny, tmp_path):
    tiny.save_pretrained(tmp_path / "tok")
    loaded = IBQTokenizer.from_pretrained(tmp_path / "tok").eval()
    x = torch.rand(1, 3, 16, 16)
    assert loaded.config.num_codes == tiny.config.num_codes
    torch.testing.assert_close(loaded(x).reconstruction, tiny(x).reconstruction)


def test_dcae_backbone_presets():
    for name, codes in (("ibq-dcae-f16-16384", 2 ** 14), ("ibq-dcae-f16-262144", 2 ** 18)):
        config = get_ibq_config(name)
        assert config.spatial_compression == 16 and config.dim == 256 and config.num_codes == codes
        assert set(config.backbone.encoder_block_types) == {"ResBlock"}  # convolution only
    with pytest.raises(ValueError, match="'name'"):
        get_ibq_config("ibq-huge")


def test_config_round_trip_and_old_configs():
    """A saved config reads back equal, for both backbones; a config saved before the VQGAN backbone
    existed (no backbone type) still reads as a DC-AE backbone."""
    for name in ("tiny", "ibq-f16-16384"):
        config = get_ibq_config(name)
        assert IBQConfig.from_dict(config.to_dict()) == config
    old = get_ibq_config("tiny").to_dict()
    del old["backbone"]["type"], old["codebook_init_std"]
    assert IBQConfig.from_dict(old).backbone == get_ibq_config("tiny").backbone


def test_bad_inputs_raise(tiny):
    with pytest.raises(ValueError, match="'x'"):
        tiny(torch.rand(1, 3, 18, 16))
    with pytest.raises(ValueError, match="'indices'"):
        tiny.decode_indices(torch.zeros(4, 4, dtype=torch.long))


def test_vqgan_gradient_checkpointing_gives_the_same_gradients():
    from dcae_ext.models.ibq.vqgan import VQGANConfig

    config = IBQConfig(VQGANConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), resolution=16,
                                   z_channels=32), num_codes=32, dim=8)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = IBQTokenizer(config)
        model.set_gradient_checkpointing(checkpointing)
        output = model(x)
        (output.reconstruction.abs().mean() + output.losses["quantizer"]).backward()
        grads.append({name: p.grad.clone() for name, p in model.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, msg=name)
