"""`dcae-ext reconstruct`: encode and decode images with a DC-AE or an IBQ tokenizer, write PNGs, print
PSNR per image (dcae_ext.data.psnr: on the float reconstruction, before rounding to PNG pixels, as
`dcae-ext eval`). Images of any size: padded to a multiple of the model's factor, cropped back."""
from __future__ import annotations

import math
import os
import sys

import torch

from dcae_ext.commands._options import DTYPES, choose_device, default_dtype, output_folder_problem


def add_parser(subparsers):
    parser = subparsers.add_parser("reconstruct", description=__doc__,
                                   help="reconstruct images with a DC-AE or IBQ tokenizer and report PSNR")
    parser.add_argument("--model", required=True,
                        help="preset name (random weights; ibq-<preset> for a tokenizer), or a local model: DC-AE "
                             "diffusers or efficientvit folder/file, IBQ tokenizer folder or official checkpoint, "
                             "a training run or its checkpoint.pt")
    parser.add_argument("--config", default=None,
                        help="preset name for an efficientvit checkpoint whose path names none; for an IBQ "
                             "tokenizer an IBQ preset (checked against a saved config.json)")
    parser.add_argument("--input", required=True, help="an image file or a directory of images")
    parser.add_argument("--out", required=True, help="output directory for the reconstructed PNGs")
    parser.add_argument("--tile", type=int, default=None, help="tiled encode/decode with tiles of N pixels")
    parser.add_argument("--latent-channels", type=int, default=None, metavar="C",
                        help="a structured latent (DC-AE 1.5): reconstruct from its first C channels only, as "
                             "ae(x, latent_channels=C) (default: every channel)")
    parser.add_argument("--dtype", choices=list(DTYPES), default=None, help="default: bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--strict-data", action="store_true",
                        help="refuse to start if an input image is unreadable (default: skip it with a warning)")
    return parser


def list_inputs(path: str) -> list[str]:
    from dcae_ext.data.images import IMAGE_EXTENSIONS, list_images

    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise SystemExit(f"--input: {path} does not exist")
    try:
        return list_images(path, recursive=False)
    except ValueError:
        raise SystemExit(f"--input: no images ({', '.join(IMAGE_EXTENSIONS)}) in {path}") from None


def load_autoencoder(name_or_path: str, config: str | None):
    """A DC-AE or IBQ tokenizer from --model (see commands._models.load_model); a preset's weights are
    random, said aloud."""
    from dcae_ext.commands._models import load_model

    model, _, pretrained = load_model(name_or_path, config)
    if not pretrained:
        print(f"warning: '{name_or_path}' is a preset name, not a checkpoint: the weights are RANDOM, "
              "so the reconstructions are noise (pass a local checkpoint path for real results)")
    return model


def mean_psnr_line(scores: list[float], out: str) -> str:
    """The summary line: the mean over the finite scores, saying how many exact copies (inf) it leaves out."""
    finite = [score for score in scores if math.isfinite(score)]
    copies = len(scores) - len(finite)
    left_out = f" ({copies} exact {'copy' if copies == 1 else 'copies'}, PSNR inf, left out)" if copies else ""
    mean = f"{sum(finite) / len(finite):.2f} dB" if finite else "inf"
    return f"mean PSNR over {len(finite)} images: {mean}{left_out} -> {out}"


def _prepare(args):
    """Everything that can be wrong with the arguments is found here, before any output is written."""
    from dcae_ext.data.images import UnreadableImageError, distinct_png_names, inputs_replaced, open_rgb

    device = choose_device(args.device)
    problem = output_folder_problem("--out", args.out)
    if problem:
        raise SystemExit(problem)
    dtype = DTYPES[args.dtype or default_dtype(device)]
    paths = list_inputs(args.input)
    replaced = inputs_replaced(args.out, distinct_png_names(paths), paths)
    if replaced:
        raise SystemExit(f"--out: writing the reconstructions into {args.out} would replace the input image "
                         f"{replaced[0]}{f' and {len(replaced) - 1} more' if len(replaced) > 1 else ''}: choose "
                         "another --out")
    model = load_autoencoder(args.model, args.config).to(device).eval()
    if args.latent_channels is not None:
        _check_latent_channels(model, args.latent_channels)
    if args.tile is not None:
        try:
            model.enable_tiling(args.tile)
        except ValueError as error:
            raise SystemExit(f"--tile: {error}") from None
    if args.strict_data:
        for path in paths:
            try:
                open_rgb(path)
            except UnreadableImageError as error:
                raise SystemExit(f"--strict-data: {error} (without --strict-data it is skipped)") from None
    return device, dtype, paths, model


def _check_latent_channels(model, channels: int) -> None:
    from dcae_ext.models import DCAE

    if not isinstance(model, DCAE):
        raise SystemExit(f"--latent-channels: {type(model).__name__} is a tokenizer, it has no latent channels to "
                         "take a prefix of (a DC-AE 1.5 has)")
    try:
        model._channel_counts(channels)
    except ValueError as error:
        raise SystemExit(f"--latent-channels: {str(error).split(': ', 1)[-1]}") from None


def run(args) -> int:
    import numpy as np
    from tqdm import tqdm

    from dcae_ext.data.images import UnreadableImageError, distinct_png_names, open_rgb
    from dcae_ext.data.psnr import psnr_per_image, save_png, to_unit

    device, dtype, paths, model = _prepare(args)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    os.makedirs(args.out, exist_ok=True)
    scores, skipped = [], []
    for path, name in tqdm(list(zip(paths, distinct_png_names(paths))), desc="reconstruct", unit="img"):
        try:
            pixels = torch.from_numpy(np.asarray(open_rgb(path), dtype=np.uint8).copy())
        except UnreadableImageError as error:
            skipped.append(path)
            tqdm.write(f"skipped: {error} ({len(skipped)} unreadable so far)", file=sys.stderr)
            continue
        target = pixels.permute(2, 0, 1)[None].float() / 255
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            prefix = {} if args.latent_channels is None else {"latent_channels": args.latent_channels}
            reconstruction = model((target * 2 - 1).to(device), pad=True, **prefix).reconstruction
        result = to_unit(reconstruction).cpu()
        save_png(result[0], os.path.join(args.out, name))
        score = float(psnr_per_image(result, target))
        scores.append(score)
        tqdm.write(f"{os.path.basename(path)}: PSNR {score:.2f} dB -> {name}")
    if not scores:
        raise SystemExit(f"--input {args.input}: none of its {len(paths)} image(s) could be read; nothing was "
                         "reconstructed")
    print(mean_psnr_line(scores, args.out))
    if skipped:
        print(f"warning: skipped {len(skipped)} unreadable image(s): {', '.join(skipped)}", file=sys.stderr)
    return 0
