"""The structured latent's API on our own model: a prefix is the masked latent (the other channels
zero), lists, tiling, slicing, padding and the scaling factor work with prefixes, bad channel counts
are refused by name; and the DC-Gen presets run their shortcuts and attention on dcae_ext.ops."""
import pytest
import torch

from dcae_ext import ops
from dcae_ext.models import DCAE
from dcae_configs import reduced


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return DCAE.from_config("tiny-structured").eval()


def _image(size=64, batch=2, seed=3):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_a_prefix_is_the_latent_with_the_other_channels_zeroed(model):
    x = _image()
    z = model.encode(x)
    for channels in (1, 5, 16):
        prefix = model.encode(x, latent_channels=channels)
        torch.testing.assert_close(prefix, z[:, :channels], rtol=1e-5, atol=1e-5)
        masked = torch.cat([z[:, :channels], torch.zeros_like(z[:, channels:])], dim=1)
        torch.testing.assert_close(model.decode(prefix), model.decode(masked), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(model.decode(z[:, :4]), model.decode(z), atol=1e-3)  # the prefix matters


@torch.no_grad()
def test_a_list_gives_one_latent_per_entry_and_decodes_to_a_list(model):
    x = _image()
    latents = model.encode(x, latent_channels=[2, 8, 8])
    assert [z.shape[1] for z in latents] == [2, 8, 8]
    assert latents[1].data_ptr() != latents[2].data_ptr()  # separate tensors, not views of one
    images = model.decode(latents)
    assert isinstance(images, list) and len(images) == 3
    torch.testing.assert_close(images[0], model.decode(model.encode(x, latent_channels=2)))
    torch.testing.assert_close(model(x, latent_channels=8).reconstruction, images[1])


@torch.no_grad()
def test_tiling_slicing_and_padding_work_with_a_prefix(model):
    x = _image(96, batch=3)
    plain = model.encode(x, latent_channels=6)
    model.enable_slicing()
    try:
        torch.testing.assert_close(model.encode(x, latent_channels=6), plain, rtol=1e-5, atol=1e-5)
    finally:
        model.disable_slicing()
    model.enable_tiling(tile=48, overlap=16)
    try:
        tiled = model.encode(x, latent_channels=6)
        torch.testing.assert_close(tiled, model.encode(x)[:, :6], rtol=1e-5, atol=1e-5)
        image = model.decode(tiled)
        masked = torch.cat([tiled, torch.zeros(3, 10, *tiled.shape[2:])], dim=1)
        torch.testing.assert_close(image, model.decode(masked), rtol=1e-5, atol=1e-5)
        assert image.shape == x.shape
    finally:
        model.disable_tiling()
    odd = x[:, :, :90, :77]
    out = model(odd, pad=True, latent_channels=6).reconstruction
    assert out.shape == odd.shape
    assert model.encode(odd, pad=True, latent_channels=6).shape == (3, 6, 12, 10)


@torch.no_grad()
def test_the_scaling_factor_applies_to_every_prefix(model):
    scaled = DCAE(model.config.replace(scaling_factor=0.5)).eval()
    scaled.load_state_dict(model.state_dict())
    z = scaled.encode(_image(), latent_channels=4) * scaled.scaling_factor  # what a diffusion model sees
    torch.testing.assert_close(scaled.decode(z / scaled.scaling_factor),
                               model.decode(model.encode(_image(), latent_channels=4)))


def test_bad_channel_counts_are_refused_by_name(model):
    x = _image(32, batch=1)
    for bad in (0, 17, [4, 0], [], True, 2.0, "8"):
        with pytest.raises(ValueError, match="argument 'latent_channels'"):
            model.encode(x, latent_channels=bad)
    with pytest.raises(ValueError, match="forward takes one channel count"):
        model(x, latent_channels=[2, 4])
    with pytest.raises(ValueError, match=r"argument 'z'.*1 <= c <= 16"):
        model.decode(torch.zeros(1, 17, 4, 4))
    plain = DCAE.from_config("tiny").eval()
    with pytest.raises(ValueError, match="no structured latent.*dc-ae-f32c128-1.5"):
        plain.encode(x, latent_channels=2)
    with pytest.raises(ValueError, match="no structured latent"):
        plain.decode(torch.zeros(1, 2, 4, 4))
    assert plain.encode(x, latent_channels=4).shape[1] == 4  # all channels: allowed on any model
    with pytest.raises(ValueError, match="encoder_out_shortcut=False"):
        plain.config.replace(structured_latent=True)


class _Counter:
    def __init__(self, monkeypatch, names):
        self.calls = dict.fromkeys(names, 0)
        for name in names:
            original = getattr(ops, name)

            def counted(*args, _name=name, _original=original, **kwargs):
                self.calls[_name] += 1
                return _original(*args, **kwargs)

            monkeypatch.setattr(ops, name, counted)


@pytest.mark.parametrize("name,expected", [
    # encoder: a shortcut per downsampling (+ the latent's); decoder: one per upsampling (+ the latent's)
    ("dc-ae-f32c128-1.5", {"pixel_unshuffle_mean": 4, "pixel_shuffle_repeat": 4, "linear_attention": 0}),
    ("dc-ae-lite-f32c32-sana-1.1", {"pixel_unshuffle_mean": 6, "pixel_shuffle_repeat": 5, "linear_attention": 6}),
])
def test_the_presets_run_their_shortcuts_and_attention_on_the_fast_ops(monkeypatch, name, expected):
    model = DCAE(reduced(name)).eval()
    counter = _Counter(monkeypatch, list(expected))
    with torch.no_grad():
        model(_image(64, batch=1))
    assert counter.calls == expected


def test_encoder_and_decoder_alone_refuse_a_prefix_without_a_structured_latent():
    plain = DCAE.from_config("tiny")
    with pytest.raises(ValueError, match="no structured latent"):
        plain.encoder(_image(32, batch=1), latent_channels=2)
    with pytest.raises(ValueError, match="without a structured latent"):
        plain.decoder(torch.zeros(1, 2, 4, 4))
    structured = DCAE.from_config("tiny-structured")
    with pytest.raises(ValueError, match="17 channels"):
        structured.decoder(torch.zeros(1, 17, 4, 4))
