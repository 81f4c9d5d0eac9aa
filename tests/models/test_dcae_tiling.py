"""Tiled encode/decode: exact output sizes for every factor, blending arithmetic, bounded seams."""
import pytest
import torch
import torch.nn.functional as F

from dcae_ext.models import DCAE, DCAEConfig, tiny_config
from dcae_ext.models.tiling import tile_starts, tiled_map


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("size,tile,overlap", [(37, 8, 3), (16, 8, 0), (5, 8, 2), (23, 8, 6), (64, 16, 8)])
def test_tiled_map_of_a_pointwise_map_is_exact(size, tile, overlap):
    # A map with no spatial context must come out of tiling unchanged: weights renormalise to 1.
    x = torch.randn(2, 3, size, size + 5)
    up = lambda t: 2 * t.repeat_interleave(4, -1).repeat_interleave(4, -2) + 1  # noqa: E731
    torch.testing.assert_close(tiled_map(up, x, tile, overlap, up=4), up(x), rtol=1e-6, atol=1e-6)


def test_tiled_map_downsampling_is_exact():
    x = torch.randn(1, 2, 48, 40)
    pool = lambda t: F.avg_pool2d(t, 8)  # noqa: E731
    torch.testing.assert_close(tiled_map(pool, x, 16, 8, down=8), pool(x), rtol=1e-6, atol=1e-6)


def test_tile_starts_cover_and_end_at_the_border():
    assert tile_starts(10, 16, 12) == [0]
    assert tile_starts(40, 16, 12) == [0, 12, 24]
    assert tile_starts(41, 16, 12) == [0, 12, 24, 25]
    assert tile_starts(5 * 32, 64, 32, align=32) == [0, 32, 64, 96]


@pytest.mark.parametrize("factor", [32, 64, 128])
def test_tiled_decode_returns_exactly_latent_size_times_factor(factor):
    torch.manual_seed(0)
    model = DCAE(tiny_config(factor)).eval()
    model.enable_tiling(tile=2 * factor, overlap=factor)
    z = torch.randn(1, 4, 5, 3)  # 5 x 3 latent: not a multiple of the 2-latent-pixel tile
    with torch.no_grad():
        assert model.decode(z).shape == (1, 3, 5 * factor, 3 * factor)


@pytest.mark.parametrize("factor", [32, 128])
def test_tiled_encode_returns_exactly_image_size_over_factor(factor):
    torch.manual_seed(0)
    model = DCAE(tiny_config(factor)).eval()
    model.enable_tiling(tile=2 * factor, overlap=factor)
    x = torch.randn(1, 3, 3 * factor, 1 * factor)
    with torch.no_grad():
        assert model.encode(x).shape == (1, 4, 3, 1)


CONV_ONLY = DCAEConfig(  # no attention: a bounded receptive field, so big tiles see all the context that matters
    latent_channels=4, attention_head_dim=8, encoder_block_types="ResBlock", decoder_block_types="ResBlock",
    encoder_block_out_channels=(8, 16, 16), decoder_block_out_channels=(8, 16, 16),
    encoder_layers_per_block=(1, 1, 1), decoder_layers_per_block=(1, 1, 1),
    encoder_qkv_multiscales=((),) * 3, decoder_qkv_multiscales=((),) * 3,
    decoder_norm_types=("batch_norm", "rms_norm", "rms_norm"), decoder_act_fns="silu",
)


def test_tiled_vs_untiled_difference_is_bounded():
    torch.manual_seed(0)
    model = DCAE(CONV_ONLY).eval()
    x = torch.randn(1, 3, 96, 136)
    with torch.no_grad():
        z, full = model.encode(x), model.decode(model.encode(x))
        model.enable_tiling(tile=64, overlap=32)
        z_tiled, decoded_tiled = model.encode(x), model.decode(z)
        model.enable_tiling(tile=64, overlap=0)
        decoded_hard = model.decode(z)
    assert z_tiled.shape == z.shape and decoded_tiled.shape == full.shape
    assert _rel(z_tiled, z) < 0.03
    assert _rel(decoded_tiled, full) < 0.03
    assert _rel(decoded_tiled, full) < _rel(decoded_hard, full)  # blending beats hard seams


