"""The evaluation loop: reconstruct every image of a loader, accumulate the metrics, keep the worst
and best reconstructions, and write the JSON result and the PNG grid."""
from __future__ import annotations

import datetime
import heapq
import json
import math
import os
from typing import Callable, Iterable
from pathlib import Path

import torch
from torch import nn

from dcae_ext.data.psnr import psnr_per_image, to_unit
from dcae_ext.eval.metrics import SSIM_WINDOW, CodebookUsage, ssim_per_image
from dcae_ext.files import atomic_write


def reconstruct(model: nn.Module, images: torch.Tensor, **options) -> tuple[torch.Tensor, torch.Tensor | None]:
    """images (B, 3, H, W) in [-1, 1] -> (reconstruction in [-1, 1] float32, code indices or None).

    Every model returns an `AutoencoderOutput`; `indices` is set by tokenizers only. `options` go to
    the model's forward (a DC-AE's `latent_channels`)."""
    output = model(images, **options)
    return output.reconstruction.float(), output.indices


def num_codes_of(model: nn.Module) -> int | None:
    quantizer = getattr(model, "quantizer", None)
    return getattr(quantizer, "num_codes", None)


class _Extremes:
    """The `keep` lowest- and highest-PSNR images seen so far (copies on the CPU)."""

    def __init__(self, keep: int):
        self.keep = keep
        self.worst: list = []  # max-heap on psnr through negation: (-psnr, index, entry)
        self.best: list = []   # min-heap: (psnr, index, entry)

    def offer(self, index: int, psnr: float, make_entry: Callable[[], dict]) -> None:
        if self.keep <= 0 or math.isnan(psnr):
            return
        worst_full, best_full = len(self.worst) >= self.keep, len(self.best) >= self.keep
        enters_worst = not worst_full or psnr < -self.worst[0][0]
        enters_best = not best_full or psnr > self.best[0][0]
        if not (enters_worst or enters_best):
            return
        entry = make_entry()
        if enters_worst:
            (heapq.heapreplace if worst_full else heapq.heappush)(self.worst, (-psnr, index, entry))
        if enters_best:
            (heapq.heapreplace if best_full else heapq.heappush)(self.best, (psnr, index, entry))

    def lists(self) -> tuple[list[dict], list[dict]]:
        worst = [entry for _, _, entry in sorted(self.worst, key=lambda item: (-item[0], item[1]))]
        best = [entry for _, _, entry in sorted(self.best, key=lambda item: (-item[0], item[1]))]
        return worst, best


def _mean(values: list) -> float | None:
    """The mean of the values that are not None (a metric undefined for an image is None there)."""
    values = [value for value in values if value is not None]
    return sum(values) / len(values) if values else None


# LPIPS trunks pool an image down several times: below about 16-31 pixels (vgg 16, squeeze 17, alex 31)
# they pool it to nothing and fail. An image that small has no LPIPS; larger ones must never fail here.
LPIPS_SMALL = 64


