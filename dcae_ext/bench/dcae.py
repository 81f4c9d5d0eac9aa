"""Benchmark of DC-AE inference: ours vs the official modules on identical weights (`dcae_official`:
diffusers' AutoencoderDC, with DC-Gen's adaptive latent convolutions for DC-AE 1.5).

- encode+decode of dc-ae-f32c32-in-1.0 at 512 and 1024 (GPU) or 256 (CPU); tiled decode of 2048
  and 4096 images (GPU, both with 512-pixel tiles: peak memory is the point);
- encode and decode apart of the later family: dc-ae-f32c128-1.5 (also decoding a 16-channel
  prefix of its structured latent) and dc-ae-lite-f32c32-sana-1.1 (whose point is a faster decoder),
  at the same resolutions on GPU, at 128 on CPU.

Random weights (speed does not depend on their values), batch 1, both models in the benchmark
dtype, eval, no_grad; ours in channels_last on GPU. The limit is conv throughput: the model's
FLOPs (counted on the meta device) at the device's matmul peak. `--model NAME` races that preset
alone; --quick swaps in the tiny presets for a smoke run.
"""
from __future__ import annotations

import functools
import importlib.util

import torch

from dcae_ext.bench.dcae_official import official_decode, official_encode, official_model
from dcae_ext.bench.harness import Case, SuiteUnavailable, Work, Workload
from dcae_ext.bench.timing import Timing
from dcae_ext.models import DCAE, get_config

MODEL = "dc-ae-f32c32-in-1.0"
FAMILY = ("dc-ae-f32c128-1.5", "dc-ae-lite-f32c32-sana-1.1")
PREFIX_CHANNELS = 16  # the structured latent's decode-from-a-prefix case


def resolve_model(name: str) -> str:
    """A preset name, or its short form: "f32c32" -> "dc-ae-f32c32-in-1.0"."""
    from dcae_ext.models.dcae.config import preset_names

    for candidate in (name, f"dc-ae-{name}-in-1.0"):
        if candidate in preset_names():
            return candidate
    raise SystemExit(f"--model: unknown DC-AE {name!r}; choose a preset ({', '.join(preset_names())}) "
                     "or a short form such as f32c32")


def cases(device: str, quick: bool, model: str | None = None) -> list[Case]:
    if importlib.util.find_spec("diffusers") is None:
        raise SuiteUnavailable("needs diffusers, the model it races (pip install 'diffusers>=0.32')")
    on_gpu = device != "cpu"
    resolutions = [256] if quick or not on_gpu else [512, 1024]
    pairs = _ModelPairs()
    if model is not None:
        name = resolve_model(model)
        return _encode_decode_cases(pairs, name, resolutions) + _apart_cases(pairs, name, resolutions)
    if quick:
        return _encode_decode_cases(pairs, "tiny", [64]) + _apart_cases(pairs, "tiny-structured", [64])
    found = _encode_decode_cases(pairs, MODEL, resolutions)
    if on_gpu:
        found += [Case("dcae_tiled_decode", {"model": MODEL, "batch": 1, "resolution": resolution, "tile": 512},
                       functools.partial(_tiled_decode, pairs.bound(MODEL), resolution))
                  for resolution in (2048, 4096)]
    for name in FAMILY:  # on a CPU at 128 pixels: a 256-pixel call of these takes seconds
        found += _apart_cases(pairs, name, resolutions if on_gpu else [128])
    return found


def _encode_decode_cases(pairs, name: str, resolutions: list[int]) -> list[Case]:
    config = get_config(name)
    return [Case("dcae_encode_decode", {"model": name, "batch": 1, "resolution": resolution},
                 functools.partial(_encode_decode, pairs.bound(name), resolution),
                 Work("conv", fwd=_flops(config, resolution, "encoder") + _flops(config, resolution, "decoder")))
            for resolution in resolutions]


