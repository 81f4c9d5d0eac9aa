"""`dcae-ext encode`: a folder (or list) of images -> DC-AE latents in safetensors shards, with an
index and metadata, for latent diffusion training (`dcae_ext.data.LatentDataset` reads it back).
Resumable (run the same command again), and under torchrun each rank takes a share of the shards."""
from __future__ import annotations

import os
import shlex
import sys

import torch

from dcae_ext.commands._options import DTYPES, choose_device, default_dtype

KINDS = {"latents": ("encode", "DC-AE", "LatentDataset"), "tokens": ("tokenize", "IBQ tokenizer", "TokenDataset")}


def add_arguments(parser, kind: str) -> None:
    command, model_kind, _ = KINDS[kind]
    presets = "ibq-<preset> (random weights)" if kind == "tokens" else "a preset name (random weights)"
    parser.add_argument("--model", required=True, help=f"a local {model_kind} folder or file, or {presets}")
    parser.add_argument("--data", required=True, help="image folder (searched recursively) or a list file")
    parser.add_argument("--out", required=True, help="output folder (shards/, index.jsonl, metadata.json); "
                                                     "an interrupted run there is continued")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--resolution", type=int, default=256,
                      help="resize the shorter side to R, then centre-crop R x R (default: 256)")
    size.add_argument("--keep-size", action="store_true",
                      help="encode each image at its own size (padded to a multiple of the model's factor)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default: 8)")
    parser.add_argument("--dtype", choices=["auto", *DTYPES], default="auto",
                        help="model dtype" + (", also of the stored latents" if kind == "latents" else "")
                             + "; auto: bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--tile", type=int, default=None,
                        help="encode images larger than N pixels in overlapping tiles (a multiple of the factor)")
    if kind == "latents":
        parser.add_argument("--latent-channels", type=int, default=None, metavar="C",
                            help="store only the first C channels of a structured latent (DC-AE 1.5, as "
                                 "ae.encode(x, latent_channels=C)); decode reconstructs from them "
                                 "(default: every channel)")
    parser.add_argument("--shard-size", type=int, default=1000, help="images per shard file (default: 1000)")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="DataLoader processes decoding and resizing images (default: min(8, CPUs))")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available); cuda is "
                                                       "cuda:LOCAL_RANK, each torchrun rank its own GPU")
    parser.add_argument("--overwrite", action="store_true", help="discard an earlier run in --out and start afresh")
    parser.add_argument("--deterministic", action="store_true",
                        help="deterministic GPU kernels (torch.use_deterministic_algorithms), so that a resumed or "
                             "multi-GPU run writes the same bytes as one uninterrupted run; on a CPU they always are, "
                             "given the same threads per process")
    parser.add_argument("--strict-data", action="store_true",
                        help="stop at the first unreadable image (default: skip it, count it, list it in "
                             "skipped.jsonl)")


def add_parser(subparsers):
    parser = subparsers.add_parser("encode", help="encode an image dataset to DC-AE latents (safetensors shards)",
                                   description=__doc__)
    add_arguments(parser, "latents")
    return parser


def command_line(command: str, args) -> str:
    """The command with every setting spelled out (defaults included), for metadata.json."""
    words = ["dcae-ext", command]
    for name, value in vars(args).items():
        if name in ("command", "handler") or value is None or value is False:
            continue
        words += [f"--{name.replace('_', '-')}"] + ([] if value is True else [str(value)])
    return shlex.join(words)


def _a(kind: str) -> str:
    """'a DC-AE', 'an IBQ tokenizer'."""
    return f"{'an' if kind.startswith('IBQ') else 'a'} {kind}"


def load_codec(kind: str, name_or_path: str, dtype: torch.dtype, device: torch.device, tile: int | None = None,
               decoding: str | None = None, latent_channels: int | None = None):
    """The model behind `name_or_path` wrapped for `kind`, on `device` in `dtype`. `decoding`: the
    folder of encoded `kind` being decoded (the error for a model of the wrong kind says so).
    `latent_channels`: the prefix of a structured latent to encode (or being decoded)."""
    from dcae_ext.commands._models import load_model
    from dcae_ext.encode.codecs import CODECS, prefix_channels

    command, model_kind, _ = KINDS[kind]
    model, loaded_kind, pretrained = load_model(name_or_path)
    if loaded_kind != model_kind and decoding is not None:
        raise SystemExit(f"--model: {name_or_path} is {_a(loaded_kind)}, but {decoding} holds {kind} written by "
                         f"dcae-ext {command}: decode them with {_a(model_kind)} (leave out --model for the one "
                         "that wrote them)")
    if loaded_kind != model_kind:
        other = "tokenize" if command == "encode" else "encode"
        raise SystemExit(f"--model: {name_or_path} is {_a(loaded_kind)}; {command} takes {_a(model_kind)} "
                         f"(use dcae-ext {other})")
    if not pretrained:
        print(f"note: --model {name_or_path} is a preset with RANDOM weights: the codes test the pipeline only",
              file=sys.stderr)
    options = {}
    if kind == "latents":
        try:
            options["latent_channels"] = prefix_channels(model, latent_channels)
        except ValueError as error:
            raise SystemExit(_prefix_problem(str(error).split(": ", 1)[-1], latent_channels, decoding)) from None
    try:
        return CODECS[kind](model.to(device), dtype, tile, **options)
    except ValueError as error:
        raise SystemExit(f"--tile: {error}") from None


