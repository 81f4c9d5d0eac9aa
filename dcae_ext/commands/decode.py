"""`dcae-ext decode`: the output of `dcae-ext encode` or `tokenize` back to PNG images, with the PSNR
of each against its source image (prepared as the encoder saw it, measured as `dcae-ext eval` does)."""
from __future__ import annotations

import os
import sys

from dcae_ext.commands._options import DTYPES, choose_device
from dcae_ext.commands.encode import KINDS, load_codec


def add_parser(subparsers):
    parser = subparsers.add_parser("decode", help="decode encoded latents or tokens back to images",
                                   description=__doc__)
    parser.add_argument("--input", required=True, help="the --out folder of an encode or tokenize run")
    parser.add_argument("--out", required=True, help="folder for the decoded PNGs")
    parser.add_argument("--model", default=None, help="the model to decode with (default: the one that encoded)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--dtype", choices=list(DTYPES), default=None, help="default: the dtype it was encoded in")
    parser.add_argument("--limit", type=int, default=None, help="decode only the first N images")
    parser.add_argument("--no-psnr", action="store_true", help="do not read the source images to report PSNR")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    return parser


def _warn_if_weights_changed(codec, metadata: dict, args) -> None:
    """A warning when the model that encoded (the default --model) holds other weights now."""
    from dcae_ext.encode.plan import weights_digest

    recorded = metadata["plan"].get("weights_sha256")
    if args.model is None and recorded and codec.dtype == DTYPES[metadata["plan"]["dtype"]] \
            and weights_digest(codec.model) != recorded:
        print(f"warning: the weights of {metadata['model']} changed since they encoded {args.input}: decoding "
              "with the current ones", file=sys.stderr)


def _check_model_fits(codec, metadata: dict, args) -> None:
    """--model must read what the encoding model wrote: tokens index its codebook (another size gives
    other images for the same indices, without an error wherever they lie below it), and both kinds
    cover f x f pixels per position."""
    described = codec.description()
    shown = {"num_codes": "{} codes", "spatial_compression": "spatial factor {}"}
    for key, text in shown.items():
        if key in metadata and key in described and metadata[key] != described[key]:
            raise SystemExit(f"--model: {args.input} holds {metadata['kind']} of {text.format(metadata[key])}, and "
                             f"--model {args.model} has {text.format(described[key])}; decode them with the model "
                             "that wrote them (leave out --model)")


def run(args) -> int:
    from tqdm import tqdm

    from dcae_ext.data.shards import METADATA_FILE, read_json
    from dcae_ext.encode.decode import decode_dataset

    if args.batch_size < 1:
        raise SystemExit(f"--batch-size: expected a positive number, got {args.batch_size}")
    if args.limit is not None and args.limit < 1:
        raise SystemExit(f"--limit: expected a positive number of images, got {args.limit}")
    metadata = read_json(args.input, METADATA_FILE) if os.path.isdir(args.input) else None
    if metadata is None:
        raise SystemExit(f"--input: {args.input} holds no {METADATA_FILE}: not the output of a finished encode or "
                         "tokenize run (run the same command again to finish it)")
    if os.path.isfile(args.out):
        raise SystemExit(f"--out: {args.out} is a file, expected a folder")
    kind = metadata["kind"]
    device = choose_device(args.device)
    dtype = args.dtype or metadata["plan"]["dtype"]
    tile = metadata["plan"]["tile"]  # decoded in tiles as it was encoded
    stored_channels = metadata.get("latent_channels") if kind == "latents" else None  # fewer: --latent-channels
    codec = load_codec(kind, args.model or metadata["model"], DTYPES[dtype], device, tile, decoding=args.input,
                       latent_channels=stored_channels)
    _check_model_fits(codec, metadata, args)
    _warn_if_weights_changed(codec, metadata, args)
    count = metadata["num_images"] if args.limit is None else min(args.limit, metadata["num_images"])
    try:
        with tqdm(total=count, desc="decode", unit="img", file=sys.stderr, delay=1) as bar:
            summary = decode_dataset(codec, args.input, args.out, batch_size=args.batch_size, limit=args.limit,
                                     compare=not args.no_psnr, on_image=lambda name, score: bar.update(1))
    except ValueError as error:
        prefix = "argument 'out': "
        if str(error).startswith(prefix):
            raise SystemExit(f"--out: {str(error)[len(prefix):]}") from None
        raise
    print(f"decoded {summary.images} {KINDS[kind][1]} {kind} to {args.out}")
    if summary.mean_psnr is not None:
        print(f"PSNR {summary.mean_psnr:.3f} dB (mean over {len(summary.psnr)} images against their sources)")
    if summary.missing_sources:
        print(f"note: {summary.missing_sources} source images could not be read: no PSNR for them", file=sys.stderr)
    return 0
