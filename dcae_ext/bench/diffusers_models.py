"""Benchmark of `dcae_ext.integrations.diffusers.accelerate`: diffusers' own models, stock ("reference")
against accelerated ("fast"), on the same weights in the same run.

- Sana transformer (SanaTransformer2DModel), forward and forward+backward (gradient of the input
  latent, so the backward goes through every layer's attention). GPU: the published 1600M config
  (20 layers, 70 heads of 32, 2240 wide; 300 caption tokens) at 1024 px (32 x 32 = 1024 tokens)
  and 4K (128 x 128 = 16384 tokens). CPU: the same layer at a reduced width (8 heads of 32, 256
  wide, 2 layers, 64-channel captions) at 1024 and 4096 tokens.
- AutoencoderDC decode (Sana's VAE, dc-ae-f32c32-sana-1.1, full width): GPU at 1024 and 2048 px and
  a tiled 4K decode (512-pixel tiles, the package's tiler; the stock one is diffusers' own tiled
  decode); CPU at 256 px, forward and forward+backward (gradient of the latent): one forward takes
  about 20 s on the project's loaded 2-core VM, so 512 px does not fit a CPU run.

Random weights (speed does not depend on their values), batch 1, eval. --quick: tiny configs. The
limit is matmul (transformer) or conv (decoder) throughput: the stock model's forward FLOPs, counted
on the meta device, at the device's peak.
"""
from __future__ import annotations

import copy
import functools
import importlib.util

import torch

from dcae_ext.bench.harness import Case, SuiteUnavailable, Work, Workload
from dcae_ext.bench.timing import Timing

RESULTS_KIND = "diffusers"  # records in benchmarks/results/<device>-diffusers.jsonl, apart from the ops'
VAE_MODEL = "dc-ae-f32c32-sana-1.1"
SANA_1600M = dict(in_channels=32, out_channels=32, num_attention_heads=70, attention_head_dim=32, num_layers=20,
                  num_cross_attention_heads=20, cross_attention_head_dim=112, cross_attention_dim=2240,
                  caption_channels=2304, mlp_ratio=2.5, sample_size=32, patch_size=1)
SANA_CPU = dict(SANA_1600M, num_attention_heads=8, num_layers=2, num_cross_attention_heads=2,
                cross_attention_head_dim=128, cross_attention_dim=256, caption_channels=64)
SANA_TINY = dict(SANA_CPU, num_attention_heads=2, num_layers=1, num_cross_attention_heads=2, cross_attention_head_dim=16,
                 cross_attention_dim=64, caption_channels=16, in_channels=4, out_channels=4)
CAPTION_TOKENS = 300


def cases(device: str, quick: bool) -> list[Case]:
    if importlib.util.find_spec("diffusers") is None:
        raise SuiteUnavailable("needs diffusers, the library it accelerates (pip install 'dcae-ext[diffusers]')")
    on_gpu = device != "cpu"
    if quick:
        sana, sana_name, sides, vae, resolutions = SANA_TINY, "tiny", [16], "tiny", [64]
    elif on_gpu:
        sana, sana_name, sides, vae, resolutions = SANA_1600M, "sana-1600m", [32, 128], VAE_MODEL, [1024, 2048]
    else:
        sana, sana_name, sides, vae, resolutions = SANA_CPU, "sana-1600m-layer-w256-2l", [32, 64], VAE_MODEL, [256]
    models = _Models()
    found = [Case("diffusers_sana_transformer", {"model": sana_name, "batch": 1, "tokens": side * side},
                  functools.partial(_sana, models, sana, side), Work("matmul", fwd=_sana_flops(sana, side)))
             for side in sides]
    for resolution in resolutions:
        backward = resolution == min(resolutions) and not on_gpu
        found.append(Case("diffusers_dcae_decode", {"model": vae, "batch": 1, "resolution": resolution},
                          functools.partial(_decode, models, vae, resolution, backward),
                          Work("conv", fwd=_decode_flops(vae, resolution))))
    if on_gpu and not quick:
        found.append(Case("diffusers_dcae_tiled_decode", {"model": vae, "batch": 1, "resolution": 4096, "tile": 512},
                          functools.partial(_tiled_decode, models, vae, 4096),
                          Work("conv", fwd=_decode_flops(vae, 4096))))  # the untiled decode's: the least work
    return found


def timing(device: str, quick: bool) -> Timing:
    """A CPU call of these models takes up to seconds."""
    if device == "cpu" and not quick:
        return Timing(warmup=1, min_blocks=3, max_blocks=7, max_seconds=60.0)
    return Timing(min_blocks=5, max_seconds=1.0) if quick else Timing(min_blocks=5)


class _Models:
    """One (stock, accelerated) pair at a time, each built once: the previous pair is freed first."""

    def __init__(self):
        self.key, self.pair = None, None

    def get(self, key, build):
        if self.key != key:
            self.pair = None
            self.pair, self.key = build(), key
        return self.pair


