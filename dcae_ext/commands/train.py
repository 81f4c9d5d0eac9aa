"""`dcae-ext train dcae|ibq`: train a DC-AE (phase 1, 2 or 3) or an IBQ tokenizer.

  dcae-ext train dcae --preset tiny --steps N --batch-size B --resolution R --out DIR [--data DIR] [--resume] [--phase 1|2|3]
  dcae-ext train ibq  --preset tiny --steps N --batch-size B --resolution R --out DIR [--data DIR] [--resume]

Options come from the phase's recipe, then --config FILE (.yaml/.json, the names of
dcae_ext.train.config.TrainConfig), then the flags. Under torchrun every process runs this
command; rank 0 alone writes files and shows progress.
"""
from __future__ import annotations

import argparse
import os
import sys


def add_parser(subparsers):
    parser = subparsers.add_parser("train", help="train a DC-AE or an IBQ tokenizer",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", choices=["dcae", "ibq"], help="what to train")
    parser.add_argument("--preset", help="model preset (tiny, dc-ae-f32c32-in-1.0, ibq-f16-16384, ...) "
                                         "or a DC-AE config.json")
    parser.add_argument("--phase", type=int, choices=[1, 2, 3], help="DC-AE phase: 1 full low-res training, "
                        "2 high-res latent adaptation, 3 low-res GAN refinement of the decoder head")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--batch-size", type=int, help="per process")
    parser.add_argument("--resolution", type=int, help="training crop size")
    parser.add_argument("--out", help="output folder (checkpoint, metrics.jsonl, images, weights)")
    parser.add_argument("--data", help="image folder (ImageFolder tree or flat) or list file; "
                                       "default: scikit-image's bundled sample images")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    parser.add_argument("--config", help="YAML or JSON file of TrainConfig options, or a named recipe: "
                                         "ibq-paper-16384, ibq-paper-262144 (the official IBQ ImageNet runs)")
    parser.add_argument("--init-weights", help="start from these weights (a save_pretrained folder)")
    parser.add_argument("--lr", type=float)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--precision", choices=["auto", "bf16", "fp16", "fp32"])
    parser.add_argument("--grad-accum", type=int)
    parser.add_argument("--grad-checkpointing", action="store_true", default=None)
    parser.add_argument("--lpips-weights", help="local LPIPS trunk weights (or env DCAE_EXT_LPIPS_WEIGHTS)")
    parser.add_argument("--lpips-net", choices=["vgg", "alex", "squeeze"])
    parser.add_argument("--num-workers", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--log-every", type=int)
    parser.add_argument("--checkpoint-every", type=int)
    parser.add_argument("--image-every", type=int)
    return parser


OVERRIDES = ("preset", "phase", "steps", "batch_size", "resolution", "out", "data", "init_weights", "lr",
             "device", "precision", "grad_accum", "grad_checkpointing", "lpips_weights", "lpips_net",
             "num_workers", "seed", "log_every", "checkpoint_every", "image_every")


def progress_callback(total_hint: int | None = None, stream=None):
    """A trainer callback drawing a tqdm bar and writing warnings/checkpoints above it
    (on sys.stderr as it is when the callback is made, unless `stream` is given)."""
    from tqdm import tqdm

    stream = stream or sys.stderr

    state = {"bar": None}

    def callback(event: str, payload: dict) -> None:
        bar = state["bar"]
        if event == "start":
            state["bar"] = tqdm(total=payload["steps"], initial=payload["step"], file=stream, dynamic_ncols=True,
                                desc=f"train ({payload['device']}, {payload['precision']})")
        elif event == "step" and bar is not None:
            bar.update(1)
            shown = {k: f"{payload[k]:.4f}" for k in ("loss", "codebook_usage") if k in payload}
            if payload.get("skipped_steps"):
                shown["skipped"] = payload["skipped_steps"]
            bar.set_postfix(shown, refresh=False)
        elif event in ("warning", "checkpoint", "image"):
            text = payload.get("message") or f"{event}: {payload.get('path')}"
            (bar.write if bar is not None else print)(text, file=stream)
        elif event == "end" and bar is not None:
            bar.close()

    return callback


def run(args) -> int:
    from dcae_ext.train.config import make_config
    from dcae_ext.train.trainer import Trainer

    overrides = {name: getattr(args, name, None) for name in OVERRIDES}
    if args.model == "ibq" and args.phase not in (None, 1):
        print("dcae-ext train ibq: --phase applies to dcae only", file=sys.stderr)
        return 2
    config = make_config(args.model, file=args.config, **overrides)
    main_rank = int(os.environ.get("RANK", "0")) == 0
    trainer = Trainer(config, callback=progress_callback() if main_rank else None)
    metrics = trainer.train(resume=args.resume)
    if main_rank:
        terms = ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k.startswith("loss") or k == "codebook_usage")
        print(f"step {trainer.step}: {terms}; skipped steps {trainer.skipped_steps}; outputs in {config.out}")
    from dcae_ext.train import distributed
    distributed.teardown(trainer.context)
    return 0
