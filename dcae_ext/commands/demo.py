"""`dcae-ext demo`: the README's main job. Trains a tiny DC-AE and a tiny IBQ tokenizer on the
embedded sample images with the fast ops (reconstruction grids, loss curves), then prints the
quick benchmark table of the compiled ops against their references."""
from __future__ import annotations

import os

import torch

from dcae_ext.commands import bench, info


def add_parser(subparsers):
    parser = subparsers.add_parser("demo", help="train tiny DC-AE and IBQ models, then benchmark the ops")
    parser.add_argument("--out", default="demo_out", help="output folder")
    parser.add_argument("--steps", type=int, default=300, help="training steps per model")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--skip-bench", action="store_true", help="train only")
    return parser


SHOWN_METRICS = ("loss", "loss_l1", "loss_l2", "loss_lpips", "loss_quantizer", "codebook_usage", "perplexity")


def run(args) -> int:
    from dcae_ext.commands.train import progress_callback
    from dcae_ext.train.demo import run_demo

    info.run(args)
    print(f"\ntraining tiny DC-AE and tiny IBQ for {args.steps} steps each on the embedded images ({args.device})")
    results = run_demo(out=args.out, dcae_steps=args.steps, ibq_steps=args.steps, device=args.device,
                       callback=progress_callback())
    for model, result in results.items():
        last = result["metrics"] or {}
        terms = ", ".join(f"{key} {value:.4f}" for key, value in last.items()
                          if isinstance(value, float) and key in SHOWN_METRICS)
        print(f"{model}: {result['seconds']:.0f} s, last logged step: {terms}; outputs in {result['out']}")
    if not args.skip_bench:
        bench.run_suites(list(bench.SUITES), args.device, bench.parse_dtypes(None, args.device), quick=True,
                         results_dir=os.path.join(args.out, "bench"), save=True)
    return 0