def _pair(stock: torch.nn.Module, device, dtype):
    from dcae_ext.integrations.diffusers import accelerate

    stock = torch.nn.Module.to(stock.eval(), device=device, dtype=dtype)  # nn.Module.to: no diffusers warnings
    if torch.device(device).type == "cuda":
        torch.backends.cudnn.benchmark = True
    fast = copy.deepcopy(stock)
    accelerate(fast)
    return stock, fast


def _build_sana(config, device, dtype):
    import diffusers

    torch.manual_seed(0)
    with torch.device(device):  # a 1600M model is built where it runs
        model = diffusers.SanaTransformer2DModel(**config)
    return _pair(model, device, dtype)


def _vae_config(name: str) -> dict:
    from dcae_ext.models import get_config

    return {k: v for k, v in get_config(name).to_diffusers_dict().items() if not k.startswith("_")}


def _build_vae(name, device, dtype):
    import diffusers

    torch.manual_seed(0)
    with torch.device(device):
        model = diffusers.AutoencoderDC(**_vae_config(name))
    return _pair(model, device, dtype)


def _meta_flops(build, run) -> float:
    """FLOPs of the stock model's forward, counted on the meta device (nothing is computed)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = build().eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad(), torch.device("meta"):
        run(model)
    return float(counter.get_total_flops())


def _sana_flops(config: dict, side: int) -> float:
    import diffusers

    return _meta_flops(lambda: diffusers.SanaTransformer2DModel(**config),
                       lambda m: m(torch.empty(1, config["in_channels"], side, side),
                                   torch.empty(1, CAPTION_TOKENS, config["caption_channels"]),
                                   torch.zeros(1, dtype=torch.long)))


def _decode_flops(name: str, resolution: int) -> float:
    import diffusers

    config = _vae_config(name)
    f = 2 ** (len(config["decoder_block_out_channels"]) - 1)
    return _meta_flops(lambda: diffusers.AutoencoderDC(**config),
                       lambda m: m.decode(torch.empty(1, config["latent_channels"], resolution // f, resolution // f)))


def _sana(models, config, side, device, dtype) -> dict[str, Workload]:
    stock, fast = models.get(("sana", _config_key(config), device, dtype), lambda: _build_sana(config, device, dtype))
    gen = torch.Generator(device).manual_seed(1)
    latent = torch.randn(1, config["in_channels"], side, side, device=device, generator=gen).to(dtype)
    caption = torch.randn(1, CAPTION_TOKENS, config["caption_channels"], device=device, generator=gen).to(dtype)
    timestep = torch.tensor([500], device=device)
    latent.requires_grad_(True)

    def call(model):
        return lambda: model(latent, caption, timestep, return_dict=False)[0]

    grad = torch.randn(1, config["out_channels"], side, side, device=device, generator=gen).to(dtype)
    return {"fast": Workload(call(fast), (latent,), (grad,)), "reference": Workload(call(stock), (latent,), (grad,))}


def _decode(models, name, resolution, backward, device, dtype) -> dict[str, Workload]:
    stock, fast = models.get(("vae", name, device, dtype), lambda: _build_vae(name, device, dtype))
    for model in (stock, fast):
        model.disable_tiling()
    f = stock.spatial_compression_ratio
    gen = torch.Generator(device).manual_seed(1)
    latent = torch.randn(1, stock.config.latent_channels, resolution // f, resolution // f, device=device,
                         generator=gen).to(dtype)
    if not backward:
        return {"fast": Workload(lambda: fast.decode(latent).sample),
                "reference": Workload(lambda: stock.decode(latent).sample)}
    latent.requires_grad_(True)
    grad = torch.randn(1, 3, resolution, resolution, device=device, generator=gen).to(dtype)
    return {"fast": Workload(lambda: fast.decode(latent).sample, (latent,), (grad,)),
            "reference": Workload(lambda: stock.decode(latent).sample, (latent,), (grad,))}


def _tiled_decode(models, name, resolution, device, dtype) -> dict[str, Workload]:
    stock, fast = models.get(("vae", name, device, dtype), lambda: _build_vae(name, device, dtype))
    for model in (stock, fast):
        model.enable_tiling(tile_sample_min_height=512, tile_sample_min_width=512,
                            tile_sample_stride_height=448, tile_sample_stride_width=448)
    f = stock.spatial_compression_ratio
    latent = torch.randn(1, stock.config.latent_channels, resolution // f, resolution // f, device=device,
                         generator=torch.Generator(device).manual_seed(1)).to(dtype)
    return {"fast": Workload(lambda: fast.decode(latent).sample),
            "reference": Workload(lambda: stock.decode(latent).sample)}


def _config_key(config: dict) -> str:
    return ",".join(f"{k}={config[k]}" for k in sorted(config))
