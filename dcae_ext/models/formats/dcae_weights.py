"""Weight formats: ours (= diffusers AutoencoderDC names) <-> efficientvit, local loading and saving.

diffusers format: config.json + diffusion_pytorch_model.safetensors, keys identical to ours.
efficientvit format: model.safetensors (or a .pt holding {"state_dict": ...}) with keys such as
`encoder.stages.3.op_list.0.context_module.main.qkv.conv.weight`; its config.json only names the
model (`{"model_name": "dc-ae-f32c32-in-1.0"}`). DC-Gen, efficientvit's successor for DC-AE 1.5 /
1.1 / Lite, writes the same format (its adaptive latent layers keep the plain conv's names). The fused qkv conv weight (3*inner, C, 1, 1) is
split into diffusers' to_q / to_k / to_v (inner, C) by thirds of the output channels, and the
projection conv (C, inner', 1, 1) becomes the Linear-shaped to_out (C, inner').
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from dcae_ext.models.dcae.blocks import DownsampleBlock, EfficientViTBlock, ResBlock, UpsampleBlock
from dcae_ext.models.dcae.config import (DCAEConfig, config_differences, efficientvit_model_name, find_preset_in,
                                         get_config)
from dcae_ext.files import read_json, safe_torch_load, write_files_together
from dcae_ext.models.config_agreement import refuse_contradiction
from dcae_ext.models.formats.training_run import is_run_config

DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
EFFICIENTVIT_WEIGHTS = "model.safetensors"
# Every weights file a folder is read from, in the order the loader looks for them.
WEIGHT_FILES = (DIFFUSERS_WEIGHTS, EFFICIENTVIT_WEIGHTS, "diffusion_pytorch_model.bin", "model.pt", "model.pth",
                "pytorch_model.bin")
CONFIG_FILE = "config.json"
_QKV = ("to_q", "to_k", "to_v")


# --- key mapping ----------------------------------------------------------------------------------

def _entries(module: nn.Module) -> list[str]:
    return list(module.state_dict(keep_vars=True).keys())


def _block_map(block: nn.Module, ours: str, theirs: str, out: dict) -> None:
    """Fill out[our_key] = (efficientvit_key, kind) for one stage element."""
    if isinstance(block, ResBlock):
        for name in _entries(block):
            head, _, tail = name.partition(".")
            target = {"conv1": "main.conv1.conv", "conv2": "main.conv2.conv", "norm": "main.conv2.norm"}[head]
            out[f"{ours}.{name}"] = (f"{theirs}.{target}.{tail}", "same")
    elif isinstance(block, EfficientViTBlock):
        ctx, local = f"{theirs}.context_module.main", f"{theirs}.local_module.main"
        for name in _entries(block):
            parts = name.split(".")
            if parts[0] == "attn":
                if parts[1] in _QKV:
                    out[f"{ours}.{name}"] = (f"{ctx}.qkv.conv.weight", ("qkv", _QKV.index(parts[1])))
                elif parts[1] == "to_qkv_multiscale":
                    layer = {"proj_in": "0", "proj_out": "1"}[parts[3]]
                    out[f"{ours}.{name}"] = (f"{ctx}.aggreg.{parts[2]}.{layer}.{parts[4]}", "same")
                elif parts[1] == "to_out":
                    out[f"{ours}.{name}"] = (f"{ctx}.proj.conv.weight", "linear")
                else:  # norm_out
                    out[f"{ours}.{name}"] = (f"{ctx}.proj.norm.{'.'.join(parts[2:])}", "same")
            else:  # conv_out: the GLUMBConv
                target = {"conv_inverted": "inverted_conv.conv", "conv_depth": "depth_conv.conv",
                          "conv_point": "point_conv.conv", "norm": "point_conv.norm"}[parts[1]]
                out[f"{ours}.{name}"] = (f"{local}.{target}.{'.'.join(parts[2:])}", "same")
    elif isinstance(block, (DownsampleBlock, UpsampleBlock)):
        main = f"{theirs}.main" if block.shortcut else theirs
        stride_conv = isinstance(block, DownsampleBlock) and not block.pixel_unshuffle
        inner = "conv" if stride_conv else "conv.conv"  # efficientvit: ConvLayer vs *SampleLayer(ConvLayer)
        for name in _entries(block):
            out[f"{ours}.{name}"] = (f"{main}.{inner}.{name.split('.', 1)[1]}", "same")
    elif isinstance(block, nn.Conv2d):
        for name in _entries(block):
            out[f"{ours}.{name}"] = (f"{theirs}.conv.{name}", "same")
    else:
        raise TypeError(f"no efficientvit mapping for {type(block).__name__} at {ours}")


def efficientvit_key_map(model: nn.Module) -> dict:
    """our key -> (efficientvit key, kind); kind is "same", "linear" (1x1 conv <-> Linear) or ("qkv", i)."""
    enc, dec = model.encoder, model.decoder
    out: dict = {}
    _block_map(enc.conv_in, "encoder.conv_in", "encoder.project_in", out)
    for i, stage in enumerate(enc.down_blocks):
        for j, block in enumerate(stage):
            _block_map(block, f"encoder.down_blocks.{i}.{j}", f"encoder.stages.{i}.op_list.{j}", out)
    project_out = "encoder.project_out.main" if enc.out_shortcut else "encoder.project_out"
    _block_map(enc.conv_out, "encoder.conv_out", f"{project_out}.op_list.0", out)
    _block_map(dec.conv_in, "decoder.conv_in", "decoder.project_in.main" if dec.in_shortcut else "decoder.project_in",
               out)
    for i, stage in enumerate(dec.up_blocks):
        for j, block in enumerate(stage):
            _block_map(block, f"decoder.up_blocks.{i}.{j}", f"decoder.stages.{i}.op_list.{j}", out)
    for name in _entries(dec.norm_out):
        out[f"decoder.norm_out.{name}"] = (f"decoder.project_out.op_list.0.{name}", "same")
    _block_map(dec.conv_out, "decoder.conv_out", "decoder.project_out.op_list.2", out)
    return out


def to_efficientvit(model: nn.Module, state: dict | None = None) -> dict:
    """Our state dict (default: the model's) in efficientvit naming and shapes."""
    state = model.state_dict() if state is None else state
    result: dict = {}
    for ours, (theirs, kind) in efficientvit_key_map(model).items():
        value = state[ours]
        if kind == "linear":
            result[theirs] = value[:, :, None, None]
        elif isinstance(kind, tuple):
            result.setdefault(theirs, [None] * 3)[kind[1]] = value
        else:
            result[theirs] = value
    for key, value in result.items():
        if isinstance(value, list):
            result[key] = torch.cat(value)[:, :, None, None]
    return result


def from_efficientvit(model: nn.Module, state: dict) -> tuple[dict, list[str]]:
    """An efficientvit state dict in our naming; also returns the efficientvit keys it did not use."""
    result, used = {}, set()
    for ours, (theirs, kind) in efficientvit_key_map(model).items():
        if theirs not in state:
            continue
        used.add(theirs)
        value = state[theirs]
        if kind == "linear":
            value = value.flatten(1)
        elif isinstance(kind, tuple):
            value = value.flatten(1).chunk(3)[kind[1]]
        result[ours] = value
    return result, sorted(k for k in state if k not in used)


# --- loading --------------------------------------------------------------------------------------

def load_state(model: nn.Module, state: dict, strict: bool = True, unexpected: list[str] = ()) -> None:
    """Copy `state` (our naming) into the model after checking names and shapes."""
    expected = model.state_dict()
    unexpected = sorted(set(unexpected) | {k for k in state if k not in expected})
    missing = sorted(k for k in expected if k not in state and not k.endswith("num_batches_tracked"))
    wrong = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
             for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {missing}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {unexpected}")
    if wrong:
        problems.append(f"shape mismatches ({len(wrong)}): {wrong}")
    if wrong or (strict and problems):
        raise ValueError("DC-AE weights do not match the model: " + "; ".join(problems))
    if problems:
        warnings.warn("DC-AE weights: " + "; ".join(problems), RuntimeWarning, stacklevel=3)
    model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)


