"""Official IBQ checkpoints (SEED-Voken's PyTorch Lightning .ckpt, or a safetensors export of its
state dict) read offline, without running pickled code, and mapped to `IBQTokenizer` names.

A Lightning .ckpt is a torch zip archive whose pickle also holds trainer state (loops, callbacks,
optimiser states). It is read with a restricted unpickler: the globals torch's own `weights_only`
loader allows (tensor and storage rebuilding, OrderedDict, torch dtypes...) resolve as usual;
every other global the file names is replaced by an inert placeholder that is never imported
nor called. Only `state_dict` is kept.

Official state dict layout (src/IBQ/models/ibqgan.py): encoder.*, decoder.*, quant_conv.*,
post_quant_conv.*, quantize.embedding.weight (the codebook), loss.* (discriminator and LPIPS:
dropped), model_ema.* (LitEma shadow weights: the parameter name with its dots removed, plus
`decay` and `num_updates`).
"""
from __future__ import annotations

import functools
import os
import pickle
import types

import torch

OFFICIAL_CODEBOOK = "quantize.embedding.weight"
CODEBOOK = "quantizer.codebook"
DROPPED_PREFIXES = ("loss.", "model_ema.")
KEPT_PREFIXES = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")


class _Opaque:
    """Stands in for a global of the checkpoint that is not allow-listed: absorbs its arguments
    and state, so the pickle completes; the real object is never imported or called."""

    def __new__(cls, *args, **kwargs):
        return super().__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass

    def __setitem__(self, key, value):
        pass

    def append(self, item):
        pass

    def extend(self, items):
        pass


@functools.lru_cache(maxsize=1)
def _allowed_globals() -> dict:
    """torch's own list for weights_only loading (tensor rebuild functions, storages, dtypes)."""
    try:
        from torch import _weights_only_unpickler

        return dict(_weights_only_unpickler._get_allowed_globals())
    except (ImportError, AttributeError) as error:
        raise RuntimeError(f"torch {torch.__version__} no longer exposes the weights_only allow-list this reader "
                           "builds on (torch._weights_only_unpickler._get_allowed_globals); convert the "
                           "checkpoint to safetensors with the torch it was saved with") from error


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        allowed = _allowed_globals().get(f"{module}.{name}")
        if allowed is not None:
            return allowed
        return type(f"Opaque[{module}.{name}]", (_Opaque,), {})


_restricted_pickle = types.SimpleNamespace(__name__="dcae_ext_restricted_pickle", Unpickler=_RestrictedUnpickler,
                                           load=lambda file, **kw: _RestrictedUnpickler(file, **kw).load())


def read_lightning_checkpoint(path: str | os.PathLike) -> dict:
    """The `state_dict` of a Lightning checkpoint (or a bare state dict saved with torch.save)."""
    path = os.fspath(path)
    try:
        # weights_only=False only lets torch use our unpickler; it resolves no global outside the allow-list.
        data = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_restricted_pickle)
    except (pickle.UnpicklingError, EOFError, RuntimeError, ValueError) as error:
        raise ValueError(f"argument 'path': {path} is not a readable torch checkpoint ({error})") from error
    state = data.get("state_dict", data) if isinstance(data, dict) else None
    if not isinstance(state, dict) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"argument 'path': {path} holds no state_dict of tensors")
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def read_official_file(path: str | os.PathLike) -> dict:
    """Tensors of an official checkpoint file: .ckpt/.pt/.pth (Lightning) or .safetensors."""
    path = os.fspath(path)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    return read_lightning_checkpoint(path)


def is_official_layout(state: dict) -> bool:
    return OFFICIAL_CODEBOOK in state


def is_official_ibq_file(path: str | os.PathLike) -> bool:
    """A Lightning .ckpt, or a .safetensors file holding the official codebook key (read lazily)."""
    path = os.fspath(path)
    if path.endswith(".ckpt"):
        return True
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(path, framework="pt") as handle:
            return OFFICIAL_CODEBOOK in handle.keys()
    return False


def _ema_key(name: str) -> str:
    return "model_ema." + name.replace(".", "")


def convert_official_state(state: dict, use_ema: bool = False) -> dict:
    """Official names -> IBQTokenizer names. `use_ema`: take the LitEma shadow weights instead of
    the live ones (every generator weight must then have one)."""
    if not is_official_layout(state):
        raise ValueError(f"official IBQ checkpoint: no '{OFFICIAL_CODEBOOK}' key; keys look like {sorted(state)[:6]}")
    converted, unknown = {}, []
    for key, value in state.items():
        if key == OFFICIAL_CODEBOOK:
            converted[CODEBOOK] = value
        elif key.startswith(KEPT_PREFIXES):
            converted[key] = value
        elif not key.startswith(DROPPED_PREFIXES):
            unknown.append(key)
    if unknown:
        raise ValueError(f"official IBQ checkpoint: unexpected keys {unknown[:8]} (a remapped codebook or another "
                         "model family is not supported)")
    if use_ema:
        official = {key: OFFICIAL_CODEBOOK if key == CODEBOOK else key for key in converted}
        missing = [key for key, name in official.items() if _ema_key(name) not in state]
        if missing:
            raise ValueError(f"argument 'use_ema': the checkpoint holds no EMA weight for {missing[:6]}"
                             f"{' (and more)' if len(missing) > 6 else ''}")
        converted = {key: state[_ema_key(name)] for key, name in official.items()}
    return converted


def infer_vqgan_config(state: dict):
    """The VQGANConfig that built an (IBQTokenizer-named) state dict, read from its shapes.
    Attention levels are given as resolutions counted from 256, as the official configs do."""
    from dcae_ext.models.ibq.vqgan import VQGANConfig

    conv_in = state["encoder.conv_in.weight"]
    ch = conv_in.shape[0]
    levels = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.down."))
    ch_mult = tuple(state[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] // ch for i in range(levels))
    blocks = 1 + max(int(k.split(".")[4]) for k in state if k.startswith("encoder.down.0.block."))
    resolution = 256
    attn = tuple(resolution // 2 ** i for i in range(levels) if f"encoder.down.{i}.attn.0.q.weight" in state)
    return VQGANConfig(ch=ch, ch_mult=ch_mult, num_res_blocks=blocks, attn_resolutions=attn, resolution=resolution,
                       z_channels=state["encoder.conv_out.weight"].shape[0], in_channels=conv_in.shape[1],
                       out_ch=state["decoder.conv_out.weight"].shape[0])
