"""`dcae-ext demo`: the README's main job. Trains a tiny DC-AE and a tiny IBQ tokenizer on the
embedded sample images with the fast ops (reconstruction grids, loss curves), evaluates both with
`dcae-ext eval` over the embedded images (PSNR; codebook usage and perplexity of the IBQ codes over
the whole set), then prints the quick benchmark table of the compiled ops against their references."""
from __future__ import annotations

import argparse
import json
import os

import torch

from dcae_ext.commands import bench, info
from dcae_ext.commands import eval as eval_command

EVAL_RESOLUTION = 256  # `dcae-ext eval`'s default: each embedded image resized and centre-cropped


def add_parser(subparsers):
    parser = subparsers.add_parser("demo", help="train tiny DC-AE and IBQ models, evaluate them, benchmark the ops")
    parser.add_argument("--out", default="demo_out", help="output folder")
    parser.add_argument("--steps", type=int, default=300, help="training steps per model")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--skip-bench", action="store_true", help="train only")
    return parser


def evaluate_saved(model_dir: str, out: str, device: str) -> dict:
    """`dcae-ext eval --model MODEL_DIR --out OUT` over the embedded images; returns its metrics."""
    parser = argparse.ArgumentParser()
    eval_command.add_parser(parser.add_subparsers())
    args = parser.parse_args(["eval", "--model", model_dir, "--out", out, "--device", device,
                              "--resolution", str(EVAL_RESOLUTION), "--batch-size", "4"])
    eval_command.run(args)
    with open(os.path.join(out, "eval.json")) as stream:
        return json.load(stream)["metrics"]


def summary_line(model: str, seconds: float, metrics: dict, out: str) -> str:
    """One line per model: time, and PSNR, codebook usage and perplexity over the embedded set."""
    codes = metrics.get("codebook")
    codebook = (f"codebook usage {codes['usage']:.1%} ({codes['used_codes']}/{codes['num_codes']}), "
                f"perplexity {codes['perplexity']:.1f}" if codes else "codebook usage -, perplexity - (no codebook)")
    return (f"{model}: {seconds:.0f} s; over the {metrics['num_images']} embedded images ({EVAL_RESOLUTION} px): "
            f"PSNR {metrics['psnr']:.2f} dB, {codebook}; outputs in {out}")


def run(args) -> int:
    from dcae_ext.commands.train import progress_callback
    from dcae_ext.train.demo import run_demo

    info.run(args)
    print(f"\ntraining tiny DC-AE and tiny IBQ for {args.steps} steps each on the embedded images ({args.device})")
    results = run_demo(out=args.out, dcae_steps=args.steps, ibq_steps=args.steps, device=args.device,
                       callback=progress_callback())
    lines = []
    for model, result in results.items():
        print(f"\nevaluating the {model} model over the embedded images")
        metrics = evaluate_saved(os.path.join(result["out"], "model"), os.path.join(result["out"], "eval"),
                                 args.device)
        lines.append(summary_line(model, result["seconds"], metrics, result["out"]))
    print("\n" + "\n".join(lines))
    if not args.skip_bench:
        bench.run_suites(list(bench.SUITES), args.device, bench.parse_dtypes(None, args.device), quick=True,
                         results_dir=os.path.join(args.out, "bench"), save=True)
    return 0
