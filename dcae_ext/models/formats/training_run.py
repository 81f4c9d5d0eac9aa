"""The files of a training run that the loaders recognise: its checkpoint and its config.json."""
from __future__ import annotations

TRAINING_CHECKPOINT = "checkpoint.pt"


def is_training_checkpoint(state) -> bool:
    return isinstance(state, dict) and "model_class" in state and "model_config" in state and "model" in state


def is_run_config(data: dict) -> bool:
    """The config.json a training run writes next to its checkpoint (a TrainConfig)."""
    return "batch_size" in data and "steps" in data and "model" in data
