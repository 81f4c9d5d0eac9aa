"""`dcae-ext eval`: reconstruct every image of a folder (default: the embedded sample images) and
report PSNR, SSIM, LPIPS, rFID (and codebook usage / perplexity for an IBQ tokenizer)."""
from __future__ import annotations

import sys
import time

import torch

from dcae_ext.commands._options import DTYPES, choose_device, output_folder_problem


def add_parser(subparsers):
    parser = subparsers.add_parser("eval", help="reconstruction metrics (PSNR, SSIM, LPIPS, rFID, codebook usage)")
    parser.add_argument("--model", required=True,
                        help="a local model: a DC-AE folder or weights file (diffusers or efficientvit format), an "
                             "IBQ tokenizer saved by save_pretrained, an official IBQ checkpoint (SEED-Voken .ckpt "
                             "or its safetensors export), a training run folder or its checkpoint.pt; or a DC-AE "
                             "preset name (random weights), or ibq-<preset>")
    parser.add_argument("--config", default=None,
                        help="DC-AE preset name for efficientvit weights whose folder and path name none; for an "
                             "IBQ tokenizer an IBQ preset (an official checkpoint's config; checked against a "
                             "saved config.json)")
    parser.add_argument("--ema", action="store_true",
                        help="with a training run or checkpoint: evaluate the EMA weights instead of the live ones")
    parser.add_argument("--data", default=None, help="image folder or list file (default: the embedded sample images)")
    parser.add_argument("--resolution", type=int, default=256,
                        help="resize + centre crop size (0: each image at its own size, batch 1, padded to a multiple "
                             "of the model's factor and cropped back)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass")
    parser.add_argument("--tile", type=int, default=None,
                        help="tile size in pixels for tiled encode/decode (default: no tiling)")
    parser.add_argument("--inception-weights", default=None,
                        help="torch-fidelity Inception weights file (weights-inception-2015-12-05-6726825d.pth); "
                             "without it rFID is reported unavailable")
    parser.add_argument("--lpips-weights", default=None,
                        help="LPIPS trunk weights (LPIPS or torchvision state dict); without it LPIPS is unavailable")
    parser.add_argument("--lpips-net", default="vgg", choices=["vgg", "alex", "squeeze"], help="LPIPS trunk")
    parser.add_argument("--device", default=None,
                        help="where the model runs: cpu, cuda or cuda:N (default: cuda when visible, else cpu)")
    parser.add_argument("--dtype", default="fp32", choices=list(DTYPES), help="autocast dtype of the model")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N images (default: all)")
    parser.add_argument("--workers", type=int, default=0, help="data loader worker processes")
    parser.add_argument("--out", default="eval_out", help="folder for eval.json and worst_best.png")
    parser.add_argument("--latent-channels", default="auto", metavar="C,C,...|auto|none",
                        help="PSNR per channel prefix of a structured latent (DC-AE 1.5): channel counts as a comma "
                             "list, 'auto' (default: eighths of the latent, e.g. 16,32,...,128, for a model with a "
                             "structured latent; nothing for others) or 'none'")
    parser.add_argument("--strict-data", action="store_true",
                        help="stop at the first unreadable image (default: skip it with a warning and count it)")
    return parser


class _PadToFactor(torch.nn.Module):
    """A model that takes any image size (`pad=True`: padded to a multiple of its factor, then cropped back)."""

    @property
    def quantizer(self):
        """The tokenizer's quantizer (None for a DC-AE), for `evaluate`'s codebook statistics."""
        return getattr(self.model, "quantizer", None)

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x, **options):
        return self.model(x, pad=True, **options)


def image_paths(data: str | None, limit: int | None) -> list[str]:
    from dcae_ext.data.images import embedded_image_paths, list_images

    paths = embedded_image_paths() if data is None else list_images(data)
    return paths if limit is None else paths[:limit]