def _prefix_problem(problem: str, channels: int, decoding: str | None) -> str:
    """The one-line error for a channel count the model cannot take: encoding it (--latent-channels)
    or decoding the latents of that many channels stored in `decoding` (--model)."""
    if decoding is None:
        return f"--latent-channels: {problem}"
    return (f"--model: {decoding} holds latents of {channels} channels, and {problem}; decode them with the "
            "model that wrote them (leave out --model)")


def run_encoding(args, kind: str) -> int:
    from tqdm import tqdm

    from dcae_ext.data.images import UnreadableImageError, list_images
    from dcae_ext.data.loading import skip_message
    from dcae_ext.encode import ranks as rank_group
    from dcae_ext.encode.plan import PlanMismatch, make_plan, weights_digest
    from dcae_ext.encode.run import encode_dataset
    from dcae_ext.interrupt import Interrupted

    command, _, reader = KINDS[kind]
    for flag, value in (("--batch-size", args.batch_size), ("--shard-size", args.shard_size),
                        ("--resolution", args.resolution)):
        if value is not None and value < 1:
            raise SystemExit(f"{flag}: expected a positive number, got {value}")
    if args.workers < 0:
        raise SystemExit(f"--workers: expected >= 0, got {args.workers}")
    try:
        sources = list_images(args.data)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"--data: {str(error).split(': ', 1)[-1]}") from None
    if args.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS reads it when first used
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    ranks = rank_group.join()
    try:
        device = choose_device(args.device, ranks.local_rank)
        if device.type == "cuda":
            torch.cuda.set_device(device)  # pinned-memory buffers and caches go to this rank's GPU, not GPU 0
        dtype_name = args.dtype if args.dtype != "auto" else default_dtype(device)
        tile = args.tile
        model_name = os.path.abspath(args.model) if os.path.exists(args.model) else args.model
        codec = load_codec(kind, model_name, DTYPES[dtype_name], device, tile,
                           latent_channels=getattr(args, "latent_channels", None))
        resolution = None if args.keep_size else args.resolution
        if resolution is not None and resolution % codec.factor:
            lower, upper = resolution // codec.factor * codec.factor, -(-resolution // codec.factor) * codec.factor
            raise SystemExit(f"--resolution: {resolution} is not a multiple of the model's factor {codec.factor} "
                             f"(try {lower or upper} or {upper}, or --keep-size to pad each image)")
        plan = make_plan(kind, model_name, sources, resolution, dtype_name, tile, args.shard_size, args.batch_size,
                         latent_channels=getattr(codec, "latent_channels", None),
                         weights_sha256=weights_digest(codec.model))
        bar = tqdm(disable=True)  # replaced once this rank knows how many images it will encode

        def on_start(count: int) -> None:
            nonlocal bar
            bar = tqdm(total=count, desc=command, unit="img", file=sys.stderr, disable=not ranks.is_main,
                       dynamic_ncols=True)

        def on_images(count: int, stats) -> None:
            bar.update(count)

        def on_skip(failure, count: int) -> None:
            prefix = f"rank {ranks.rank}: " if ranks.world_size > 1 else ""
            bar.write(prefix + skip_message(failure, count), sys.stderr)

        try:
            summary = encode_dataset(codec, plan, sources, args.out, ranks=ranks, overwrite=args.overwrite,
                                     workers=args.workers, strict=args.strict_data,
                                     command=command_line(command, args), on_start=on_start,
                                     on_images=on_images, on_skip=on_skip)
        except PlanMismatch as error:
            raise SystemExit(f"--out: {error}") from None
        except Interrupted as stop:
            raise Interrupted(stop.signum, f"{stop}; the finished shards in {args.out} are kept: run the same "
                                           "command again to continue") from None
        except UnreadableImageError as error:
            raise SystemExit(f"--strict-data: {error} (without --strict-data it is skipped and counted)") from None
        finally:
            bar.close()
        if ranks.is_main:
            _print_summary(summary, args.out, kind, reader, dtype_name, device, ranks.world_size)
    finally:
        rank_group.leave(ranks)
    return 0


def _print_summary(summary, out: str, kind: str, reader: str, dtype: str, device, world_size: int) -> None:
    verb = "encoded" if kind == "latents" else "tokenized"
    where = f"{dtype}, {device.type}" + (f", {world_size} processes" if world_size > 1 else "")
    resumed = " (continuing an interrupted run)" if summary.resumed else ""
    if summary.resumed and summary.shards == 0:
        print(f"nothing left to do: every shard in {out} was already complete")
    else:
        print(f"{verb} {summary.images} images in {summary.seconds:.1f} s: {summary.images_per_second:.2f} images/s "
              f"({where}){resumed}")
    skipped = f", {summary.total_skipped} unreadable skipped (listed in {os.path.join(out, 'skipped.jsonl')})" \
        if summary.total_skipped else ""
    print(f"{out}: {summary.total_images} {kind}{skipped}; read with dcae_ext.data.{reader}({out!r})")


def run(args) -> int:
    return run_encoding(args, "latents")
