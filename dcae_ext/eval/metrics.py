"""The metrics, from maintained implementations: PSNR (dcae_ext.data.psnr) and SSIM (torchmetrics), LPIPS (the lpips
package, local trunk weights), rFID (torchmetrics' FID on torch-fidelity's Inception, local
weights), and codebook usage / perplexity accumulated over a whole image set.

Images are float (B, 3, H, W) in [0, 1] unless a docstring says otherwise. Nothing here downloads:
a network metric whose weights were not given is reported unavailable, never computed from random
weights.
"""
from __future__ import annotations

import os

import torch
from torch import nn

from dcae_ext.data.psnr import check_image_pair
from dcae_ext.models.perceptual import LPIPS_WEIGHTS_ENV

INCEPTION_WEIGHTS_ENV = "DCAE_EXT_INCEPTION_WEIGHTS"
INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"


class MetricUnavailable(Exception):
    """A metric cannot be computed honestly here (its network weights were not given)."""


SSIM_WINDOW = 11


def ssim_per_image(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B,) SSIM of images in [0, 1]: 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03, averaged
    over the pixels whose window lies inside the image (Wang et al. and scikit-image; torchmetrics'
    own mean also counts the reflect-padded border, which reads a few thousandths lower)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    check_image_pair(reconstruction, target)
    if min(target.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"argument 'target': SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW}, "
                         f"got {tuple(target.shape[-2:])}")
    _, ssim_map = structural_similarity_index_measure(
        reconstruction.float(), target.float(), gaussian_kernel=True, sigma=1.5, kernel_size=SSIM_WINDOW,
        data_range=1.0, reduction="none", return_full_image=True)
    border = SSIM_WINDOW // 2
    return ssim_map[..., border:-border, border:-border].mean(dim=(1, 2, 3))


def _weights_path(given: str | None, env: str, what: str) -> str | None:
    path = given or os.environ.get(env) or None
    if path is not None and not os.path.exists(path):
        raise FileNotFoundError(f"{what} weights: {path} does not exist")
    return path


def load_lpips(weights: str | None = None, net: str = "vgg") -> nn.Module:
    """The LPIPS distance (frozen, eval mode; inputs in [-1, 1]; returns the batch mean) with its
    trunk from `weights` (or env DCAE_EXT_LPIPS_WEIGHTS): a full LPIPS state dict or torchvision's
    `features.N.*` state dict of the same net. Raises MetricUnavailable without weights."""
    path = _weights_path(weights, LPIPS_WEIGHTS_ENV, "LPIPS")
    if path is None:
        raise MetricUnavailable(
            f"LPIPS unavailable: no {net} trunk weights given (--lpips-weights PATH or env {LPIPS_WEIGHTS_ENV}); "
            "a random trunk would give a meaningless number")
    from dcae_ext.models.perceptual import PerceptualLoss

    return PerceptualLoss(net=net, weights=path)


def build_fid(inception_weights: str | None = None, feature_extractor: nn.Module | None = None,
              inception_features: int = 2048):
    """torchmetrics FrechetInceptionDistance fed images in [0, 1].

    Default: the 2048-d pool features of torch-fidelity's InceptionV3, weights read from
    `inception_weights` (or env DCAE_EXT_INCEPTION_WEIGHTS; the file torch-fidelity publishes as
    weights-inception-2015-12-05-6726825d.pth). Raises MetricUnavailable without weights.
    `inception_features`: 2048 (the standard), or the earlier 64, 192 or 768-d layers.
    `feature_extractor`: any module images -> (B, F) features with a `num_features` attribute
    (tests build a small one), used instead of Inception.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance

    if feature_extractor is not None:
        return FrechetInceptionDistance(feature=feature_extractor, normalize=True)
    path = _weights_path(inception_weights, INCEPTION_WEIGHTS_ENV, "Inception")
    if path is None:
        raise MetricUnavailable(
            f"rFID unavailable: no Inception weights given (--inception-weights PATH to torch-fidelity's "
            f"{INCEPTION_WEIGHTS_FILE}, or env {INCEPTION_WEIGHTS_ENV}); rFID from random weights would be meaningless")
    return FrechetInceptionDistance(feature=inception_features, normalize=True, feature_extractor_weights_path=path)


class CodebookUsage:
    """Histogram of code indices over a whole set: usage = fraction of the K codes that occur,
    perplexity = exp(entropy of the code frequencies) (K when all codes are equally used, 1 when
    one code takes everything)."""

    def __init__(self, num_codes: int):
        if num_codes < 1:
            raise ValueError(f"argument 'num_codes': expected >= 1, got {num_codes}")
        self.num_codes = num_codes
        self.counts = torch.zeros(num_codes, dtype=torch.int64)

    def update(self, indices: torch.Tensor) -> None:
        if indices.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise ValueError(f"argument 'indices': expected an integer tensor, got dtype {indices.dtype}")
        flat = indices.detach().reshape(-1).long().cpu()
        if flat.numel() == 0:
            return
        low, high = int(flat.min()), int(flat.max())
        if low < 0 or high >= self.num_codes:
            raise ValueError(f"argument 'indices': values must lie in [0, {self.num_codes}), got [{low}, {high}]")
        self.counts += torch.bincount(flat, minlength=self.num_codes)

    def compute(self) -> dict:
        total = int(self.counts.sum())
        used = int((self.counts > 0).sum())
        if total == 0:
            return {"num_codes": self.num_codes, "num_indices": 0, "used_codes": 0, "usage": 0.0, "perplexity": 0.0}
        probs = self.counts[self.counts > 0].double() / total
        entropy = float(-(probs * probs.log()).sum())
        return {"num_codes": self.num_codes, "num_indices": total, "used_codes": used,
                "usage": used / self.num_codes, "perplexity": float(torch.tensor(entropy).exp())}
