"""`--model NAME_OR_PATH` for the commands that run a model (eval, reconstruct, encode, tokenize)."""
from __future__ import annotations

import os

import torch


def load_model(name_or_path: str, config: str | None = None, ema: bool = False):
    """(model, kind, pretrained) for a local path (anything `models.load_model_from_path` reads: a
    save_pretrained folder, a training run or its checkpoint.pt, diffusers / efficientvit / official IBQ
    weights), a DC-AE preset name or ibq-<preset> (random weights, the same on every run). `kind` is
    "DC-AE" or "IBQ tokenizer"."""
    from dcae_ext import models

    if os.path.exists(name_or_path):
        model = models.load_model_from_path(name_or_path, config=config, ema=ema)  # its errors name the file
        kind = "IBQ tokenizer" if isinstance(model, models.IBQTokenizer) else "DC-AE"
        return model, kind, True
    if ema:
        raise SystemExit("--ema: only a training run or checkpoint holds EMA weights")
    torch.manual_seed(0)
    if name_or_path.startswith("ibq-"):
        errors = []
        for preset in (name_or_path, name_or_path[len("ibq-"):]):  # "ibq-f16-16384" or "ibq-tiny" -> "tiny"
            try:
                return models.IBQTokenizer.from_config(preset).eval(), "IBQ tokenizer", False
            except ValueError as error:
                errors.append(str(error))
        raise SystemExit(f"--model: {errors[-1]}")
    if name_or_path in models.preset_names():
        return models.DCAE.from_config(name_or_path).eval(), "DC-AE", False
    raise SystemExit(f"--model: {name_or_path!r} is neither an existing path nor a preset; DC-AE presets: "
                     f"{', '.join(models.preset_names())}; IBQ: ibq-<preset>")
