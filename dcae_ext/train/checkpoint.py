"""Checkpoint files: atomic writes (a crash mid-write leaves the previous file intact), safe loading
(tensors and plain values only: `torch.load(weights_only=True)`, so a checkpoint cannot run code)
and the RNG state needed for an exact resume, stored as tensors and plain values."""
from __future__ import annotations

import random

import numpy as np
import torch

from dcae_ext.files import atomic_write, safe_torch_load


def atomic_save(obj, path: str, save=torch.save) -> None:
    """`save(obj, stream)` into `path` atomically (see models.files.atomic_write)."""
    def write(tmp: str) -> None:
        with open(tmp, "wb") as stream:
            save(obj, stream)

    atomic_write(path, write)


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """A checkpoint written by `atomic_save(trainer.state_dict(), path)`; never unpickles code."""
    state = safe_torch_load(path, map_location=map_location)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a dcae-ext training checkpoint (holds a {type(state).__name__})")
    return state


def rng_state() -> dict:
    """The Python, NumPy, torch (and CUDA) generator states as tensors and plain values."""
    version, internal, gauss = random.getstate()
    numpy = np.random.get_state(legacy=False)
    state = {
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {"bit_generator": numpy["bit_generator"], "pos": int(numpy["state"]["pos"]),
                  "key": torch.from_numpy(numpy["state"]["key"].astype(np.int64)),
                  "has_gauss": int(numpy["has_gauss"]), "gauss": float(numpy["gauss"])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    python, numpy = state["python"], state["numpy"]
    random.setstate((python["version"], tuple(python["internal"].tolist()), python["gauss"]))
    np.random.set_state({"bit_generator": numpy["bit_generator"], "has_gauss": numpy["has_gauss"],
                         "gauss": numpy["gauss"],
                         "state": {"key": numpy["key"].cpu().numpy().astype(np.uint32), "pos": numpy["pos"]}})
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def model_config_changes(state: dict, model) -> list[str]:
    """'field saved -> now' for every field in which the model config a checkpoint records
    (`model_config`) builds another model than `model.config` (as the loaders compare a config.json:
    names aside); none for a checkpoint without one, or with one this version cannot read."""
    from dcae_ext.models.dcae.config import DCAEConfig, config_differences as dcae_differences
    from dcae_ext.models.ibq.tokenizer import IBQConfig, config_differences as ibq_differences

    current = getattr(model, "config", None)
    kinds = {DCAEConfig: dcae_differences, IBQConfig: ibq_differences}
    if "model_config" not in state or type(current) not in kinds:
        return []
    try:
        saved = type(current).from_dict(state["model_config"])
    except (TypeError, ValueError):
        return []
    return [f"{name} {old!r} -> {new!r}" for name, old, new in kinds[type(current)](saved, current)]
