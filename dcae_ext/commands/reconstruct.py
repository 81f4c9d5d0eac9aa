"""`dcae-ext reconstruct`: encode and decode images with a DC-AE, write PNGs, print PSNR per image."""
from __future__ import annotations

import math
import os
from pathlib import Path

import torch

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def add_parser(subparsers):
    parser = subparsers.add_parser("reconstruct", help="reconstruct images with a DC-AE and report PSNR",
                                   description=__doc__)
    parser.add_argument("--model", required=True,
                        help="preset name (random weights) or a local checkpoint dir/file (diffusers or efficientvit)")
    parser.add_argument("--config", default=None, help="preset name for an efficientvit checkpoint whose path names none")
    parser.add_argument("--input", required=True, help="an image file or a directory of images")
    parser.add_argument("--out", required=True, help="output directory for the reconstructed PNGs")
    parser.add_argument("--tile", type=int, default=None, help="tiled encode/decode with tiles of N pixels")
    parser.add_argument("--dtype", choices=list(DTYPES), default=None, help="default: bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser


def list_images(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise SystemExit(f"--input: {path} does not exist")
    images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise SystemExit(f"--input: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {path}")
    return images


def load_model(name_or_path: str, config: str | None):
    from dcae_ext.models import DCAE, preset_names

    if os.path.exists(name_or_path):
        return DCAE.from_pretrained(name_or_path, config=config)
    if name_or_path in preset_names():
        print(f"warning: '{name_or_path}' is a preset name, not a checkpoint: the weights are RANDOM, "
              "so the reconstructions are noise (pass a local checkpoint path for real results)")
        return DCAE.from_config(name_or_path)
    raise SystemExit(f"--model: {name_or_path} is neither a local path nor a preset ({', '.join(preset_names())})")


def to_tensor(image) -> torch.Tensor:
    """PIL image -> (1, 3, H, W) float32 in [-1, 1], the DC-AE input range."""
    import numpy as np

    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1)[None]


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """(1, 3, H, W) in [-1, 1] -> (H, W, 3) uint8."""
    return ((x[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu()


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a.float() - b.float()).square().mean().item()
    return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def run(args) -> int:
    from PIL import Image
    from tqdm import tqdm

    device = torch.device(args.device)
    dtype = DTYPES[args.dtype] if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    images = list_images(Path(args.input))
    model = load_model(args.model, args.config).to(device).eval()
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    if args.tile:
        try:
            model.enable_tiling(args.tile)
        except ValueError as error:
            raise SystemExit(f"--tile: {error}")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    scores = []
    for path in tqdm(images, desc="reconstruct", unit="img"):
        original = to_tensor(Image.open(path))
        x = original.to(device)
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            reconstruction = model(x, pad=True).reconstruction
        result = to_uint8(reconstruction)
        Image.fromarray(result.numpy()).save(out_dir / f"{path.stem}.png")
        score = psnr(result, to_uint8(original))
        scores.append(score)
        tqdm.write(f"{path.name}: PSNR {score:.2f} dB")
    finite = [s for s in scores if math.isfinite(s)]
    if finite:
        print(f"mean PSNR over {len(scores)} images: {sum(finite) / len(finite):.2f} dB -> {out_dir}")
    return 0