def test_small_inputs_bypass_tiling_exactly():
    torch.manual_seed(0)
    model = DCAE.from_config("tiny").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(x).reconstruction
        model.enable_tiling(tile=64, overlap=16)
        assert torch.equal(model(x).reconstruction, expected)


def test_enable_tiling_validates_against_the_factor():
    model = DCAE.from_config("tiny")
    with pytest.raises(ValueError, match="spatial factor 8"):
        model.enable_tiling(tile=60)
    with pytest.raises(ValueError, match="overlap"):
        model.enable_tiling(tile=64, overlap=64)
    model.enable_tiling(tile=64)
    assert (model.tile_size, model.tile_overlap) == (64, 16)


class LocalDecoder(torch.nn.Module):
    """Each output f x f patch depends only on the latents within `radius` latent pixels: with
    radius 0 a tile's outputs are right everywhere, with radius r only away from its borders."""

    def __init__(self, factor, radius, latent_channels=4):
        super().__init__()
        self.factor = factor
        self.conv = torch.nn.Conv2d(latent_channels, 3 * factor * factor, 2 * radius + 1, padding=radius)

    def forward(self, z):
        return F.pixel_shuffle(self.conv(z), self.factor)


@pytest.mark.parametrize("factor", [32, 64, 128])
def test_default_overlap_is_nonzero_for_every_tile_and_tiled_equals_untiled(factor):
    torch.manual_seed(0)
    model = DCAE(tiny_config(factor)).eval()
    model.decoder = LocalDecoder(factor, radius=0)
    z = torch.randn(1, 4, 9, 7)
    with torch.no_grad():
        expected = model.decode(z)
        for tile in sorted({2 * factor, 3 * factor, 5 * factor, 256, 384, 512, 1024}):
            model.enable_tiling(tile)
            assert 0 < model.tile_overlap < tile and model.tile_overlap % factor == 0, (tile, model.tile_overlap)
            torch.testing.assert_close(model.decode(z), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=f"tile >= {2 * factor}"):
        model.enable_tiling(factor)


def test_default_overlap_hides_the_seams_of_a_decoder_with_context():
    """A decoder that sees one latent pixel around each output: the default overlap's ramps give
    zero weight to every output computed without that context, so tiled == untiled exactly,
    where tiles without overlap leave seams."""
    torch.manual_seed(0)
    model = DCAE(tiny_config(8)).eval()
    model.decoder = LocalDecoder(8, radius=1)
    z = torch.randn(1, 4, 37, 29)
    with torch.no_grad():
        expected = model.decode(z)
        model.enable_tiling(128)
        assert model.tile_overlap == 32
        torch.testing.assert_close(model.decode(z), expected, rtol=1e-5, atol=1e-5)
        model.enable_tiling(128, overlap=0)
        assert (model.decode(z) - expected).abs().max() > 0.1