def read_weights(file: Path) -> dict:
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(file))
    data = safe_torch_load(file)
    for key in ("state_dict", "model"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            return data[key]
    return data


def is_efficientvit_state(state: dict) -> bool:
    return any(k.startswith(("encoder.project_in", "encoder.stages.", "decoder.project_out")) for k in state)


def _config_from_json(data: dict) -> DCAEConfig | None:
    if "dcae_ext_config" in data:
        return DCAEConfig.from_dict(data["dcae_ext_config"])
    if "model_name" in data:
        return get_config(data["model_name"])
    if data.get("_class_name") == "AutoencoderDC" or "encoder_block_types" in data:
        return DCAEConfig.from_dict(data)
    return None


def _describe_config(data: dict) -> str:
    """What a config.json that is not a DC-AE one holds, and what loads it."""
    if data.get("_class_name") == "IBQTokenizer":
        return "it holds an IBQ tokenizer; load it with IBQTokenizer.from_pretrained or load_model_from_path"
    if is_run_config(data):
        return ("it holds a training run's settings; load the run's checkpoint.pt with load_model_from_path, "
                "or the exported weights in its model/ folder")
    if data.get("_class_name"):
        return f"it describes a {data['_class_name']}, not an AutoencoderDC"
    return f"none of model_name, dcae_ext_config or AutoencoderDC fields in its keys {sorted(data)[:8]}"


def _weights_file(directory: Path) -> Path:
    for name in WEIGHT_FILES:
        if (directory / name).is_file():
            return directory / name
    raise FileNotFoundError(f"no DC-AE weights ({DIFFUSERS_WEIGHTS}, {EFFICIENTVIT_WEIGHTS}, model.pt) in {directory}")


def _check_agreement(given: DCAEConfig, data: dict, source: Path) -> None:
    """ValueError where the config passed to the loader contradicts the one saved beside the weights
    (`data`, read from `source`): architectures with the same names and shapes (1.1 and 1.5; in-1.0 and
    mix-1.0 but for the scaling factor) would otherwise load without a complaint, with the other
    structure or factor. A config.json that names no config this package knows (a model name of no
    preset, say) is what `given` is for, and is not compared."""
    try:
        saved = _config_from_json(data)
    except (TypeError, ValueError):
        return
    if saved is None:
        return
    refuse_contradiction(given.name, config_differences(given, saved), source)


def load_pretrained(cls, path, config=None, strict: bool = True):
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"argument 'path': {path} does not exist (loading needs a local path)")
    file = _weights_file(path) if path.is_dir() else path
    if isinstance(config, str):
        config = get_config(config)
    if (file.parent / CONFIG_FILE).is_file():
        data = read_json(file.parent / CONFIG_FILE)
        if config is None:
            config = _config_from_json(data)
            if config is None:
                raise ValueError(f"{file.parent / CONFIG_FILE} is not a DC-AE config: {_describe_config(data)}")
        else:
            _check_agreement(config, data, file.parent / CONFIG_FILE)
    if config is None:
        preset = find_preset_in(str(path.resolve()))
        if preset is None:
            raise ValueError(f"cannot tell the DC-AE configuration of {path}: no config.json beside the weights "
                             f"and no preset name in the path; name the preset (Python: config=<preset name>, "
                             f"command line: --config <preset name>)")
        config = get_config(preset)
    model = cls(config)
    state = read_weights(file)
    if is_efficientvit_state(state):
        state, unused = from_efficientvit(model, state)
        load_state(model, state, strict=strict, unexpected=unused)
    else:
        load_state(model, state, strict=strict)
    return model


# --- saving ---------------------------------------------------------------------------------------

def save_pretrained(model: nn.Module, path, format: str | None = None) -> None:
    from safetensors.torch import save_file

    if format is None:
        format = "efficientvit" if model.config.structured_latent else "diffusers"
    if format not in ("diffusers", "efficientvit"):
        raise ValueError(f"argument 'format': {format!r} is not 'diffusers' or 'efficientvit'")
    config: DCAEConfig = model.config
    if format == "diffusers":
        state, weights_name, meta = model.state_dict(), DIFFUSERS_WEIGHTS, config.to_diffusers_dict()
    else:
        state, weights_name = to_efficientvit(model), EFFICIENTVIT_WEIGHTS
        meta = {"dcae_ext_config": config.to_dict()}
        model_name = efficientvit_model_name(config)
        if model_name is not None:
            meta["model_name"] = model_name
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    write_files_together(path, {  # a kill leaves the old pair or the new one, never a mix
        weights_name: lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}),
        CONFIG_FILE: lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2) + "\n")},
        leave_out=WEIGHT_FILES)  # earlier weights in another format would be read before the new ones
