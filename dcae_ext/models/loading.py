"""One entry point for every model file this package writes or reads: `load_model_from_path`."""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from dcae_ext.files import read_json, safe_torch_load
from dcae_ext.models.formats.ibq_official import is_official_ibq_file
from dcae_ext.models.formats.training_run import TRAINING_CHECKPOINT, is_run_config, is_training_checkpoint


def _model_classes() -> dict:
    from dcae_ext.models.dcae.model import DCAE
    from dcae_ext.models.ibq.tokenizer import IBQTokenizer

    return {"DCAE": DCAE, "IBQTokenizer": IBQTokenizer}


def model_from_training_checkpoint(state: dict, source: str, ema: bool = False) -> nn.Module:
    """The generator of a training checkpoint (the live weights, or the EMA weights with ema=True)."""
    classes = _model_classes()
    if state["model_class"] not in classes:
        raise ValueError(f"{source}: unknown model class {state['model_class']!r} (known: {sorted(classes)})")
    model = classes[state["model_class"]].from_config(state["model_config"])
    if ema:
        if "ema" not in state:
            raise ValueError(f"{source}: the run kept no EMA weights (ema_decay 0); load its live weights "
                             "(without --ema / ema=True)")
        weights = state["ema"]["model"]
    else:
        weights = state["model"]
    model.load_state_dict(weights)
    return model


def load_model_from_path(path: str | os.PathLike, config=None, *, ema: bool = False,
                         torch_dtype: torch.dtype | None = None) -> nn.Module:
    """Load a model from a local path, in eval mode. `path` may be:

    - a training run folder or its checkpoint.pt (the live weights; the EMA weights with ema=True),
    - an IBQ tokenizer folder written by `IBQTokenizer.save_pretrained`, or an official IBQ checkpoint
      (SEED-Voken's Lightning .ckpt or a safetensors export of it; its EMA weights with ema=True),
    - a DC-AE folder or weights file in diffusers or efficientvit format (`config`: a preset name or
      DCAEConfig for efficientvit weights whose folder and path name none).

    `config` for an IBQ folder or official checkpoint is an IBQ preset name or IBQConfig, as
    `IBQTokenizer.from_pretrained` takes it (one that contradicts a saved config.json is an error).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist (models load from local paths only)")
    if path.is_dir():
        config_file = path / "config.json"
        data = read_json(config_file) if config_file.is_file() else {}
        if (path / TRAINING_CHECKPOINT).is_file() and (is_run_config(data) or not data):
            return load_model_from_path(path / TRAINING_CHECKPOINT, ema=ema, torch_dtype=torch_dtype)
        if is_run_config(data):
            raise FileNotFoundError(f"{path} holds a training run's config.json but no {TRAINING_CHECKPOINT}; "
                                    f"its exported weights are in {path / 'model'} once the run finished")
        if data.get("_class_name") == "IBQTokenizer":
            from dcae_ext.models.ibq.tokenizer import IBQTokenizer

            if ema:
                raise ValueError(f"ema=True (--ema): {path} is a tokenizer folder written by save_pretrained, "
                                 "which holds one set of weights; load the run's checkpoint.pt for its EMA weights")
            return _finish(IBQTokenizer.from_pretrained(path, config=config), torch_dtype)
    elif is_official_ibq_file(path):
        from dcae_ext.models.ibq.tokenizer import IBQTokenizer

        return _finish(IBQTokenizer.from_pretrained(path, config=config, use_ema=ema), torch_dtype)
    elif path.suffix not in (".safetensors",):
        state = safe_torch_load(path)
        if is_training_checkpoint(state):
            return _finish(model_from_training_checkpoint(state, str(path), ema=ema), torch_dtype)
    if ema:
        raise ValueError(f"ema=True (--ema): {path} is not a training run or checkpoint, so it holds no EMA weights")
    from dcae_ext.models.dcae.model import DCAE

    return DCAE.from_pretrained(path, config=config, torch_dtype=torch_dtype)


def cast_model(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """`model` in `dtype`, through its own `cast` where it has one (an IBQ tokenizer keeps its
    codebook float32), else `.to(dtype)`."""
    return model.cast(dtype) if hasattr(model, "cast") else model.to(dtype)


def _finish(model: nn.Module, torch_dtype: torch.dtype | None) -> nn.Module:
    if torch_dtype is not None:
        model = cast_model(model, torch_dtype)
    return model.eval()
