"""Images of any size through the Python API of both model kinds (models.padding, docs/any_size.md):
`encode(x, pad=True)` pads the bottom and right edges to multiples of the factor, `decode(..., size=)`
and `forward(x, pad=True)` crop the output back to the top-left H x W, tiled or not."""
import pytest
import torch
import torch.nn.functional as F

from dcae_ext.models import DCAE, IBQTokenizer
from dcae_ext.models.padding import crop_to_size, pad_to_multiple, padded_size

pytestmark = pytest.mark.usefixtures("one_thread")

# (height, width): the 250x333, one pixel over a multiple of the factor, smaller than the factor
SIZES = {"dcae": [(250, 333), (33, 40), (5, 3)], "ibq": [(250, 333), (17, 16), (3, 2)]}


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {"dcae": DCAE.from_config("tiny").eval(), "ibq": IBQTokenizer.from_config("tiny").eval()}


def _image(height, width, seed=0):
    return torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _encode(model, x, **kwargs):
    return model.encode(x, **kwargs)


def _decode(model, codes, **kwargs):
    return model.decode(codes, **kwargs) if isinstance(model, DCAE) else model.decode_indices(codes, **kwargs)


# --- the padding rule -------------------------------------------------------------------------------

def test_pad_repeats_the_last_row_and_column():
    x = torch.arange(9.0).reshape(1, 1, 3, 3)         # rows [0 1 2], [3 4 5], [6 7 8]
    padded = pad_to_multiple(x, 4)
    expected = torch.tensor([[0., 1., 2., 2.],
                             [3., 4., 5., 5.],
                             [6., 7., 8., 8.],
                             [6., 7., 8., 8.]])       # at the bottom and right only
    assert torch.equal(padded[0, 0], expected)
    assert torch.equal(crop_to_size(padded, (3, 3), 4), x)
    assert torch.equal(pad_to_multiple(x[0], 4), padded[0])  # (C, H, W) too
    assert pad_to_multiple(torch.ones(1, 3, 8, 16), 8).shape == (1, 3, 8, 16)
    assert torch.equal(pad_to_multiple(torch.tensor([[[[5.0]]]]), 8), torch.full((1, 1, 8, 8), 5.0))  # 1 x 1


def test_the_other_modes_for_measuring():
    x = torch.arange(9.0).reshape(1, 1, 3, 3)
    assert torch.equal(pad_to_multiple(x, 4, "reflect")[0, 0, 3], torch.tensor([3., 4., 5., 4.]))  # mirrored
    assert torch.equal(pad_to_multiple(x, 4, "constant")[0, 0, 3], torch.zeros(4))
    thin = torch.tensor([[[[1.0, 2.0]]]])             # 1 x 2, factor 4: too short to mirror 3 rows, 2 columns
    assert torch.equal(pad_to_multiple(thin, 4, "reflect")[0, 0], torch.tensor([[1.0, 2.0, 2.0, 2.0]] * 4))


def test_padded_size_and_bad_arguments():
    assert [padded_size(s, 32) for s in (1, 31, 32, 33, 250)] == [32, 32, 32, 64, 256]
    with pytest.raises(ValueError, match="argument 'size'"):
        crop_to_size(torch.zeros(1, 3, 16, 16), (8, 16), 8)    # 8 rows pad to 8, not 16
    with pytest.raises(ValueError, match="argument 'size'"):
        crop_to_size(torch.zeros(1, 3, 16, 16), (16, 17), 8)
    with pytest.raises(ValueError, match="argument 'mode'"):
        pad_to_multiple(torch.zeros(1, 3, 5, 5), 4, "circular")
    with pytest.raises(ValueError, match="argument 'x'"):
        pad_to_multiple(torch.zeros(1, 3, 0, 5), 4)


