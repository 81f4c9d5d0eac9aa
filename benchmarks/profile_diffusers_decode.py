"""Where diffusers' AutoencoderDC decode spends its time, stock and accelerated: the share of each
aten/dcae_ext op (torch.profiler, self time) and each convolution's FLOP rate, measured alone.

    python benchmarks/profile_diffusers_decode.py [--resolution 256] [--device cpu] [--dtype fp32] [--out FILE]

It explains the decode ratio of `dcae-ext bench --ops diffusers` (docs/diffusers.md): the swaps
replace the shortcuts and the linear attention; what they cannot change is the rest, above all
the 3x3 convolutions. Sana's VAE (dc-ae-f32c32-sana-1.1), random weights, batch 1, eval; the
convolutions' FLOP rates are measured in the same dtype. The report is printed and, with --out,
written to a text file (benchmarks/results/ keeps the project VM's; benchmarks/run_gpu.sh's
bench-diffusers step writes a GPU one, 1024 px in bf16).
"""
from __future__ import annotations

import argparse
import copy
import io
import statistics

import torch

from dcae_ext.bench.hardware import machine_description
from dcae_ext.bench.timing import Timing, block_seconds, time_interleaved

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
CONV_OPS = ("aten::mkldnn_convolution", "aten::cudnn_convolution", "aten::_slow_conv2d_forward",
            "aten::thnn_conv2d", "aten::_convolution_depthwise2d", "aten::convolution_overrideable")


def build(device: str, dtype: torch.dtype):
    import diffusers

    from dcae_ext.bench.diffusers_models import VAE_MODEL, _vae_config
    from dcae_ext.integrations.diffusers import accelerate

    torch.manual_seed(0)
    stock = torch.nn.Module.to(diffusers.AutoencoderDC(**_vae_config(VAE_MODEL)).eval(), device=device, dtype=dtype)
    fast = copy.deepcopy(stock)
    accelerate(fast)
    return stock, fast


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def op_table(model, latent, device: str, rows: int) -> tuple[str, float, float]:
    """The profiler's table (self time, top `rows`), total self time and the convolutions' share."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.startswith("cuda"):
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.no_grad():
        model.decode(latent)
        synchronize(device)
        with torch.profiler.profile(activities=activities) as profile:
            model.decode(latent)
            synchronize(device)
    events = profile.key_averages()
    if device.startswith("cuda"):
        # GPU time belongs to the kernels (self time); an aten op's total holds the kernels it launched
        total = sum(e.self_device_time_total for e in events)
        conv = sum(e.device_time_total for e in events if e.key in CONV_OPS)
        sort = "self_cuda_time_total"
    else:
        total = sum(e.self_cpu_time_total for e in events)
        conv = sum(e.self_cpu_time_total for e in events if e.key in CONV_OPS)
        sort = "self_cpu_time_total"
    return events.table(sort_by=sort, row_limit=rows), total, conv / max(total, 1e-9)


def conv_rates(model, latent, device: str, repeats: int = 3) -> list[tuple[str, tuple, float, float]]:
    """(name, input shape, ms, GFLOP/s) of each decoder convolution, run alone on the input it met."""
    inputs = {}
    convs = [(name, m) for name, m in model.decoder.named_modules() if isinstance(m, torch.nn.Conv2d)]
    hooks = [m.register_forward_pre_hook(lambda m, args, name=name: inputs.__setitem__(name, args[0].detach()))
             for name, m in convs]
    with torch.no_grad():
        model.decode(latent)
    for hook in hooks:
        hook.remove()
    found = []
    with torch.no_grad():
        for name, conv in convs:
            x = inputs[name]
            conv(x)
            seconds = statistics.median(block_seconds(lambda: conv(x), 1, torch.device(device)) for _ in range(repeats))
            out_pixels = x.shape[0] * (x.shape[-2] // conv.stride[0]) * (x.shape[-1] // conv.stride[1])
            flops = 2 * conv.weight.numel() * out_pixels
            found.append((name, tuple(x.shape), seconds * 1e3, flops / seconds / 1e9))
    return found


def decode_ms(models: dict, latent, repeats: int, device: str) -> dict[str, float]:
    """Median ms of each model's decode, timed by the bench harness: the models take turns (a slow
    spell of a shared machine then reaches both, not one), one warm-up call each."""
    with torch.no_grad():
        stats, _ = time_interleaved({label: (lambda m=model: m.decode(latent)) for label, model in models.items()},
                                    device, Timing(warmup=1, min_blocks=repeats, max_blocks=repeats,
                                                   block_seconds=0.0, max_seconds=float("inf")))
    return {label: found.median for label, found in stats.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--repeats", type=int, default=7, help="decodes timed per model (median)")
    parser.add_argument("--rows", type=int, default=15, help="rows of each profiler table")
    parser.add_argument("--out", help="also write the report to this text file")
    args = parser.parse_args(argv)
    if args.resolution <= 0 or args.resolution % 32:
        parser.error(f"argument --resolution: must be a positive multiple of 32, got {args.resolution}")

    dtype = DTYPES[args.dtype]
    stock, fast = build(args.device, dtype)
    latent = torch.randn(1, stock.config.latent_channels, args.resolution // 32, args.resolution // 32,
                         generator=torch.Generator().manual_seed(1)).to(args.device, dtype)
    report = io.StringIO()
    say = lambda *parts: print(*parts, file=report)  # noqa: E731
    say(f"AutoencoderDC decode profile, dc-ae-f32c32-sana-1.1, {args.resolution} px, batch 1, {dtype}")
    say(f"machine: {machine_description(args.device)}; torch {torch.__version__}")
    times = decode_ms({"stock": stock, "accelerated": fast}, latent, args.repeats, args.device)
    say(f"decode median of {args.repeats}, taking turns: stock {times['stock']:.1f} ms, accelerated {times['accelerated']:.1f} ms "
        f"({times['stock'] / times['accelerated']:.3f}x)")
    for label, model in (("stock", stock), ("accelerated", fast)):
        table, total, conv_share = op_table(model, latent, args.device, args.rows)
        say(f"\n{label}: convolutions {100 * conv_share:.1f}% of the profiled self time ({total / 1e3:.1f} ms)")
        say(table)
    rates = conv_rates(fast, latent, args.device)
    total_ms = sum(ms for _, _, ms, _ in rates)
    total_flops = sum(ms * rate for _, _, ms, rate in rates) / 1e3  # GFLOP
    say(f"decoder convolutions alone: {len(rates)} of them, {total_ms:.1f} ms, {total_flops:.1f} GFLOP, "
        f"{total_flops / total_ms * 1e3:.0f} GFLOP/s overall; the ten slowest:")
    for name, shape, ms, rate in sorted(rates, key=lambda row: -row[2])[:10]:
        say(f"  {ms:8.1f} ms  {rate:6.0f} GFLOP/s  {name}  input {shape}")
    text = report.getvalue()
    print(text, end="")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as stream:
            stream.write(text)


if __name__ == "__main__":
    main()
