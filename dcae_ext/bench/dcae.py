"""Benchmark of DC-AE inference: ours vs diffusers' AutoencoderDC on identical weights.

encode+decode of dc-ae-f32c32-in-1.0 (random weights; speed does not depend on their values) at
512 and 1024 (GPU) or 256 (CPU), batch 1, both models in the benchmark dtype, eval, no_grad; ours
in channels_last on GPU. Tiled decode of 2048 and 4096 images (GPU): both with 512-pixel tiles,
peak memory is the point. The limit is conv throughput: the model's FLOPs (counted on the meta
device) at the device's matmul peak. --quick swaps in the tiny preset for a smoke run.
"""
from __future__ import annotations

import functools
import importlib.util

import torch

from dcae_ext.bench.harness import Case, SuiteUnavailable, Work, Workload
from dcae_ext.bench.timing import Timing
from dcae_ext.models import DCAE, get_config

MODEL = "dc-ae-f32c32-in-1.0"


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
    name = resolve_model(model) if model else ("tiny" if quick else MODEL)
    config = get_config(name)
    models = _ModelPair(config)
    found = [Case("dcae_encode_decode", {"model": name, "batch": 1, "resolution": resolution},
                  functools.partial(_encode_decode, models, resolution),
                  Work("conv", fwd=_flops(config, resolution)))
             for resolution in ([256] if quick or not on_gpu else [512, 1024])]
    if on_gpu and not quick:
        found += [Case("dcae_tiled_decode", {"model": name, "batch": 1, "resolution": resolution, "tile": 512},
                       functools.partial(_tiled_decode, models, resolution))
                  for resolution in (2048, 4096)]
    return found


def timing(device: str, quick: bool) -> Timing:
    """A CPU call of the full model takes seconds."""
    if device == "cpu" and not quick:
        return Timing(warmup=1, min_blocks=3, max_blocks=5, max_seconds=60.0)
    return Timing(min_blocks=5, max_seconds=1.0) if quick else Timing(min_blocks=5)


class _ModelPair:
    """Ours and diffusers' model on the same weights, built once per (device, dtype) for all cases."""

    def __init__(self, config):
        self.config, self.key, self.pair = config, None, None

    def get(self, device, dtype):
        if self.key != (device, dtype):
            self.pair = None  # free the previous pair before building the next
            self.pair, self.key = _build_pair(self.config, device, dtype), (device, dtype)
        return self.pair


def _build_pair(config, device, dtype):
    from diffusers import AutoencoderDC

    ours = DCAE(config).eval()
    theirs = AutoencoderDC(**{k: v for k, v in config.to_diffusers_dict().items() if not k.startswith("_")}).eval()
    theirs.load_state_dict(ours.state_dict())
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
            "reference": Workload(lambda: theirs.decode(theirs.encode(x).latent).sample)}


def _tiled_decode(models, resolution, device, dtype) -> dict[str, Workload]:
    ours, theirs = models.get(device, dtype)
    ours.enable_tiling(tile=512, overlap=64)
    theirs.enable_tiling(tile_sample_min_height=512, tile_sample_min_width=512,
                         tile_sample_stride_height=448, tile_sample_stride_width=448)
    f = models.config.spatial_compression
    z = torch.randn(1, models.config.latent_channels, resolution // f, resolution // f, device=device, dtype=dtype)
    layout = _layout(device)
    return {"fast": Workload(lambda: ours.decode(z.to(memory_format=layout))),
            "reference": Workload(lambda: theirs.decode(z).sample)}


def _flops(config, resolution: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = DCAE(config).eval()
        x = torch.empty(1, config.in_channels, resolution, resolution)
        f = config.spatial_compression
        z = torch.empty(1, config.latent_channels, resolution // f, resolution // f)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.encoder(x)
        model.decoder(z)
    return float(counter.get_total_flops())
