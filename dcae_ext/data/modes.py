"""Every PIL image mode to 8-bit RGB, upright: the one conversion behind `images.open_rgb`, which
every command reads images through.

- EXIF orientation is applied first (`ImageOps.exif_transpose`): a phone photo stored sideways
  comes out as it is shown.
- 16-bit data (modes I;16, I;16L, I;16B, I;16N: 16-bit PNG and TIFF) is scaled by 255/65535
  (v / 257, rounded), not clipped: PIL's own `convert("RGB")` clips these at 255, which turns
  nearly every 16-bit image white.
- Mode I (32-bit signed integers) is read as 16-bit data when every value lies in 0..65535 (PIL
  opens 16-bit PNGs as I on some versions); other values have no known scale.
- Mode F (32-bit floats: TIFF) is read as [0, 1] data (x 255, rounded) when every value lies in
  [0, 1]; other values (negative, above 1, NaN, infinite) have no known scale.
- Alpha (RGBA, LA, PA, P with a transparent colour) is dropped: the colour channels as stored,
  as `convert("RGB")` in the reference training code gives them, so results compare with it.
- CMYK, YCbCr, L, 1 and the rest: PIL's conversion to RGB (no ICC colour management).

An image whose values have no known scale, or a mode PIL cannot convert, raises
`UnscaledImageError` (an UnreadableImageError): commands skip it with a counted warning, as they
skip a corrupt file, rather than guess.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
ALPHA_MODES = ("RGBA", "LA", "PA")


class UnscaledImageError(ValueError):
    """The image's values have no known scale to 8 bits (or PIL cannot convert its mode)."""


def to_rgb(image: Image.Image) -> Image.Image:
    """`image` (any mode, any EXIF orientation) as an upright 8-bit RGB image."""
    image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in SIXTEEN_BIT_MODES:
        return _gray(_scale_16bit(np.asarray(image)))
    if mode == "I":
        values = np.asarray(image)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise UnscaledImageError(f"32-bit integer pixels span {values.min()}..{values.max()}, outside the 16-bit "
                                     "range 0..65535: no known scale to 8 bits")
        return _gray(_scale_16bit(values))
    if mode == "F":
        values = np.asarray(image, dtype=np.float64)
        if values.size and not (np.isfinite(values).all() and values.min() >= 0 and values.max() <= 1):
            raise UnscaledImageError(f"32-bit float pixels span {np.nanmin(values):g}..{np.nanmax(values):g} (or are "
                                     "not finite), outside [0, 1]: no known scale to 8 bits")
        return _gray(np.rint(values * 255).astype(np.uint8))
    if mode == "P" and "transparency" in image.info or mode in ALPHA_MODES:
        return image.convert("RGBA").convert("RGB")  # a palette's transparency becomes alpha, then is dropped
    try:
        return image.convert("RGB")
    except ValueError as error:  # a mode PIL cannot convert to RGB
        raise UnscaledImageError(f"mode {mode} cannot be converted to RGB ({error})") from None


def _scale_16bit(values: np.ndarray) -> np.ndarray:
    """0..65535 -> 0..255, round(v / 257) in integers (exact: v = 257 k gives k)."""
    return ((values.astype(np.int64) + 128) // 257).astype(np.uint8)


def _gray(values: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(values)).convert("RGB")  # uint8 (H, W): mode L
