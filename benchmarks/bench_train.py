"""Training-step throughput: the fast ops against reference mode (`DCAE_EXT_REFERENCE=1`), same run.

    python benchmarks/bench_train.py --device cpu --preset dcae:tiny,ibq:tiny --resolution 64 --threads 1  # smoke
    # on a GPU (bf16 autocast by default there): the DC-AE and IBQ presets at training size
    python benchmarks/bench_train.py --device cuda --preset dc-ae-f32c32-in-1.0 --batch-size 8 --grad-checkpointing
    python benchmarks/bench_train.py --device cuda --preset ibq-f16-16384,ibq-f16-262144 --batch-size 32

Each preset builds the real `Trainer` (the code path of `dcae-ext train`: the recipe of the model and
--phase, autocast --precision, --grad-checkpointing, EMA, the discriminator where the recipe has one,
LPIPS with a random VGG trunk unless DCAE_EXT_LPIPS_WEIGHTS names local weights, or --lpips off) and
drives `Trainer.train_step` on one synthetic batch kept on the device (smooth random images: no
data loading in the timed region). One trainer serves both sides; `dcae_ext.ops.use_reference`
switches the path before each block. Before timing, one profiled step per side counts the
dcae_ext kernels it ran (`kernel_ops`: above 0 for fast, 0 for reference, else the switch did not
take), then --warmup untimed steps per side. Then --rounds rounds, each timing --steps steps of both
sides back to back, in an order that alternates from round to round so that load which comes and
goes falls on both; CUDA is synchronised around each block (--max-seconds ends the rounds early). A
side that runs out of memory is recorded as such and dropped; the other goes on.

Records (one per side and one comparison per preset, appended to
benchmarks/results/<device>-train.jsonl as each preset finishes, or --results; --no-save prints
only): median, min and max images/s over the rounds, the spread ((max - min) / median) and a noisy
flag above 10 %, peak memory (CUDA max_memory_allocated over the timed steps: weights, optimiser
state, EMA and activations; null on CPU), the loss of the side's last step, the side's steps that
the trainer skipped (a non-finite loss or gradient: no optimiser update), and speedup_median =
fast images/s / reference images/s.
"""
from __future__ import annotations

import argparse
import datetime
import os
import tempfile
import time
import warnings

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from dcae_ext import ops
from dcae_ext.bench.hardware import machine_description
from dcae_ext.bench.memory import quiet_stderr
from dcae_ext.bench.records import append_records, results_path
from dcae_ext.bench.timing import block_seconds, is_oom, release_memory, throughput_summary
from dcae_ext.commands._options import choose_device
from dcae_ext.models import preset_names
from dcae_ext.models.ibq.tokenizer import PRESETS as IBQ_PRESETS
from dcae_ext.ops._library import kernels_missing
from dcae_ext.train import Trainer, make_config
from dcae_ext.train.config import ConfigError

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def parse_presets(text: str) -> list[tuple[str, str]]:
    """'dcae:tiny,ibq-f16-16384' -> [('dcae', 'tiny'), ('ibq', 'ibq-f16-16384')]; a name that both
    models know (tiny) needs its model prefix."""
    chosen = []
    for spec in filter(None, (part.strip() for part in text.split(","))):
        model, _, name = spec.rpartition(":")
        known = {"dcae": preset_names(), "ibq": list(IBQ_PRESETS)}
        if model and model not in known:
            raise SystemExit(f"--preset {spec}: unknown model {model!r}; use dcae:NAME or ibq:NAME")
        owners = [model] if model else [m for m, names in known.items() if name in names]
        if len(owners) > 1:
            raise SystemExit(f"--preset {spec}: both a DC-AE and an IBQ preset; write dcae:{name} or ibq:{name}")
        if not owners or name not in known[owners[0]]:
            raise SystemExit(f"--preset {spec}: unknown preset; DC-AE: {', '.join(known['dcae'])}; "
                             f"IBQ: {', '.join(known['ibq'])}")
        chosen.append((owners[0], name))
    if not chosen:
        raise SystemExit("--preset: no preset given")
    return chosen


def synthetic_batch(batch_size: int, resolution: int, device: torch.device) -> torch.Tensor:
    """Smooth random images in [-1, 1] (bilinear 8x8 noise), made on the device once."""
    generator = torch.Generator().manual_seed(0)
    coarse = torch.rand(batch_size, 3, 8, 8, generator=generator) * 2 - 1
    return F.interpolate(coarse, size=resolution, mode="bilinear", align_corners=False).to(device)


