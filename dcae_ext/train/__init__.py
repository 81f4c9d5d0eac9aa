"""Trainers for DC-AE (phases 1-3 of the paper's decoupled high-resolution adaptation) and the
IBQ tokenizer: configuration, losses, discriminator, data, checkpoints, EMA, DDP helpers."""
from dcae_ext.train.config import TrainConfig, make_config
from dcae_ext.train.demo import run_demo
from dcae_ext.train.trainer import Trainer

__all__ = ["TrainConfig", "make_config", "Trainer", "run_demo"]