def _apart_cases(pairs, name: str, resolutions: list[int]) -> list[Case]:
    """Encode and decode timed apart (and, for a structured latent, decoding a channel prefix)."""
    config = get_config(name)
    models = pairs.bound(name)
    prefixes = [None] + ([min(PREFIX_CHANNELS, config.latent_channels // 4)] if config.structured_latent else [])
    found = []
    for resolution in resolutions:
        shape = {"model": name, "batch": 1, "resolution": resolution}
        found.append(Case("dcae_encode", shape, functools.partial(_encode, models, resolution),
                          Work("conv", fwd=_flops(config, resolution, "encoder"))))
        for channels in prefixes:
            found.append(Case("dcae_decode", dict(shape, **({"latent_channels": channels} if channels else {})),
                              functools.partial(_decode, models, resolution, channels),
                              Work("conv", fwd=_flops(config, resolution, "decoder", channels))))
    return found


def timing(device: str, quick: bool) -> Timing:
    """A CPU call of the full model takes seconds."""
    if device == "cpu" and not quick:
        return Timing(warmup=1, min_blocks=3, max_blocks=5, max_seconds=60.0)
    return Timing(min_blocks=5, max_seconds=1.0) if quick else Timing(min_blocks=5)


class _ModelPairs:
    """Ours and the official model on the same weights, one (preset, device, dtype) at a time: the
    cases run preset by preset, so each pair is built once, after the previous one is freed."""

    def __init__(self):
        self.key, self.pair = None, None

    def get(self, name, device, dtype):
        if self.key != (name, device, dtype):
            self.pair = None  # free the previous pair before building the next
            self.pair, self.key = _build_pair(get_config(name), device, dtype), (name, device, dtype)
        return self.pair

    def bound(self, name) -> "_BoundPair":
        return _BoundPair(self, name)


class _BoundPair:
    """The pair of one preset: `get(device, dtype)`, and its `config`."""

    def __init__(self, pairs: _ModelPairs, name: str):
        self.pairs, self.name, self.config = pairs, name, get_config(name)

    def get(self, device, dtype):
        return self.pairs.get(self.name, device, dtype)


def _build_pair(config, device, dtype):
    ours = DCAE(config).eval()
    theirs = official_model(ours)
    ours = ours.to(device=device, dtype=dtype)
    # nn.Module.to itself: diffusers' override warns about float32-kept modules even when it has none
    theirs = torch.nn.Module.to(theirs, device=device, dtype=dtype)
    if torch.device(device).type == "cuda":
        torch.backends.cudnn.benchmark = True
        ours = ours.to(memory_format=torch.channels_last)
    return ours, theirs


def _layout(device) -> torch.memory_format:
    return torch.channels_last if torch.device(device).type == "cuda" else torch.contiguous_format


def _encode_decode(models, resolution, device, dtype) -> dict[str, Workload]:
    ours, theirs = models.get(device, dtype)
    ours.disable_tiling()
    theirs.disable_tiling()
    x = torch.randn(1, 3, resolution, resolution, device=device, dtype=dtype)
    layout = _layout(device)
    return {"fast": Workload(lambda: ours.decode(ours.encode(x.to(memory_format=layout)))),
            "reference": Workload(lambda: official_decode(theirs, official_encode(theirs, x)))}


def _encode(models, resolution, device, dtype) -> dict[str, Workload]:
    ours, theirs = models.get(device, dtype)
    x = torch.randn(1, 3, resolution, resolution, device=device, dtype=dtype)
    layout = _layout(device)
    return {"fast": Workload(lambda: ours.encode(x.to(memory_format=layout))),
            "reference": Workload(lambda: official_encode(theirs, x))}


def _decode(models, resolution, channels, device, dtype) -> dict[str, Workload]:
    ours, theirs = models.get(device, dtype)
    f = models.config.spatial_compression
    z = torch.randn(1, channels or models.config.latent_channels, resolution // f, resolution // f, device=device,
                    dtype=dtype)
    layout = _layout(device)
    return {"fast": Workload(lambda: ours.decode(z.to(memory_format=layout))),
            "reference": Workload(lambda: official_decode(theirs, z))}


def _tiled_decode(models, resolution, device, dtype) -> dict[str, Workload]:
    ours, theirs = models.get(device, dtype)
    ours.enable_tiling(tile=512, overlap=64)
    theirs.enable_tiling(tile_sample_min_height=512, tile_sample_min_width=512,
                         tile_sample_stride_height=448, tile_sample_stride_width=448)
    f = models.config.spatial_compression
    z = torch.randn(1, models.config.latent_channels, resolution // f, resolution // f, device=device, dtype=dtype)
    layout = _layout(device)
    return {"fast": Workload(lambda: ours.decode(z.to(memory_format=layout))),
            "reference": Workload(lambda: official_decode(theirs, z))}


def _flops(config, resolution: int, part: str, latent_channels: int | None = None) -> float:
    """FLOPs of the encoder or the decoder (from `latent_channels` channels) at `resolution`."""
    from torch.utils.flop_counter import FlopCounterMode

    f = config.spatial_compression
    with torch.device("meta"):
        model = DCAE(config).eval()
        x = torch.empty(1, config.in_channels, resolution, resolution)
        z = torch.empty(1, latent_channels or config.latent_channels, resolution // f, resolution // f)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.encoder(x) if part == "encoder" else model.decoder(z)
    return float(counter.get_total_flops())
