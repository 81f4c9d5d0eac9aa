"""Images of every mode PIL opens come out as 8-bit RGB with the right scale, upright (EXIF
orientation), through the one reader every command uses (`open_rgb` -> `load_image`, the training
crops); values with no known scale are skipped with a counted warning, like a corrupt file."""
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from dcae_ext.data.images import UnreadableImageError, UnreadableImageWarning, list_images, load_image, open_rgb
from dcae_ext.data.loading import ImageSamples
from dcae_ext.data.modes import to_rgb
from dcae_ext.train.data import CropDataset

# a 2 x 3 ramp over the whole 16-bit range, and the 8-bit values it must give (round(v / 257))
RAMP_16 = np.array([[0, 128, 129], [257 * 100, 65406, 65535]], dtype=np.uint16)
RAMP_8 = np.array([[0, 0, 1], [100, 254, 255]], dtype=np.uint8)


def _gray_as_rgb(values):
    return np.repeat(values[..., None], 3, axis=2)


def _pixels(path):
    return np.asarray(open_rgb(str(path)))


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I;16L", "I;16N"])
def test_16bit_gray_is_scaled_not_clipped(tmp_path, mode):
    order = ">u2" if mode == "I;16B" else "=u2" if mode == "I;16N" else "<u2"
    image = Image.frombytes(mode, (3, 2), RAMP_16.astype(order).tobytes())
    assert np.array_equal(np.asarray(to_rgb(image)), _gray_as_rgb(RAMP_8))
    if mode == "I;16N":
        return  # no format writes it
    path = tmp_path / "ramp.tif"
    image.save(path)  # TIFF keeps the byte order (I;16L comes back as I;16)
    assert Image.open(path).mode == {"I;16B": "I;16B"}.get(mode, "I;16")
    assert np.array_equal(_pixels(path), _gray_as_rgb(RAMP_8))


def test_16bit_png_is_not_white(tmp_path):
    path = tmp_path / "ramp16.png"
    Image.fromarray(RAMP_16).save(path)  # a 16-bit grayscale PNG, as scanners and microscopes write
    assert Image.open(path).mode in ("I;16", "I")
    assert np.array_equal(_pixels(path), _gray_as_rgb(RAMP_8))
    tensor = load_image(str(path), None)  # (3, H, W) in [0, 1], as eval, encode and reconstruct read it
    torch.testing.assert_close(tensor, torch.from_numpy(_gray_as_rgb(RAMP_8)).permute(2, 0, 1).float() / 255)


def test_32bit_integer_is_16bit_data_when_it_fits_else_skipped(tmp_path):
    path = tmp_path / "int32.tif"
    Image.fromarray(RAMP_16.astype(np.int32)).save(path)
    assert Image.open(path).mode == "I"
    assert np.array_equal(_pixels(path), _gray_as_rgb(RAMP_8))
    wide = tmp_path / "wide.tif"
    Image.fromarray(np.array([[-5, 70000]], dtype=np.int32)).save(wide)
    with pytest.raises(UnreadableImageError, match="wide.tif.*-5..70000.*no known scale"):
        open_rgb(str(wide))


def test_float_is_unit_range_data_else_skipped(tmp_path):
    values = np.array([[0.0, 0.5, 1.0], [0.25, 0.002, 0.998]], dtype=np.float32)
    path = tmp_path / "float.tif"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == "F"
    assert np.array_equal(_pixels(path), _gray_as_rgb(np.array([[0, 128, 255], [64, 1, 254]], dtype=np.uint8)))
    for name, bad in (("hdr.tif", [[0.0, 3.5]]), ("nan.tif", [[0.0, np.nan]])):
        Image.fromarray(np.array(bad, dtype=np.float32)).save(tmp_path / name)
        with pytest.raises(UnreadableImageError, match=f"{name}.*no known scale"):
            open_rgb(str(tmp_path / name))


def test_palette_alpha_cmyk_gray_and_bilevel(tmp_path):
    rgb = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [10, 20, 30]]], dtype=np.uint8)
    alpha = np.array([[255, 0], [128, 255]], dtype=np.uint8)
    cases = {}
    palette = Image.fromarray(rgb).quantize(4)
    palette.info["transparency"] = 0  # a transparent palette entry, as GIF-like PNGs have
    cases["p_transparent.png"] = (palette, np.asarray(palette.convert("RGB")))
    cases["rgba.png"] = (Image.fromarray(np.dstack([rgb, alpha])), rgb)  # alpha dropped, colours as stored
    cases["la.png"] = (Image.fromarray(np.dstack([rgb[..., 0], alpha]), mode="LA"), _gray_as_rgb(rgb[..., 0]))
    cases["l.png"] = (Image.fromarray(rgb[..., 1]), _gray_as_rgb(rgb[..., 1]))
    cases["one.png"] = (Image.fromarray(rgb[..., 0] > 100), _gray_as_rgb(np.where(rgb[..., 0] > 100, 255, 0)))
    cmyk = Image.fromarray(np.array([[[0, 0, 0, 0], [255, 0, 0, 0]], [[0, 0, 0, 255], [0, 255, 255, 0]]],
                                    dtype=np.uint8), mode="CMYK")
    cases["cmyk.tif"] = (cmyk, np.array([[[255, 255, 255], [0, 255, 255]], [[0, 0, 0], [255, 0, 0]]]))
    for name, (image, expected) in cases.items():
        image.save(tmp_path / name)
        assert np.array_equal(_pixels(tmp_path / name), expected), name
    with warnings.catch_warnings():  # PIL's "Palette images with Transparency ... should be converted" is avoided
        warnings.simplefilter("error")
        _pixels(tmp_path / "p_transparent.png")
    pa = palette.convert("PA")  # no file format stores PA; PIL makes it in memory
    assert pa.mode == "PA" and np.array_equal(np.asarray(to_rgb(pa)), np.asarray(palette.convert("RGB")))


def test_exif_orientation_is_applied(tmp_path):
    # a 2 x 4 (H x W) JPEG whose EXIF says "rotate 90 degrees clockwise to show" (orientation 6),
    # as a phone held upright stores it: left half black, right half white
    stored = np.zeros((16, 32, 3), dtype=np.uint8)
    stored[:, 16:] = 255
    image = Image.fromarray(stored)
    exif = image.getexif()
    exif[0x0112] = 6
    path = tmp_path / "phone.jpg"
    image.save(path, exif=exif, quality=95)
    upright = _pixels(path)
    assert upright.shape == (32, 16, 3)  # shown 16 wide, 32 tall
    assert upright[:14].mean() < 10 and upright[18:].mean() > 245  # the stored left (black) is now on top


def test_every_command_reads_through_it_and_skips_what_has_no_scale(tmp_path):
    Image.fromarray(RAMP_16).save(tmp_path / "a16.png")
    Image.fromarray(np.array([[0.0, 7.0]] * 2, dtype=np.float32)).save(tmp_path / "b_hdr.tif")
    paths = list_images(str(tmp_path))
    samples = ImageSamples(paths, None)  # eval, encode, decode's PSNR
    assert samples[0][1].max() == 1.0 and samples[0][1].min() == 0.0
    assert "b_hdr.tif" in samples[1].path and "no known scale" in samples[1].reason
    crops = CropDataset(paths, 2)  # train
    with pytest.warns(UnreadableImageWarning, match="b_hdr.tif.*no known scale.*1 unreadable so far"):
        crop = crops[1]  # stands in the next readable image
    assert crop.max() <= 1.0 and crop.min() >= -1.0 and (crop < 0.9).any()  # not a white image