# --- the models -------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind,size", [(k, s) for k, sizes in SIZES.items() for s in sizes])
def test_round_trip_is_the_padded_image_cropped(models, kind, size):
    model, (height, width) = models[kind], size
    f = model.spatial_compression
    x = _image(height, width)
    with torch.no_grad():
        codes = _encode(model, x, pad=True)
        by_hand = pad_to_multiple(x, f)
        assert by_hand.shape[-2:] == (padded_size(height, f), padded_size(width, f))
        assert torch.equal(codes, _encode(model, by_hand))
        assert codes.shape[-2:] == (-(-height // f), -(-width // f))
        full = _decode(model, _encode(model, by_hand))
        expected = full[..., :height, :width]                 # the top-left corner, cut by hand
        decoded = _decode(model, codes, size=(height, width))
        reconstruction = model(x, pad=True).reconstruction
    assert decoded.shape == reconstruction.shape == x.shape
    torch.testing.assert_close(decoded, expected, rtol=0, atol=0)
    torch.testing.assert_close(reconstruction, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["dcae", "ibq"])
def test_without_pad_an_off_size_image_is_refused(models, kind):
    model = models[kind]
    x = _image(*SIZES[kind][0])
    with pytest.raises(ValueError, match="pad=True"):
        _encode(model, x)
    with pytest.raises(ValueError, match="pad=True"):
        model(x)


@pytest.mark.parametrize("kind", ["dcae", "ibq"])
def test_decode_refuses_a_size_the_codes_cannot_hold(models, kind):
    model = models[kind]
    f = model.spatial_compression
    with torch.no_grad():
        codes = _encode(model, _image(250, 333), pad=True)
        with pytest.raises(ValueError, match="argument 'size'"):
            _decode(model, codes, size=(250 + f, 333))        # one latent row short
        with pytest.raises(ValueError, match="argument 'size'"):
            _decode(model, codes, size=(250, 333 - f))        # one latent column too many


@pytest.mark.parametrize("kind", ["dcae", "ibq"])
def test_tiled_round_trip_is_the_padded_image_tiled_then_cropped(kind):
    torch.manual_seed(0)
    model = (DCAE.from_config("tiny") if kind == "dcae" else IBQTokenizer.from_config("tiny")).eval()
    f = model.spatial_compression
    x = _image(250, 333, seed=1)
    model.enable_tiling(64)
    try:
        with torch.no_grad():
            codes = _encode(model, x, pad=True)
            by_hand = pad_to_multiple(x, f)
            assert torch.equal(codes, _encode(model, by_hand))
            expected = _decode(model, _encode(model, by_hand))[..., :250, :333]
            reconstruction = model(x, pad=True).reconstruction
            decoded = _decode(model, codes, size=(250, 333))
    finally:
        model.disable_tiling()
    assert reconstruction.shape == decoded.shape == x.shape
    torch.testing.assert_close(decoded, expected, rtol=0, atol=0)
    torch.testing.assert_close(reconstruction, expected, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        untiled = _decode(model, codes, size=(250, 333))
    assert not torch.equal(untiled, decoded)                  # the tiles were used


def test_ibq_tiling_blends_the_encoder_outputs_then_quantizes_whole():
    from dcae_ext.models.tiling import tiled_map

    torch.manual_seed(0)
    model = IBQTokenizer.from_config("tiny").eval()
    x = pad_to_multiple(_image(150, 200, seed=2), 4)
    model.enable_tiling(64, overlap=16)
    with torch.no_grad():
        latent = tiled_map(lambda part: model.quant_conv(model.encoder(part)), x, 64, 16, up=1, down=4)
        assert torch.equal(model.encode(x), model.quantizer.nearest(latent))
        decoded = model.decode_indices(model.encode(x))
        codes = model.quantizer.lookup(model.encode(x))
        by_hand = tiled_map(model.decoder, model.post_quant_conv(codes), 16, 4, up=4, down=1)
    torch.testing.assert_close(decoded, by_hand, rtol=0, atol=0)
    with pytest.raises(ValueError, match="argument 'tile'"):
        model.enable_tiling(30)


@pytest.mark.parametrize("kind", ["dcae", "ibq"])
@pytest.mark.parametrize("size", [(3, 2), (33, 41), (70, 19)])
def test_a_tile_as_large_as_the_padded_image_is_the_untiled_result(models, kind, size):
    model = models[kind]
    f = model.spatial_compression
    x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with torch.no_grad():
        codes = _encode(model, x, pad=True)
        decoded = _decode(model, codes, size=size)
        model.enable_tiling(max(padded_size(size[0], f), padded_size(size[1], f), 2 * f))
        try:
            tiled_codes = _encode(model, x, pad=True)
            tiled = _decode(model, tiled_codes, size=size)
            model.enable_tiling(2 * f, overlap=f)                # tiles that split it: sizes still exact
            split_codes = _encode(model, x, pad=True)
            split = _decode(model, split_codes, size=size)
        finally:
            model.disable_tiling()
    assert torch.equal(tiled_codes, codes) and torch.equal(tiled, decoded)
    assert split_codes.shape == codes.shape and split.shape == x.shape
