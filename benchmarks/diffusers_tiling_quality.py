"""How far a tiled AutoencoderDC decode is from the untiled one: diffusers' own blend against the
package's tiler (what `dcae_ext.integrations.diffusers.accelerate` swaps in), docs/diffusers.md.

    python benchmarks/diffusers_tiling_quality.py --model runs/tiny-dcae [--size 512] [--tile 128] [--stride 96]

The model (a trained DC-AE of this package, any folder `load_model_from_path` reads, without a
structured latent) is written in diffusers' format and loaded as a diffusers `AutoencoderDC`. Each
embedded sample photograph (scikit-image), resized and centre-cropped to --size pixels, is encoded
untiled; its latent is decoded untiled (the reference) and tiled, with tiles of --tile pixels every
--stride pixels (`enable_tiling(tile, tile, stride, stride)`): once by the stock model (diffusers'
blend) and once by an accelerated copy (the package's tiler). PSNR (dB, data range 1) of each tiled
decode against the untiled one, and of every decode against the image. One JSON line per (model,
tiler) with the means over the images goes to benchmarks/results/cpu-diffusers-tiling.jsonl
(--results; --no-save prints only). The number says how much tiling changes this model's output;
a bigger, better-trained model has a larger receptive field and other statistics, so it is a
measurement of the blends on one small model, not a property of the blends alone.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import os
import tempfile

import torch

from dcae_ext.bench.hardware import machine_description
from dcae_ext.bench.records import append_records, results_path
from dcae_ext.data.images import embedded_image_paths, load_image
from dcae_ext.data.psnr import psnr_per_image, to_unit
from dcae_ext.models import load_model_from_path

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def as_diffusers(model):
    """The same weights as a diffusers AutoencoderDC (through a diffusers-format folder)."""
    import diffusers

    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder, format="diffusers")
        return diffusers.AutoencoderDC.from_pretrained(folder).eval()


@torch.no_grad()
def measure(stock, images: list[torch.Tensor], tile: int, stride: int) -> dict[str, list[dict]]:
    """Per tiler ("untiled", "diffusers", "dcae-ext"): per image, PSNR against the untiled decode and the image."""
    from dcae_ext.integrations.diffusers import accelerate

    fast = copy.deepcopy(stock)
    accelerate(fast)
    for model in (stock, fast):
        model.enable_tiling(tile_sample_min_height=tile, tile_sample_min_width=tile,
                            tile_sample_stride_height=stride, tile_sample_stride_width=stride)
    scores: dict[str, list[dict]] = {"untiled": [], "diffusers": [], "dcae-ext": []}
    for image in images:
        stock.disable_tiling()
        latent = stock.encode(image * 2 - 1).latent
        untiled = to_unit(stock.decode(latent).sample)
        stock.use_tiling = True  # enable_tiling's settings stay
        decodes = {"untiled": untiled, "diffusers": to_unit(stock.decode(latent).sample),
                   "dcae-ext": to_unit(fast.decode(latent).sample)}
        for name, decoded in decodes.items():
            if decoded.shape != untiled.shape:
                raise SystemExit(f"{name}'s tiled decode is {tuple(decoded.shape)}, the untiled one "
                                 f"{tuple(untiled.shape)}: choose --size, --tile and --stride that tile exactly")
            scores[name].append({"psnr_vs_untiled": float(psnr_per_image(decoded, untiled)) if name != "untiled"
                                 else None, "psnr_vs_image": float(psnr_per_image(decoded, image))})
    return scores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a trained DC-AE (folder, run or checkpoint)")
    parser.add_argument("--size", type=int, default=512, help="image size in pixels")
    parser.add_argument("--tile", type=int, default=128, help="tile size in pixels (tile_sample_min_*)")
    parser.add_argument("--stride", type=int, default=96, help="tile stride in pixels (tile_sample_stride_*)")
    parser.add_argument("--limit", type=int, default=None, help="the first N sample images only (default: all)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--results", default=None, help="JSONL file (default: results/cpu-diffusers-tiling.jsonl)")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    ours = load_model_from_path(args.model).eval()
    stock = as_diffusers(ours)
    images = [load_image(path, args.size)[None] for path in embedded_image_paths()[:args.limit]]
    scores = measure(stock, images, args.tile, args.stride)
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    records = []
    print(f"{'tiler':<10} {'PSNR vs untiled':>16} {'PSNR vs image':>14}   ({len(images)} images, {args.size} px, "
          f"tiles {args.tile} px every {args.stride})")
    for name, per_image in scores.items():
        vs_untiled = [s["psnr_vs_untiled"] for s in per_image if s["psnr_vs_untiled"] is not None]
        mean_untiled = sum(vs_untiled) / len(vs_untiled) if vs_untiled else None
        mean_image = sum(s["psnr_vs_image"] for s in per_image) / len(per_image)
        print(f"{name:<10} {'-' if mean_untiled is None else f'{mean_untiled:.2f}':>16} {mean_image:14.2f}")
        records.append({"suite": "diffusers-tiling", "model": args.model, "factor": stock.spatial_compression_ratio,
                        "size": args.size, "tile": args.tile, "stride": args.stride, "tiler": name,
                        "images": len(images), "psnr_vs_untiled": mean_untiled, "psnr_vs_image": mean_image,
                        "per_image": per_image, "device": "cpu", "machine": machine_description("cpu"),
                        "torch": torch.__version__, "date": date})
    if not args.no_save:
        out = args.results or results_path("cpu", RESULTS, kind="diffusers-tiling")
        append_records(records, out)
        print(f"appended {len(records)} records to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
