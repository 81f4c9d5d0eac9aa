"""Which padding reconstructs an image of any size best (docs/any_size.md): the PSNR of the cropped
reconstruction for each padding mode of `dcae_ext.models.padding`, near the padded edge and overall.

    python benchmarks/padding_quality.py --model runs/demo/dcae/model --model runs/demo/ibq/model

For each embedded sample photograph (scikit-image) and each model: the image resized and centre-
cropped to --crop x --crop pixels (a multiple of the model's factor f) is C; for each padding amount
p in (1, f/2, f - 1) the test image x is C's top-left (crop - p) x (crop - p) corner, so padding x
back to a multiple of f restores C's size. Each padding mode pads x, the model reconstructs it, and
the top-left corner is compared with x. "true pixels" is the ideal: the reconstruction of C itself,
where the padded band holds the real continuation of the image. Two PSNRs per image (dB, data range
1, as every command measures): over all of x, and over the band of the last f rows and f columns
of x (the pixels that share a latent pixel, or its neighbour, with the padding). The record holds
their means over the images, and on how many images each mode gave the best band PSNR. One JSON
line per (model, p, mode) is appended to benchmarks/results/cpu-padding.jsonl (--results;
--no-save prints only).
"""
from __future__ import annotations

import argparse
import datetime
import os

import torch

from dcae_ext.bench.hardware import machine_description
from dcae_ext.bench.records import append_records, results_path
from dcae_ext.data.images import embedded_image_paths, load_image
from dcae_ext.data.psnr import psnr_per_image, to_unit
from dcae_ext.models import load_model_from_path
from dcae_ext.models.padding import PAD_MODES, pad_to_multiple

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
TRUE_PIXELS = "true pixels"


def band_mask(size: int, width: int) -> torch.Tensor:
    """(size, size) bool: the last `width` rows and columns."""
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[size - width:, :] = True
    mask[:, size - width:] = True
    return mask


def masked_psnr(reconstruction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> float:
    error = (reconstruction - target).square()[..., mask].mean()
    return float(10 * torch.log10(1 / error))


@torch.no_grad()
def measure(model, images: list[torch.Tensor], pad: int) -> dict[str, dict[str, float]]:
    """{mode: {"psnr", "psnr_band", "best_band"}} for test images `pad` pixels short of the crop: the
    PSNRs are means over the images; best_band counts the images on which the mode's band PSNR is the
    highest of the padding modes (true pixels left out)."""
    factor = model.spatial_compression
    scores: dict[str, list[tuple[float, float]]] = {}
    for crop in images:
        size = crop.shape[-1] - pad
        target = crop[..., :size, :size]
        band = band_mask(size, factor)
        inputs = {TRUE_PIXELS: crop * 2 - 1}
        inputs.update({mode: pad_to_multiple(target * 2 - 1, factor, mode) for mode in PAD_MODES})
        for mode, x in inputs.items():
            reconstruction = to_unit(model(x).reconstruction)[..., :size, :size]
            scores.setdefault(mode, []).append((float(psnr_per_image(reconstruction, target)),
                                                masked_psnr(reconstruction, target, band)))
    best = [max(PAD_MODES, key=lambda mode: scores[mode][i][1]) for i in range(len(images))]
    count = len(images)
    return {mode: {"psnr": sum(s for s, _ in values) / count, "psnr_band": sum(b for _, b in values) / count,
                   "best_band": best.count(mode) if mode in PAD_MODES else None} for mode, values in scores.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, help="a trained model folder (repeatable)")
    parser.add_argument("--crop", type=int, default=128, help="crop size C in pixels, a multiple of each factor")
    parser.add_argument("--limit", type=int, default=None, help="the first N sample images only (default: all)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--results", default=None, help="JSONL file to append to (default: results/cpu-padding.jsonl)")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    crops = [load_image(path, args.crop)[None] for path in embedded_image_paths()[:args.limit]]
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    records = []
    print(f"{'model':<28} {'f':>3} {'size':>9} {'mode':<12} {'PSNR':>7} {'edge band':>9} {'best on':>7}")
    for path in args.model:
        model = load_model_from_path(path).eval()
        factor = model.spatial_compression
        if args.crop % factor:
            raise SystemExit(f"--crop: {args.crop} is not a multiple of {path}'s factor {factor}")
        for pad in sorted({1, factor // 2, factor - 1}):
            for mode, scores in measure(model, crops, pad).items():
                size = args.crop - pad
                records.append({"suite": "padding", "model": path, "model_class": type(model).__name__,
                                "factor": factor, "crop": args.crop, "size": size, "pad": pad, "mode": mode,
                                "images": len(crops), "psnr": round(scores["psnr"], 4),
                                "psnr_band": round(scores["psnr_band"], 4), "band": factor,
                                "best_band": scores["best_band"],
                                "extra_pixels": round(args.crop ** 2 / size ** 2 - 1, 4), "device": "cpu",
                                "machine": machine_description("cpu"), "torch": torch.__version__, "date": date})
                print(f"{os.path.basename(path.rstrip('/')):<28} {factor:>3} "
                      f"{size:>4}x{size:<4} {mode:<12} {scores['psnr']:7.3f} {scores['psnr_band']:9.3f} "
                      f"{scores['best_band'] if mode in PAD_MODES else '':>7}")
    if not args.no_save:
        out = args.results or results_path("cpu", RESULTS, kind="padding")
        append_records(records, out)
        print(f"appended {len(records)} records to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