def latent_channel_counts(text: str, model) -> list[int] | None:
    """--latent-channels for `model`: the channel counts to report PSNR for, or None."""
    config = getattr(model, "config", None)
    structured = getattr(config, "structured_latent", False)
    if text == "none" or (text == "auto" and not structured):
        return None
    if text == "auto":
        full = config.latent_channels
        return sorted({max(1, full * eighth // 8) for eighth in range(1, 9)})
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise SystemExit(f"--latent-channels: expected channel counts separated by commas, 'auto' or 'none', "
                         f"got {text!r}") from None
    if not structured:
        raise SystemExit("--latent-channels: the model has no structured latent, so it decodes all its channels "
                         "only; use 'none' (or leave 'auto')")
    outside = [c for c in counts if not 1 <= c <= config.latent_channels]
    if not counts or outside:
        raise SystemExit(f"--latent-channels {text}: expected counts in 1..{config.latent_channels} (the model's "
                         "latent channels)")
    return counts


def _note(message: str) -> None:
    print(message, file=sys.stderr)


METRIC_NAMES = {"ssim": "SSIM", "lpips": "LPIPS"}


def _undefined_warning(name: str, metric: str, reason: str) -> None:
    from tqdm import tqdm

    tqdm.write(f"warning: {name}: {METRIC_NAMES[metric]} undefined ({reason}); reported missing for this image, "
               "left out of the mean", file=sys.stderr)


def run(args) -> int:
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from dcae_ext.data.images import UnreadableImageError
    from dcae_ext.data.loading import ReadableBatches, collate_readable, skip_message
    from dcae_ext.eval.evaluate import evaluate, num_codes_of, write_results
    from dcae_ext.eval.images import EvalImages
    from dcae_ext.eval.metrics import MetricUnavailable, build_fid, load_lpips
    from dcae_ext.interrupt import ignore_in_worker

    device = choose_device(args.device)
    if args.batch_size < 1:
        raise SystemExit(f"--batch-size: expected >= 1, got {args.batch_size}")
    if args.limit is not None and args.limit < 1:
        raise SystemExit(f"--limit: expected a positive number of images, got {args.limit}")
    problem = output_folder_problem("--out", args.out)
    if problem:
        raise SystemExit(problem)
    resolution = args.resolution or None
    if resolution is None and args.batch_size != 1:
        raise SystemExit("--resolution 0 (native sizes) needs --batch-size 1")
    try:
        paths = image_paths(args.data, args.limit)
    except (FileNotFoundError, ValueError) as error:
        detail = str(error).replace("argument 'data': ", "")
        raise SystemExit(f"--data {args.data}: {detail}")
    from dcae_ext.commands._models import load_model

    model, kind, pretrained = load_model(args.model, args.config, args.ema)
    factor = model.spatial_compression
    if resolution is not None and resolution % factor:
        raise SystemExit(f"--resolution: {resolution} must be a multiple of the model's spatial factor {factor}")
    if args.tile is not None:
        try:
            model.enable_tiling(args.tile)
        except ValueError as error:
            raise SystemExit(f"--tile {args.tile}: {str(error).split(': ', 1)[-1]}")
    prefixes = latent_channel_counts(args.latent_channels, model)
    if not pretrained:
        _note(f"note: --model {args.model} is a preset with RANDOM weights: the numbers test the pipeline, "
              "not reconstruction quality")
    model = model.to(device)
    if resolution is None:
        model = _PadToFactor(model)

    notes = {}
    try:
        lpips = load_lpips(args.lpips_weights, args.lpips_net)
    except MetricUnavailable as reason:
        lpips, notes["lpips"] = None, str(reason)
    try:
        fid = build_fid(args.inception_weights)
    except MetricUnavailable as reason:
        fid, notes["rfid"] = None, str(reason)
    for message in notes.values():
        _note(f"note: {message}")

    dataset = EvalImages(paths, resolution)
    loader = ReadableBatches(
        DataLoader(dataset, batch_size=args.batch_size, shuffle=False, num_workers=args.workers,
                   pin_memory=device.type == "cuda", collate_fn=collate_readable, worker_init_fn=ignore_in_worker),
        strict=args.strict_data, on_skip=lambda failure, count: tqdm.write(skip_message(failure, count), sys.stderr))
    keep = max(1, min(4, len(dataset) // 2))
    autocast_dtype = None if args.dtype == "fp32" else DTYPES[args.dtype]
    started = time.perf_counter()
    try:
        result = evaluate(model, loader, device=device, autocast_dtype=autocast_dtype, lpips=lpips, fid=fid,
                          num_codes=num_codes_of(model), names=dataset.name, keep=keep,
                          progress=lambda it: tqdm(it, desc="eval", unit="batch", file=sys.stderr),
                          latent_channels=prefixes, on_undefined=_undefined_warning)
    except UnreadableImageError as error:
        raise SystemExit(f"--strict-data: {error} (without --strict-data it is skipped and counted)")
    seconds = time.perf_counter() - started
    if loader.skipped:
        _note(f"warning: skipped {len(loader.skipped)} unreadable image(s); see 'skipped' in eval.json")
    info = {"model": args.model, "model_kind": kind, "pretrained": pretrained,
            "data": args.data or "embedded sample images (scikit-image)", "resolution": resolution,
            "batch_size": args.batch_size, "tile": args.tile, "latent_channels": prefixes,
            "device": str(device), "dtype": args.dtype,
            "seconds": round(seconds, 3), "notes": notes,
            "skipped": [{"path": failure.path, "reason": failure.reason} for failure in loader.skipped]}
    paths = write_results(result, args.out, info, grid_title=f"{args.model}: worst and best reconstructions (PSNR)")
    _print_summary(result["metrics"], notes)
    print(f"wrote {paths['json']} and {paths['grid']}")
    return 0


def _print_summary(metrics: dict, notes: dict) -> None:
    def show(value, spec):
        return "unavailable" if value is None else format(value, spec)

    images = metrics["num_images"]
    missing = metrics.get("missing", {})

    def over(metric: str) -> str:
        count = missing.get(metric, 0)
        return f"  (mean over {images - count} of {images} images: undefined for {count}, see the warnings)" \
            if count else ""

    print(f"images  {images}")
    print(f"PSNR    {show(metrics['psnr'], '.3f')} dB")
    print(f"SSIM    {show(metrics['ssim'], '.4f')}{over('ssim')}")
    print(f"LPIPS   {show(metrics['lpips'], '.4f')}" + ("  (no LPIPS weights: see the note above)" if "lpips" in notes
                                                       else over("lpips")))
    print(f"rFID    {show(metrics['rfid'], '.3f')}" + ("  (no Inception weights: see the note above)" if "rfid" in notes else ""))
    if metrics.get("psnr_by_latent_channels"):
        print("PSNR by latent channels (the first c channels of the structured latent):")
        print("  channels  PSNR dB")
        for channels, value in metrics["psnr_by_latent_channels"].items():
            print(f"  {channels:>8}  {show(value, '.3f')}")
    if "codebook" in metrics:
        codes = metrics["codebook"]
        print(f"codes   usage {codes['usage']:.2%} ({codes['used_codes']}/{codes['num_codes']}), "
              f"perplexity {codes['perplexity']:.1f}")