def build_trainer(model: str, preset: str, args, device: torch.device, out: str, batch: torch.Tensor) -> Trainer:
    phase = args.phase if model == "dcae" else 1
    config = make_config(model, phase=phase, preset=preset, batch_size=args.batch_size,
                         resolution=args.resolution, precision=args.precision, device=device.type,
                         grad_checkpointing=args.grad_checkpointing, out=out, num_workers=0,
                         steps=1_000_000, lpips_weight=0.0 if args.lpips == "off" else None)
    with warnings.catch_warnings():  # the random LPIPS trunk is intended here; the record says so
        warnings.filterwarnings("ignore", message="LPIPS: no trunk weights")
        return Trainer(config, dataset=batch.cpu())


def lpips_label(trainer: Trainer) -> str:
    if trainer.perceptual is None:
        return "off"
    trunk = "local weights" if trainer.perceptual.pretrained_trunk else "random trunk"
    return f"{trainer.config.lpips_net}, {trunk}"


class Side:
    """One path (fast kernels or reference mode): its timings and how it ended."""

    def __init__(self, name: str, reference: bool):
        self.name, self.reference = name, reference
        self.seconds: list[float] = []
        self.peaks_mb: list[float] = []
        self.kernel_ops: int | None = None
        self.oom_at: str | None = None
        self.loss: float | None = None
        self.skipped_steps = 0

    def step(self, trainer: Trainer, batch: torch.Tensor) -> None:
        skipped = trainer.skipped_steps
        self.loss = trainer.train_step([batch])["loss"]
        self.skipped_steps += trainer.skipped_steps - skipped


def run_on(side: Side, trainer: Trainer, fn, where: str):
    """fn() on `side`'s path; None when it ran out of memory (the side is then dropped and the
    memory the failed step held is released, so the other side goes on)."""
    ops.use_reference(side.reference)
    try:
        return fn()
    except (RuntimeError, torch.OutOfMemoryError) as error:
        if not is_oom(error):
            raise
        side.oom_at = where
    for optimizer in (trainer.optimizer, trainer.disc_optimizer):
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=True)
    if trainer.scaler.is_enabled():  # a step cut short may leave the scaler mid-update
        trainer.scaler = torch.amp.GradScaler(trainer.device.type, init_scale=trainer.scaler.get_scale())
    release_memory(trainer.device)
    return None


def count_kernel_ops(side: Side, trainer: Trainer, batch: torch.Tensor) -> int | None:
    """dcae_ext kernels (argument checks aside) one step of `side` runs, from the profiler."""
    def profiled():
        with quiet_stderr(), profile(activities=[ProfilerActivity.CPU]) as prof:
            side.step(trainer, batch)
        return sum(1 for event in prof.events()
                   if event.name.startswith("dcae_ext::") and not event.name.startswith("dcae_ext::_check"))

    return run_on(side, trainer, profiled, "check step")


def measure(trainer: Trainer, batch: torch.Tensor, args, device: torch.device) -> list[Side]:
    sides = [Side("fast", False), Side("reference", True)]
    start = time.perf_counter()
    for side in sides:
        side.kernel_ops = count_kernel_ops(side, trainer, batch)
        for index in range(args.warmup):
            if side.oom_at is None:
                run_on(side, trainer, lambda: side.step(trainer, batch), f"warm-up step {index + 1}")
    for round_index in range(args.rounds):
        if round_index and args.max_seconds and time.perf_counter() - start > args.max_seconds:
            break
        for side in sides if round_index % 2 == 0 else sides[::-1]:
            if side.oom_at is not None:
                continue
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            seconds = run_on(side, trainer, lambda: block_seconds(lambda: side.step(trainer, batch), args.steps,
                                                                  device), f"round {round_index + 1}")
            if seconds is not None:
                side.seconds.append(seconds)
                if device.type == "cuda":
                    side.peaks_mb.append(torch.cuda.max_memory_allocated(device) / 2**20)
    return sides


def side_record(side: Side, images: int) -> dict:
    record = {"impl": side.name, "kernel_ops": side.kernel_ops, "oom": side.oom_at is not None,
              "oom_at": side.oom_at, "runs_s": side.seconds, "peak_mem_mb": max(side.peaks_mb, default=None),
              "last_loss": side.loss, "skipped_steps": side.skipped_steps, "images_per_s": None, "spread": None,
              "noisy": None}
    if side.seconds:
        record.update(throughput_summary(side.seconds, images))
    return record


