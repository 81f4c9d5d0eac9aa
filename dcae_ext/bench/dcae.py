"""Benchmark of DC-AE inference: ours vs diffusers' AutoencoderDC on identical weights.

encode+decode of dc-ae-f32c32-in-1.0 (random weights; speed does not depend on their values) at
512 and 1024 (GPU) or 256 (CPU), batch 1, both models in the benchmark dtype, eval, no_grad; ours
in channels_last on GPU. Tiled decode of 2048 and 4096 images (GPU): both with 512-pixel tiles,
peak memory is the point. The limit is conv throughput: the model's FLOPs (counted on the meta
device) at the device's matmul peak. --quick swaps in the tiny preset for a smoke run.
"""
from __future__ import annotations

import torch

from dcae_ext.bench.harness import make_record, measure
from dcae_ext.bench.hardware import matmul_tflops
from dcae_ext.models import DCAE, get_config

MODEL = "dc-ae-f32c32-in-1.0"


def _flops(config, resolution: int, encode: bool = True, decode: bool = True) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = DCAE(config).eval()
        x = torch.empty(1, config.in_channels, resolution, resolution)
        f = config.spatial_compression
        z = torch.empty(1, config.latent_channels, resolution // f, resolution // f)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        if encode:
            model.encoder(x)
        if decode:
            model.decoder(z)
    return float(counter.get_total_flops())


def _build_pair(config, device, dtype):
    from diffusers import AutoencoderDC

    ours = DCAE(config).eval()
    theirs = AutoencoderDC(**{k: v for k, v in config.to_diffusers_dict().items() if not k.startswith("_")}).eval()
    theirs.load_state_dict(ours.state_dict())
    ours, theirs = ours.to(device=device, dtype=dtype), theirs.to(device=device, dtype=dtype)
    if torch.device(device).type == "cuda":
        ours = ours.to(memory_format=torch.channels_last)
    return ours, theirs


def _limit(device, dtype, flops, ms):
    peak, source = matmul_tflops(device, dtype)
    tflops = flops / (ms * 1e-3) / 1e12 if ms else None
    return dict(tflops=tflops, limit_tflops=peak, limit_source=source,
                fraction_of_limit=tflops / peak if tflops and peak else None)


def _interleaved(impls, device, warmup, repeats, rounds) -> dict:
    """measure() each impl in alternating rounds so that a shared, noisy CPU slows both alike;
    fwd_ms is the median over rounds, the peak memory that of the first round."""
    results = {impl: [] for impl, _ in impls}
    for round_index in range(rounds):
        for impl, fn in impls:
            results[impl].append(measure(fn, device=device, warmup=warmup if round_index == 0 else 0,
                                         repeats=repeats))
    merged = {}
    for impl, runs in results.items():
        times = sorted(r["fwd_ms"] for r in runs if r["fwd_ms"] is not None)
        merged[impl] = dict(runs[0], fwd_ms=times[len(times) // 2] if times else None, rounds=rounds,
                            round_fwd_ms=[r["fwd_ms"] for r in runs])
    return merged


def resolve_model(name: str) -> str:
    """A preset name, or its short form: "f32c32" -> "dc-ae-f32c32-in-1.0"."""
    from dcae_ext.models.config import preset_names

    for candidate in (name, f"dc-ae-{name}-in-1.0"):
        if candidate in preset_names():
            return candidate
    raise SystemExit(f"--model: unknown DC-AE {name!r}; choose a preset ({', '.join(preset_names())}) "
                     "or a short form such as f32c32")


def run(device: str = "cpu", dtypes=(torch.float32,), quick: bool = False, model: str | None = None) -> list[dict]:
    on_gpu = torch.device(device).type == "cuda"
    name = resolve_model(model) if model else ("tiny" if quick else MODEL)
    config = get_config(name)
    resolutions = [256] if (quick or not on_gpu) else [512, 1024]
    warmup, repeats = (1, 1) if not on_gpu else (2, 5)
    if on_gpu:
        torch.backends.cudnn.benchmark = True
    records = []
    for dtype in dtypes:
        ours, theirs = _build_pair(config, device, dtype)
        layout = torch.channels_last if on_gpu else torch.contiguous_format
        for resolution in resolutions:
            x = torch.randn(1, 3, resolution, resolution, device=device, dtype=dtype)
            flops = _flops(config, resolution)
            shape = {"model": name, "batch": 1, "resolution": resolution}
            impls = (("fast", lambda: ours.decode(ours.encode(x.to(memory_format=layout)))),
                     ("reference", lambda: theirs.decode(theirs.encode(x).latent).sample))
            for impl, m in _interleaved(impls, device, warmup, repeats, rounds=1 if on_gpu else 3).items():
                records.append(make_record("dcae_encode_decode", impl, device, dtype, shape, m,
                                           gflops=flops / 1e9, cpu_threads=torch.get_num_threads(),
                                           **_limit(device, dtype, flops, m["fwd_ms"])))
        if on_gpu and not quick:
            records += _tiled_decode(ours, theirs, config, name, device, dtype)
        del ours, theirs
    return records


def _tiled_decode(ours, theirs, config, name, device, dtype) -> list[dict]:
    f = config.spatial_compression
    ours.enable_tiling(tile=512, overlap=64)
    theirs.enable_tiling(tile_sample_min_height=512, tile_sample_min_width=512,
                         tile_sample_stride_height=448, tile_sample_stride_width=448)
    records = []
    for resolution in (2048, 4096):
        z = torch.randn(1, config.latent_channels, resolution // f, resolution // f, device=device, dtype=dtype)
        shape = {"model": name, "batch": 1, "resolution": resolution, "tile": 512}
        for impl, fn in (("fast", lambda: ours.decode(z.to(memory_format=torch.channels_last))),
                         ("reference", lambda: theirs.decode(z).sample)):
            m = measure(fn, device=device, warmup=1, repeats=2)
            with torch.no_grad():
                out_shape = list(fn().shape) if not m["oom"] else None
            records.append(make_record("dcae_tiled_decode", impl, device, dtype, shape, m, output_shape=out_shape))
    ours.disable_tiling()
    theirs.disable_tiling()
    return records
