"""Data shared by training, evaluation and dataset encoding: image listing and robust loading,
latent / token shards and their readers."""
from dcae_ext.data.datasets import LatentDataset, TokenDataset, open_encoded

__all__ = ["LatentDataset", "TokenDataset", "open_encoded"]
