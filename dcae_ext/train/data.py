"""Training images: a folder (ImageFolder tree or flat), a list file, or the embedded default
(scikit-image's bundled sample photographs, read from the installed package: no download).

Augmentation (random crop to the training resolution, horizontal flip) is drawn from a generator
seeded by (seed, sample key), where the key the sampler yields is epoch * len + index: a sample's
crop depends on nothing else, so results do not change with the number of workers or ranks, and
a resumed run sees exactly the images an uninterrupted run would.

An unreadable file is skipped with a warning (once per process) and the next readable file in the
list stands in for it: the stand-in depends only on the key and the files, so the order of the
samples, and a resumed run, are unchanged. `strict=True` raises UnreadableImageError instead.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, DistributedSampler

from dcae_ext.data.images import (EMBEDDED_FILES, IMAGE_EXTENSIONS, UnreadableImageError, UnreadableImageWarning,
                                  embedded_image_paths, list_images, open_rgb)

__all__ = ["EMBEDDED_FILES", "IMAGE_EXTENSIONS", "CropDataset", "ResumableSampler", "build_dataset",
           "embedded_image_paths", "list_images", "random_crop_flip"]


def random_crop_flip(image: Image.Image, resolution: int, generator: torch.Generator) -> torch.Tensor:
    """A random `resolution` square crop (the image is first scaled up if a side is shorter),
    flipped left-right with probability 1/2, as (3, R, R) float in [-1, 1]."""
    width, height = image.size
    if min(width, height) < resolution:
        scale = resolution / min(width, height)
        width, height = max(resolution, round(width * scale)), max(resolution, round(height * scale))
        image = image.resize((width, height), Image.BICUBIC)
    top = int(torch.randint(0, height - resolution + 1, (1,), generator=generator))
    left = int(torch.randint(0, width - resolution + 1, (1,), generator=generator))
    crop = np.asarray(image.crop((left, top, left + resolution, top + resolution)), dtype=np.float32)
    tensor = torch.from_numpy(crop.copy()).permute(2, 0, 1) / 127.5 - 1.0
    if bool(torch.randint(0, 2, (1,), generator=generator)):
        tensor = tensor.flip(-1)
    return tensor.contiguous()


class CropDataset(Dataset):
    """`samples_per_image` random crops of each image per epoch. Indexed by sample key
    (epoch * len(self) + index, see `ResumableSampler`); plain indices < len work as epoch 0."""

    def __init__(self, paths: list[str], resolution: int, seed: int = 0, samples_per_image: int = 1,
                 cache: bool = False, strict: bool = False):
        if resolution < 1:
            raise ValueError(f"argument 'resolution': expected >= 1, got {resolution}")
        self.paths = list(paths)
        self.resolution = resolution
        self.seed = seed
        self.samples_per_image = samples_per_image
        self.strict = strict
        self._unreadable: set[int] = set()  # indices found unreadable by this process
        self._cache = None
        if cache:
            images = {index: self._read(index) for index in range(len(self.paths))}
            self._cache = {index: image for index, image in images.items() if image is not None}

    def __len__(self) -> int:
        return len(self.paths) * self.samples_per_image

    def __getitem__(self, key: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + int(key))
        image_index = int(key) % len(self)
        image_index %= len(self.paths)
        return random_crop_flip(self._image(image_index), self.resolution, generator)

    def _read(self, index: int) -> Image.Image | None:
        """The image, or None (after a warning) when the file is unreadable and not strict."""
        if index in self._unreadable:
            return None
        if self._cache is not None:
            return self._cache.get(index)
        try:
            return open_rgb(self.paths[index])
        except UnreadableImageError as error:
            if self.strict:
                raise
            self._unreadable.add(index)
            warnings.warn(f"skipped: {error} ({len(self._unreadable)} unreadable so far in this process); the "
                          "next readable image in the list stands in for it", UnreadableImageWarning)
            return None

    def _image(self, index: int) -> Image.Image:
        for step in range(len(self.paths)):
            image = self._read((index + step) % len(self.paths))
            if image is not None:
                return image
        raise UnreadableImageError(f"none of the {len(self.paths)} images can be read")


def build_dataset(data: str | None, resolution: int, seed: int = 0, strict: bool = False) -> CropDataset:
    """`data` None: the embedded sample images, 64 crops of each per epoch (kept in memory).
    `strict`: an unreadable image raises UnreadableImageError instead of being skipped."""
    if data is None:
        return CropDataset(embedded_image_paths(), resolution, seed, samples_per_image=64, cache=True, strict=strict)
    return CropDataset(list_images(data), resolution, seed, strict=strict)


class ResumableSampler(DistributedSampler):
    """DistributedSampler that yields sample keys (epoch * len + index) and can start mid-epoch:
    `start(epoch, skip)` resumes after `skip` of this rank's samples of `epoch`. It runs forever,
    advancing the epoch itself, so a training loop just keeps drawing batches."""

    def __init__(self, dataset, num_replicas: int = 1, rank: int = 0, seed: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self._skip = 0

    def start(self, epoch: int, skip: int) -> None:
        self.set_epoch(epoch)
        self._skip = skip

    def __iter__(self):
        while True:
            size = len(self.dataset)
            keys = [self.epoch * size + i for i in super().__iter__()]
            yield from keys[self._skip:]
            self._skip = 0
            self.set_epoch(self.epoch + 1)

    def __len__(self) -> int:
        return self.num_samples
