"""DCAE API behaviour: sizes and errors, padding, slicing, checkpointing, dtypes, layouts, compile."""
import pytest
import torch

from dcae_ext.models import DCAE, Decoder, Encoder, get_config, preset_names, tiny_config


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return DCAE.from_config("tiny").eval()


def test_tiny_shapes_and_attributes(model):
    assert model.spatial_compression == 8 and model.scaling_factor == 1.0
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        z = model.encode(x)
        assert z.shape == (2, 4, 8, 6)
        assert model.decode(z).shape == x.shape
        assert model(x).reconstruction.shape == x.shape


@pytest.mark.parametrize("shape", [(1, 3, 60, 64), (1, 3, 64, 30)])
def test_size_not_a_multiple_of_the_factor_raises(model, shape):
    with pytest.raises(ValueError, match="f=8"):
        model.encode(torch.randn(shape))
    with pytest.raises(ValueError, match="f=8"):
        model(torch.randn(shape))


def test_wrong_channels_raise(model):
    with pytest.raises(ValueError, match="argument 'x'"):
        model.encode(torch.randn(1, 4, 64, 64))
    with pytest.raises(ValueError, match="argument 'z'"):
        model.decode(torch.randn(1, 3, 8, 8))


def test_pad_reconstructs_any_size(model):
    x = torch.randn(1, 3, 37, 50)
    with torch.no_grad():
        assert model.encode(x, pad=True).shape == (1, 4, 5, 7)
        assert model(x, pad=True).reconstruction.shape == x.shape
        tiny = torch.randn(1, 3, 3, 5)  # smaller than the padding: replicate instead of reflect
        assert model(tiny, pad=True).reconstruction.shape == tiny.shape


def test_slicing_matches_batched(model):
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected_z, expected = model.encode(x), model(x).reconstruction
        model.enable_slicing()
        try:
            torch.testing.assert_close(model.encode(x), expected_z, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(model(x).reconstruction, expected, rtol=1e-5, atol=1e-5)
        finally:
            model.disable_slicing()


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = DCAE.from_config("tiny").eval()  # eval: BatchNorm statistics stay fixed across recomputation
    x = torch.randn(2, 3, 32, 32)

    def grads():
        model.zero_grad()
        model(x).reconstruction.square().mean().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    plain = grads()
    model.set_gradient_checkpointing(True)
    checkpointed = grads()
    model.set_gradient_checkpointing(False)
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_channels_last_matches_contiguous(model):
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = model(x).reconstruction
        cl = DCAE.from_config("tiny").eval()
        cl.load_state_dict(model.state_dict())
        cl = cl.to(memory_format=torch.channels_last)
        out = cl(x.to(memory_format=torch.channels_last)).reconstruction
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


def test_bf16_autocast_is_close_to_float32(model):
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = model(x).reconstruction
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x).reconstruction
    assert torch.isfinite(out).all()
    assert ((out.float() - expected).norm() / expected.norm()).item() < 0.05


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_bf16_weights_run(layout):
    torch.manual_seed(0)
    model = DCAE.from_config("tiny").eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = model(x).reconstruction
        model = model.to(torch.bfloat16).to(memory_format=layout)
        out = model(x.bfloat16().to(memory_format=layout)).reconstruction
    assert out.dtype == torch.bfloat16
    assert ((out.float() - expected).norm() / expected.norm()).item() < 0.05


def test_compiles_without_graph_breaks(model):
    torch._dynamo.reset()
    x = torch.randn(1, 3, 32, 32)
    compiled = torch.compile(model.encoder, backend="aot_eager", fullgraph=True)
    decoder = torch.compile(model.decoder, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        z = compiled(x)
        torch.testing.assert_close(z, model.encoder(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(decoder(z), model.decoder(z), rtol=1e-5, atol=1e-5)


def test_encoder_and_decoder_stand_alone():
    config = tiny_config(16, latent_channels=8)
    encoder, decoder = Encoder(config), Decoder(config)
    with torch.no_grad():
        z = encoder(torch.randn(1, 3, 32, 32))
        assert z.shape == (1, 8, 2, 2)
        assert decoder(z).shape == (1, 3, 32, 32)


def test_every_preset_builds():
    for name in preset_names():
        with torch.device("meta"):
            model = DCAE.from_config(name)
        assert model.config.name == name
    assert get_config("dc-ae-f32c32-sana-1.1-diffusers").downsample_block_type == "conv"


def test_invalid_config_values_raise():
    with pytest.raises(ValueError, match="decoder_norm_types"):
        tiny_config().replace(decoder_norm_types="layer_norm")
    with pytest.raises(ValueError, match="encoder_layers_per_block"):
        tiny_config().replace(encoder_layers_per_block=(1, 1))
    with pytest.raises(ValueError, match="downsample_block_type"):
        tiny_config().replace(downsample_block_type="avgpool")
