"""Evaluation images: a deterministic resize + centre crop per file (unreadable files are reported,
not fatal), and the worst/best grid."""
from __future__ import annotations

import os

import numpy as np
import torch

from dcae_ext.data.images import load_image
from dcae_ext.data.loading import ImageSamples

__all__ = ["EvalImages", "load_image", "save_worst_best_grid"]


class EvalImages(ImageSamples):
    """(index, image) pairs of the files in `paths`, each loaded by `load_image`; a `LoadFailure`
    in place of an unreadable file (batch with `dcae_ext.data.loading.collate_readable`)."""

    def __init__(self, paths: list[str], resolution: int | None):
        if not paths:
            raise ValueError("argument 'paths': no images to evaluate")
        super().__init__(paths, resolution)
        self.names = _distinct_names(self.paths)

    def name(self, index: int) -> str:
        return self.names[index]


def _distinct_names(paths: list[str]) -> list[str]:
    """Each file's name, or, where files in several folders share it (an ImageFolder tree's
    class_a/0001.jpg and class_b/0001.jpg), its path below the folder all the images are in."""
    names = [os.path.basename(path) for path in paths]
    files_named: dict[str, set] = {}
    for path, name in zip(paths, names):
        files_named.setdefault(name, set()).add(os.path.abspath(path))
    if all(len(files) == 1 for files in files_named.values()):
        return names
    top = os.path.commonpath([os.path.dirname(os.path.abspath(path)) for path in paths])
    return [name if len(files_named[name]) == 1 else os.path.relpath(os.path.abspath(path), top).replace(os.sep, "/")
            for path, name in zip(paths, names)]


def _as_hwc(image: torch.Tensor) -> np.ndarray:
    return image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()


def _ssim_text(value) -> str:
    return "-" if value is None else f"{value:.3f}"  # None: undefined for an image this small


def save_worst_best_grid(path: str, worst: list[dict], best: list[dict], title: str = "") -> None:
    """PNG with one row per entry (worst first, then best): original | reconstruction | |error| x4.
    Each entry: {"name", "psnr", "ssim", "original" (3,H,W), "reconstruction" (3,H,W)} in [0, 1]."""
    from dcae_ext.figures import new_figure, save_png

    rows = [("worst", entry) for entry in worst] + [("best", entry) for entry in best]
    if not rows:
        raise ValueError("argument 'worst'/'best': nothing to draw")
    figure = new_figure(figsize=(9, 3.1 * len(rows) + 0.4), layout="constrained")
    axes = figure.subplots(len(rows), 3, squeeze=False)
    for row, (kind, entry) in enumerate(rows):
        original, reconstruction = _as_hwc(entry["original"]), _as_hwc(entry["reconstruction"])
        error = np.clip(np.abs(original - reconstruction) * 4, 0, 1)
        label = f"{kind} {row + 1 if kind == 'worst' else row + 1 - len(worst)}: {entry['name']}"
        for column, (image, caption) in enumerate(((original, label), (reconstruction,
                                                    f"reconstruction  PSNR {entry['psnr']:.2f} dB  SSIM {_ssim_text(entry['ssim'])}"),
                                                   (error, "|error| x 4"))):
            axis = axes[row][column]
            axis.imshow(image, interpolation="nearest")
            axis.set_title(caption, fontsize=9, color="firebrick" if kind == "worst" and column < 2 else "black")
            axis.axis("off")
    if title:
        figure.suptitle(title, fontsize=11)
    save_png(figure, path, dpi=100)