def _lpips_of(lpips: nn.Module, reconstruction: torch.Tensor, target: torch.Tensor) -> float | None:
    """The batch's mean LPIPS, or None where it is undefined (images too small for the trunk)."""
    try:
        return float(lpips(reconstruction * 2 - 1, target * 2 - 1))
    except RuntimeError:
        if min(target.shape[-2:]) >= LPIPS_SMALL:
            raise
        return None


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, *, device: torch.device | str = "cpu",
             autocast_dtype: torch.dtype | None = None, lpips: nn.Module | None = None, fid=None,
             num_codes: int | None = None, names: Callable[[int], str] | None = None, keep: int = 4,
             progress: Callable[[Iterable], Iterable] | None = None,
             latent_channels: list[int] | None = None,
             on_undefined: Callable[[str, str, str], None] | None = None) -> dict:
    """Metrics over every image the loader yields as (indices (B,), images (B, 3, H, W) in [0, 1]).

    Returns {"metrics": {...}, "per_image": [...], "worst": [...], "best": [...]}: PSNR and SSIM are
    means of per-image values; LPIPS the mean over images (None without `lpips`); rFID over the whole
    set (None without `fid`); "codebook" usage and perplexity over all indices when `num_codes`;
    with `latent_channels` (a structured latent), "psnr_by_latent_channels" {c: mean PSNR of the
    reconstructions from the first c latent channels} (one more encode and decode per count).

    A metric undefined for an image (SSIM below its 11x11 window, LPIPS below its trunk's size) is
    None in that image's record, left out of the mean, counted in "missing" {metric: images}, and
    reported through `on_undefined(name, metric, reason)`; the other images go on.
    """
    device = torch.device(device)
    model.eval()
    codebook = CodebookUsage(num_codes) if num_codes else None
    extremes = _Extremes(keep)
    per_image: list[dict] = []
    lpips_sum, lpips_count, count = 0.0, 0, 0
    missing = {"ssim": 0, "lpips": 0}
    prefix_psnr: dict[int, list[float]] = {channels: [] for channels in latent_channels or ()}
    if fid is not None:
        fid.reset()
        fid = fid.to(device)
    if lpips is not None:
        lpips = lpips.to(device)
    for indices, images in (progress(loader) if progress else loader):
        target = images.to(device, non_blocking=True).float()
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            reconstruction, codes = reconstruct(model, target * 2 - 1)
        reconstruction = reconstruction.float()
        if not torch.isfinite(reconstruction).all():
            raise FloatingPointError("the model produced non-finite values (NaN or inf) in a reconstruction")
        recon01 = to_unit(reconstruction)
        height, width = target.shape[-2:]
        psnr = psnr_per_image(recon01, target)
        undefined = {}
        if min(height, width) >= SSIM_WINDOW:
            ssim = ssim_per_image(recon01, target).tolist()
        else:
            ssim = [None] * target.shape[0]
            undefined["ssim"] = f"{height}x{width} is smaller than its {SSIM_WINDOW}x{SSIM_WINDOW} window"
        if lpips is not None:
            lpips_value = _lpips_of(lpips, recon01, target)
            if lpips_value is None:
                undefined["lpips"] = f"{height}x{width} is too small for its trunk"
            else:
                lpips_sum += lpips_value * target.shape[0]
                lpips_count += target.shape[0]
        if fid is not None:
            fid.update(target, real=True)
            fid.update(recon01, real=False)
        if codebook is not None and codes is not None:
            codebook.update(codes)
        for channels, values in prefix_psnr.items():
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                prefix, _ = reconstruct(model, target * 2 - 1, latent_channels=channels)
            values.extend(psnr_per_image(to_unit(prefix.float()), target).tolist())
        count += target.shape[0]
        for row, index in enumerate(indices.tolist()):
            name = names(index) if names else str(index)
            record = {"index": index, "name": name, "psnr": float(psnr[row]), "ssim": ssim[row]}
            per_image.append(record)
            for metric, reason in undefined.items():
                missing[metric] += 1
                if on_undefined:
                    on_undefined(name, metric, reason)
            extremes.offer(index, record["psnr"], lambda row=row, record=record: dict(
                record, original=target[row].cpu(), reconstruction=recon01[row].cpu()))
    if count == 0:
        raise ValueError("argument 'loader': it yielded no images")
    metrics = {
        "num_images": count,
        "psnr": _mean([r["psnr"] for r in per_image]),
        "ssim": _mean([r["ssim"] for r in per_image]),
        "lpips": lpips_sum / lpips_count if lpips_count else None,
        "rfid": None,
    }
    if any(missing.values()):
        metrics["missing"] = {metric: images for metric, images in missing.items() if images}
    if fid is not None:
        if count < 2:
            raise ValueError("rFID needs at least 2 images")
        metrics["rfid"] = float(fid.compute())
    if codebook is not None:
        metrics["codebook"] = codebook.compute()
    if prefix_psnr:
        metrics["psnr_by_latent_channels"] = {channels: _mean(values) for channels, values in prefix_psnr.items()}
    worst, best = extremes.lists()
    return {"metrics": metrics, "per_image": per_image, "worst": worst, "best": best}


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # inf PSNR of an exact copy: JSON has no infinity
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_safe(item) for item in value]
    return value


def write_results(result: dict, out_dir: str, info: dict, grid_title: str = "") -> dict:
    """eval.json (info + metrics + per-image values) and worst_best.png in `out_dir`; returns the paths."""
    from dcae_ext.eval.images import save_worst_best_grid

    os.makedirs(out_dir, exist_ok=True)
    paths = {"json": os.path.join(out_dir, "eval.json"), "grid": os.path.join(out_dir, "worst_best.png")}
    document = dict(info, date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    torch=torch.__version__, metrics=result["metrics"], per_image=result["per_image"],
                    worst=[e["name"] for e in result["worst"]], best=[e["name"] for e in result["best"]])
    text = json.dumps(_json_safe(document), indent=2)
    atomic_write(paths["json"], lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    save_worst_best_grid(paths["grid"], result["worst"], result["best"], title=grid_title)
    return paths