def preset_records(model: str, preset: str, trainer: Trainer, sides: list[Side], args, device) -> list[dict]:
    common = {"bench": "train", "model": model, "preset": preset, "phase": trainer.config.phase,
              "resolution": args.resolution, "batch_size": args.batch_size, "precision": trainer.precision,
              "grad_checkpointing": trainer.config.grad_checkpointing, "lpips": lpips_label(trainer),
              "discriminator": trainer.discriminator is not None, "ema": trainer.ema is not None,
              "steps_per_round": args.steps, "warmup": args.warmup, "rounds": args.rounds,
              "max_seconds": args.max_seconds,
              "device": device.type, "device_name": machine_description(device), "torch": torch.__version__,
              "cuda": torch.version.cuda, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
                  timespec="seconds"), "load_1min": os.getloadavg()[0]}
    fast, reference = (dict(common, **side_record(side, args.batch_size * args.steps)) for side in sides)
    both = fast["images_per_s"] and reference["images_per_s"]
    speedup = fast["images_per_s"]["median"] / reference["images_per_s"]["median"] if both else None
    counts = (fast["kernel_ops"], reference["kernel_ops"])  # None: the side ran out of memory first
    paths_differ = None if None in counts else counts[0] > 0 and counts[1] == 0
    return [fast, reference, dict(common, impl="comparison", speedup_median=speedup, paths_differ=paths_differ)]


def report(records: list[dict]) -> None:
    for record in records[:2]:
        rate = record["images_per_s"]
        text = (f"{rate['median']:9.2f} images/s (min {rate['min']:.2f}, max {rate['max']:.2f}, spread "
                f"{record['spread']:.0%}{', NOISY' if record['noisy'] else ''})" if rate else "no timing")
        memory = f", peak {record['peak_mem_mb']:.0f} MB" if record["peak_mem_mb"] is not None else ""
        oom = f", OUT OF MEMORY at {record['oom_at']}" if record["oom"] else ""
        print(f"  {record['impl']:9s} {text}{memory}, {record['kernel_ops']} kernel ops/step{oom}")
    comparison = records[2]
    if comparison["speedup_median"] is not None:
        print(f"  fast / reference: {comparison['speedup_median']:.2f}x")
    if comparison["paths_differ"] is False:
        print("  WARNING: the fast side ran no dcae_ext kernel or the reference side ran some: "
              "the two sides took the same path")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="dc-ae-f32c32-in-1.0",
                        help="comma list of [dcae:|ibq:]NAME (tiny is both: dcae:tiny or ibq:tiny)")
    parser.add_argument("--phase", type=int, choices=(1, 2, 3), default=1, help="DC-AE training phase")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--precision", choices=("auto", "bf16", "fp16", "fp32"), default="auto",
                        help="autocast dtype (auto: bf16 on CUDA, fp32 on CPU)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per side and round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per side after the check step")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-seconds", type=float, default=None,
                        help="per preset: start no further round after this many seconds of steps (check and "
                             "warm-up included; at least one round runs), so that a time limit leaves a record")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--grad-checkpointing", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--lpips", choices=("on", "off"), default="on",
                        help="LPIPS loss as the recipe has it (random trunk without local weights) or none")
    parser.add_argument("--results", default=None,
                        help="JSONL file (default: benchmarks/results/<device>-train.jsonl)")
    parser.add_argument("--no-save", action="store_true", help="print only, append nothing")
    args = parser.parse_args()
    for flag in ("batch_size", "resolution", "steps", "rounds"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')}: expected >= 1, got {getattr(args, flag)}")
    if args.warmup < 0:
        parser.error(f"--warmup: expected >= 0, got {args.warmup}")
    if args.max_seconds is not None and not args.max_seconds > 0:
        parser.error(f"--max-seconds: expected > 0, got {args.max_seconds}")
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads: expected >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    presets = parse_presets(args.preset)
    device = choose_device(args.device)
    missing = kernels_missing(device.type)
    if missing:
        raise SystemExit(f"--device {device.type}: {missing}; the fast side would be the reference")
    if device.type == "cuda":
        torch.cuda.set_device(device)  # the CUDA events of the timing record on the current device
    path = args.results or results_path(device, RESULTS, kind="train")
    batch = synthetic_batch(args.batch_size, args.resolution, device)
    previous = ops.reference_mode()
    try:
        for model, preset in presets:
            with tempfile.TemporaryDirectory() as out:
                try:
                    trainer = build_trainer(model, preset, args, device, out, batch)
                except ConfigError as error:
                    raise SystemExit(f"{model} {preset}: {error}") from None
                print(f"{model} {preset} phase {trainer.config.phase}, batch {args.batch_size} at {args.resolution}, "
                      f"{trainer.precision}, LPIPS {lpips_label(trainer)}, discriminator "
                      f"{'on' if trainer.discriminator is not None else 'off'}", flush=True)
                records = preset_records(model, preset, trainer, measure(trainer, batch, args, device), args, device)
            del trainer
            release_memory(device)
            report(records)
            if not args.no_save:
                append_records(records, path)
    finally:
        ops.use_reference(previous)
    if not args.no_save:
        print(f"appended to {path}")


if __name__ == "__main__":
    main()