@pytest.mark.parametrize("up,down", [(4, 1), (1, 4)])
def test_tiled_map_keeps_float64_precision(up, down):
    # Accumulating float64 tiles in float32 rounds them to ~1e-7: a float64 model (gradcheck) must
    # come out of tiling with float64 precision.
    x = torch.randn(1, 2, 36, 44, dtype=torch.float64)
    local = (lambda t: t.repeat_interleave(up, -1).repeat_interleave(up, -2) / 3) if up > 1 else \
        (lambda t: F.avg_pool2d(t, down) / 3)
    tiled = tiled_map(local, x, 12 if up > 1 else 16, 4 if up > 1 else 8, up=up, down=down)
    assert tiled.dtype == torch.float64
    torch.testing.assert_close(tiled, local(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("tile,overlap,named", [(64.0, None, "tile"), ("64", None, "tile"), (None, None, "tile"),
                                                (64, 16.0, "overlap"), (64, "16", "overlap")])
def test_enable_tiling_refuses_values_that_are_not_integers(tile, overlap, named):
    # 64.0 used to be taken, then every large encode failed with "'float' object cannot be interpreted".
    from dcae_ext.models import IBQTokenizer

    for model in (DCAE.from_config("tiny"), IBQTokenizer.from_config("tiny")):
        with pytest.raises(ValueError, match=f"argument '{named}'"):
            model.enable_tiling(tile, overlap)
        assert model.tile_size is None


def test_enable_tiling_takes_numpy_integers():
    np = pytest.importorskip("numpy")
    model = DCAE.from_config("tiny")
    model.enable_tiling(np.int64(64), np.int64(16))
    assert (model.tile_size, model.tile_overlap) == (64, 16)
    assert type(model.tile_size) is int and type(model.tile_overlap) is int


@pytest.mark.parametrize("tile,overlap", [(16, 8), (12, 8), (8, 0)])
def test_outputs_given_no_weight_cannot_spoil_the_blend(tile, overlap):
    # The outer quarter of an overlap gets weight 0 (computed without context); an inf there times 0
    # was NaN, added onto the neighbour's good output. A pointwise map must keep every +-inf as it is.
    x = torch.randn(2, 1, 30, 41)
    x[..., ::3, ::2] = float("inf")
    x[..., 1::3, 1::2] = -float("inf")
    x[0, 0, 5, 7] = float("nan")
    for up, down in ((1, 1), (2, 1)):
        local = lambda t: t.repeat_interleave(up, -1).repeat_interleave(up, -2)  # noqa: E731
        torch.testing.assert_close(tiled_map(local, x, tile, overlap, up=up, down=down), local(x),
                                   rtol=0, atol=1e-6, equal_nan=True)


class LocalEncoder(torch.nn.Module):
    """Each latent pixel from its own f x f patch only: tiling it must change nothing."""

    def __init__(self, factor, latent_channels=4):
        super().__init__()
        self.factor = factor
        self.conv = torch.nn.Conv2d(3, latent_channels, 1)

    def forward(self, x, latent_channels=None):
        return self.conv(F.avg_pool2d(x, self.factor))


@pytest.mark.parametrize("factor", [8, 32, 64])
@pytest.mark.parametrize("size", [(5, 3), "one over", "odd"])
def test_every_pixel_blended_once_for_images_of_any_size(factor, size):
    # pad=True sizes that are multiples of neither the factor, the tile nor the stride, and one smaller
    # than a tile: with maps that see no context, tiled encode and decode equal the untiled ones.
    torch.manual_seed(0)
    height, width = {"one over": (factor + 1, 3 * factor - 1), "odd": (7 * factor + 3, 4 * factor + 5)}.get(size, size)
    model = DCAE(tiny_config(factor)).eval()
    model.encoder, model.decoder = LocalEncoder(factor), LocalDecoder(factor, radius=0)
    x = torch.rand(2, 3, height, width) * 2 - 1
    with torch.no_grad():
        z, image = model.encode(x, pad=True), model.decode(model.encode(x, pad=True), size=(height, width))
        for tile, overlap in ((2 * factor, factor), (3 * factor, None), (5 * factor, 3 * factor)):
            model.enable_tiling(tile, overlap)
            tiled_z = model.encode(x, pad=True)
            torch.testing.assert_close(tiled_z, z, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(model.decode(tiled_z, size=(height, width)), image, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_one_tile_comes_out_bit_exact(dtype):
    # A tile at least as large as the input: the blend (weights 1, summed in float32 or wider) returns
    # fn's output unchanged, in its dtype.
    x = torch.randn(2, 3, 24, 16).to(dtype)
    odd = lambda t: torch.sin(7 * t) * 1e4  # noqa: E731
    tiled = tiled_map(odd, x, 24, 8)
    assert tiled.dtype == dtype and torch.equal(tiled, odd(x))


def test_tiled_map_gradcheck_float64():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(2, 3, 3, padding=1).double()
    decoder = lambda t: F.pixel_shuffle(conv(t).repeat(1, 4, 1, 1), 2)  # noqa: E731  (B, 3, 2h, 2w)
    z = torch.randn(1, 2, 7, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: tiled_map(decoder, t, 3, 1, up=2), (z,))


def test_a_map_of_another_scale_is_an_error_not_a_crop():
    # Tiles are added only where they have weight; an output larger than the tiler expects (a model
    # of another spatial factor) must not be cropped into place silently.
    x = torch.randn(1, 2, 20, 12)
    with pytest.raises(ValueError, match="tiled_map: a 8 x 8 tile gave an output of shape"):
        tiled_map(lambda t: t.repeat_interleave(2, -1).repeat_interleave(2, -2), x, 8, 4)
    with pytest.raises(ValueError, match="expected spatial size 4 x 4"):
        tiled_map(lambda t: t, x, 8, 4, up=1, down=2)
