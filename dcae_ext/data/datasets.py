"""Readers of an encoded dataset (`dcae-ext encode` / `tokenize` output) for a training script:

    latents = LatentDataset("out/latents")          # scaled by the model's factor, float32
    loader = DataLoader(latents, batch_size=64, shuffle=True, num_workers=4)
    tokens = TokenDataset("out/tokens")             # int64 (h, w) code grids
    latents.image_size(i)                           # (H, W) of the source image as encoded (crop target)

Tensors are read lazily from the safetensors shards (memory-mapped, one open file per shard and
process), so a dataset larger than memory works and DataLoader workers share nothing.
"""
from __future__ import annotations

import os

import torch
from torch.utils.data import Dataset

from dcae_ext.data.shards import METADATA_FILE, read_index, read_json


class _ShardedTensors(Dataset):
    kind = ""

    def __init__(self, root: str | os.PathLike):
        self.root = os.fspath(root)
        self.metadata = read_json(self.root, METADATA_FILE)
        if self.metadata is None:
            raise FileNotFoundError(f"argument 'root': {self.root} has no {METADATA_FILE}: not an encoded dataset, "
                                    "or its run has not finished (run the same command again to complete it)")
        if self.metadata.get("kind") != self.kind:
            raise ValueError(f"argument 'root': {self.root} holds {self.metadata.get('kind')!r}, not {self.kind!r} "
                             f"(use {'TokenDataset' if self.kind == 'latents' else 'LatentDataset'})")
        self.records = read_index(self.root)
        self._files: dict = {}
        self._owner = None

    def __len__(self) -> int:
        return len(self.records)

    def path(self, index: int) -> str:
        """The source image of item `index`."""
        return self.records[index]["path"]

    def image_size(self, index: int) -> tuple[int, int]:
        """(H, W) of the image item `index` was encoded from. An image whose sides are not multiples
        of the model's factor was padded: pass this as `size=` to `DCAE.decode` /
        `IBQTokenizer.decode_indices` to crop the decoded image back."""
        height, width = self.records[index]["size"]
        return height, width

    def stored(self, index: int) -> torch.Tensor:
        """Item `index` exactly as stored (dtype included)."""
        from safetensors import safe_open

        if self._owner != os.getpid():  # a forked DataLoader worker opens its own handles
            self._files, self._owner = {}, os.getpid()
        record = self.records[index]
        handle = self._files.get(record["shard"])
        if handle is None:
            handle = self._files[record["shard"]] = safe_open(os.path.join(self.root, record["shard"]), "pt")
        return handle.get_tensor(str(record["offset"]))

    def __getstate__(self):
        return dict(self.__dict__, _files={}, _owner=None)


class LatentDataset(_ShardedTensors):
    """DC-AE latents (c, h, w). `scaled` (default): multiplied by the model's scaling factor, as a
    diffusion model is trained on; `dtype`: None keeps the stored (model) dtype."""

    kind = "latents"

    def __init__(self, root: str | os.PathLike, scaled: bool = True, dtype: torch.dtype | None = torch.float32):
        super().__init__(root)
        self.scaling_factor = float(self.metadata["scaling_factor"])
        self.scaled = scaled
        self.dtype = dtype

    def __getitem__(self, index: int) -> torch.Tensor:
        latent = self.stored(index)
        if self.dtype is not None:
            latent = latent.to(self.dtype)
        return latent * self.scaling_factor if self.scaled else latent


class TokenDataset(_ShardedTensors):
    """IBQ code grids (h, w) as int64 (stored as int32); `num_codes` is the codebook size."""

    kind = "tokens"

    def __init__(self, root: str | os.PathLike):
        super().__init__(root)
        self.num_codes = int(self.metadata["num_codes"])

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.stored(index).long()


def open_encoded(root: str | os.PathLike) -> LatentDataset | TokenDataset:
    """The reader matching the folder's kind, returning items as stored (unscaled, stored dtype)."""
    metadata = read_json(os.fspath(root), METADATA_FILE) or {}
    if metadata.get("kind") == TokenDataset.kind:
        return TokenDataset(root)
    return LatentDataset(root, scaled=False, dtype=None)
