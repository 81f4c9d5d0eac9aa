"""PSNR, the one definition every command reports (eval, decode, reconstruct, the training strips):
per image, on float images in [0, 1] (data range 1), measured before any rounding to 8-bit PNG
pixels; inf where an image is reproduced exactly. Images in [-1, 1] go through `to_unit` first."""
from __future__ import annotations

import torch


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """Float images in [-1, 1] (a model's output) -> [0, 1], clamped as a PNG would be."""
    return ((images.float() + 1) / 2).clamp(0, 1)


def save_png(image: torch.Tensor, path: str) -> None:
    """A (3, H, W) float image in [0, 1] as an 8-bit PNG (rounded to the nearest level)."""
    from PIL import Image

    pixels = (image * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
    Image.fromarray(pixels).save(path)


def check_image_pair(reconstruction: torch.Tensor, target: torch.Tensor) -> None:
    """ValueError unless both are (B, C, H, W) of one shape (the per-image metrics' inputs)."""
    if reconstruction.shape != target.shape or reconstruction.ndim != 4:
        raise ValueError(f"argument 'reconstruction': expected the shape of 'target', (B, C, H, W); got "
                         f"{tuple(reconstruction.shape)} and {tuple(target.shape)}")


def psnr_per_image(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B,) PSNR in dB of (B, C, H, W) float images in [0, 1]."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    check_image_pair(reconstruction, target)
    return peak_signal_noise_ratio(reconstruction.float(), target.float(), data_range=1.0, reduction="none",
                                   dim=(1, 2, 3))
