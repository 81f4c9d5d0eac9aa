"""Dataset encoding throughput: `dcae-ext encode` (DataLoader workers, pinned memory, shards written
atomically) against the loop a diffusers user writes by hand (PIL in the main process, then
`AutoencoderDC.encode`, latents saved at the end), on the same folder, weights and dtype.

    python benchmarks/bench_encode.py --preset dc-ae-f32c32-in-1.0 --resolution 256 --images 32
    python benchmarks/bench_encode.py --preset tiny --resolution 256 --images 64
    # on a GPU (bf16 by default there): f32c32 at 512 and 1024
    python benchmarks/bench_encode.py --device cuda --resolution 512 --images 512 --batch-size 32
    python benchmarks/bench_encode.py --device cuda --resolution 1024 --images 256 --batch-size 8

The folder holds the embedded sample photographs (scikit-image), cycled to --images files. Weights:
the preset's random initialisation (seed 0), saved in diffusers format and loaded by both sides.
After one untimed batch through each model, each side runs --repeats times, alternating; a record
gives the median images/s, min and max, the spread ((max - min) / median) and a flag when the
spread exceeds 10 %. Model loading is not timed; worker start-up is (a user waits for it). One
JSON line per side and one comparison line are appended to benchmarks/results/<device>-encode.jsonl
(or --results; --no-save prints only).
"""
from __future__ import annotations

import argparse
import datetime
import os
import shutil
import tempfile
import time

import numpy as np
import torch
from PIL import Image

from dcae_ext.bench.hardware import machine_description
from dcae_ext.bench.records import append_records, results_path
from dcae_ext.bench.timing import throughput_summary
from dcae_ext.commands._options import DTYPES, choose_device, default_dtype
from dcae_ext.data.images import embedded_image_paths, list_images, resize_center_crop
from dcae_ext.encode.codecs import LatentCodec
from dcae_ext.encode.plan import make_plan
from dcae_ext.encode.run import encode_dataset
from dcae_ext.models import DCAE, load_model_from_path

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def make_folder(root: str, count: int) -> str:
    folder = os.path.join(root, "images")
    os.makedirs(folder)
    sources = embedded_image_paths()
    for i in range(count):
        source = sources[i % len(sources)]
        shutil.copy(source, os.path.join(folder, f"{i:05d}_{os.path.basename(source)}"))
    return folder


def run_ours(codec: LatentCodec, model_dir: str, folder: str, out: str, args, device: torch.device) -> float:
    """Seconds for the whole encode (loader start-up, encoding, shard writes, index merge)."""
    sources = list_images(folder)
    plan = make_plan("latents", model_dir, sources, args.resolution, args.dtype, None, args.shard_size,
                     args.batch_size)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    encode_dataset(codec, plan, sources, out, overwrite=True, workers=args.workers)
    return time.perf_counter() - start


def _load(path: str, resolution: int) -> torch.Tensor:
    with Image.open(path) as image:
        image = resize_center_crop(image.convert("RGB"), resolution)
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0


def run_diffusers(vae, folder: str, out: str, args, device: torch.device) -> float:
    """The hand-written loop: read a batch, encode it, collect; save once at the end."""
    from safetensors.torch import save_file

    paths = list_images(folder)
    dtype = DTYPES[args.dtype]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    latents = []
    for first in range(0, len(paths), args.batch_size):
        batch = torch.stack([_load(p, args.resolution) for p in paths[first:first + args.batch_size]])
        with torch.no_grad():
            latents.append(vae.encode((batch * 2 - 1).to(device, dtype)).latent.cpu())
    save_file({"latents": torch.cat(latents).contiguous()}, os.path.join(out, "latents.safetensors"))
    return time.perf_counter() - start


def summarize(seconds: list[float], images: int) -> dict:
    return {**throughput_summary(seconds, images), "runs_s": seconds}


def latent_agreement(codec: LatentCodec, vae, folder: str, args, device: torch.device) -> float:
    """Max |ours - diffusers| over the first batch: the two sides compute the same latents (and
    both have run the shapes once, so neither pays a first-call cost in the timed rounds)."""
    paths = list_images(folder)[:args.batch_size]
    images = torch.stack([_load(p, args.resolution) for p in paths]).to(device)
    with torch.no_grad():
        theirs = vae.encode((images * 2 - 1).to(DTYPES[args.dtype])).latent
    return float((codec.encode(images).float() - theirs.float()).abs().max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="dc-ae-f32c32-in-1.0")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--dtype", choices=list(DTYPES), default=None, help="default: bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--results", default=None,
                        help="JSONL file (default: benchmarks/results/<device>-encode.jsonl)")
    parser.add_argument("--no-save", action="store_true", help="print only, append nothing")
    args = parser.parse_args()
    device = choose_device(args.device)
    args.dtype = args.dtype or default_dtype(device)
    from diffusers import AutoencoderDC, __version__ as diffusers_version

    with tempfile.TemporaryDirectory() as root:
        folder = make_folder(root, args.images)
        model_dir = os.path.join(root, "model")
        torch.manual_seed(0)
        DCAE.from_config(args.preset).save_pretrained(model_dir, format="diffusers")
        vae = AutoencoderDC.from_pretrained(model_dir, torch_dtype=DTYPES[args.dtype]).to(device).eval()
        codec = LatentCodec(load_model_from_path(model_dir).to(device), DTYPES[args.dtype])
        agreement = latent_agreement(codec, vae, folder, args, device)
        ours, theirs = [], []
        for repeat in range(args.repeats):
            out = os.path.join(root, f"out{repeat}")
            os.makedirs(out)
            ours.append(run_ours(codec, model_dir, folder, os.path.join(out, "ours"), args, device))
            theirs.append(run_diffusers(vae, folder, out, args, device))
            print(f"round {repeat + 1}: encode {args.images / ours[-1]:.2f} images/s, "
                  f"diffusers loop {args.images / theirs[-1]:.2f} images/s", flush=True)

    common = {"bench": "encode", "preset": args.preset, "resolution": args.resolution, "images": args.images,
              "batch_size": args.batch_size, "workers": args.workers, "dtype": args.dtype, "device": device.type,
              "device_name": machine_description(device), "torch": torch.__version__,
              "diffusers": diffusers_version,
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "load_1min": os.getloadavg()[0]}
    records = [dict(common, impl="dcae-ext encode", **summarize(ours, args.images)),
               dict(common, impl="diffusers AutoencoderDC loop", workers=0, **summarize(theirs, args.images))]
    speedup = records[0]["images_per_s"]["median"] / records[1]["images_per_s"]["median"]
    records.append(dict(common, impl="comparison", speedup_median=speedup, max_abs_latent_diff=agreement))
    path = args.results or results_path(device, RESULTS, kind="encode")
    if not args.no_save:
        append_records(records, path)
    for record in records[:2]:
        rate = record["images_per_s"]
        print(f"{record['impl']:30s} {rate['median']:8.2f} images/s (min {rate['min']:.2f}, max {rate['max']:.2f}, "
              f"spread {record['spread']:.0%}{', NOISY' if record['noisy'] else ''})")
    print(f"speedup {speedup:.2f}x; latents agree to {agreement:.2e}" + ("" if args.no_save else f"; appended to {path}"))


if __name__ == "__main__":
    main()
