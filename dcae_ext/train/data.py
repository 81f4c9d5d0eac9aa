"""Training images: a folder (ImageFolder tree or flat), a list file, or the embedded default
(scikit-image's bundled sample photographs, read from the installed package: no download).

Augmentation (random crop to the training resolution, horizontal flip) is drawn from a generator
seeded by (seed, sample key), where the key the sampler yields is epoch * len + index: a sample's
crop depends on nothing else, so results do not change with the number of workers or ranks, and
a resumed run sees exactly the images an uninterrupted run would.
"""
from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, DistributedSampler

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")

# Files that ship inside the scikit-image wheel (skimage/data/*); anything fetched by pooch is left out.
EMBEDDED_FILES = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "hubble_deep_field.jpg",
                  "ihc.png", "motorcycle_left.png", "motorcycle_right.png", "retina.jpg", "color.png",
                  "camera.png", "brick.png", "grass.png", "gravel.png", "coins.png", "moon.png")


def list_images(source: str) -> list[str]:
    """All images under a folder (recursively: a flat folder or an ImageFolder class tree), or the
    paths listed one per line in a text file (relative paths are relative to that file)."""
    if os.path.isdir(source):
        found = []
        for root, _, files in os.walk(source, followlinks=True):
            found += [os.path.join(root, f) for f in files if f.lower().endswith(IMAGE_EXTENSIONS)]
        found.sort()
    elif os.path.isfile(source):
        base = os.path.dirname(os.path.abspath(source))
        with open(source) as stream:
            found = [os.path.join(base, line.strip()) for line in stream if line.strip()]
    else:
        raise FileNotFoundError(f"argument 'data': {source} is neither a folder nor a list file")
    if not found:
        raise ValueError(f"argument 'data': no images ({', '.join(IMAGE_EXTENSIONS)}) found in {source}")
    return found


def embedded_image_paths() -> list[str]:
    import skimage.data

    folder = os.path.dirname(skimage.data.__file__)
    paths = [os.path.join(folder, name) for name in EMBEDDED_FILES if os.path.isfile(os.path.join(folder, name))]
    if not paths:
        raise RuntimeError(f"no sample images found in {folder}: is scikit-image installed completely?")
    return paths


def _load_rgb(path: str) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


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
                 cache: bool = False):
        if resolution < 1:
            raise ValueError(f"argument 'resolution': expected >= 1, got {resolution}")
        self.paths = list(paths)
        self.resolution = resolution
        self.seed = seed
        self.samples_per_image = samples_per_image
        self._cache = {i: _load_rgb(p) for i, p in enumerate(self.paths)} if cache else None

    def __len__(self) -> int:
        return len(self.paths) * self.samples_per_image

    def __getitem__(self, key: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + int(key))
        image_index = int(key) % len(self)
        image_index %= len(self.paths)
        image = self._cache[image_index] if self._cache is not None else _load_rgb(self.paths[image_index])
        return random_crop_flip(image, self.resolution, generator)


def build_dataset(data: str | None, resolution: int, seed: int = 0) -> CropDataset:
    """`data` None: the embedded sample images, 64 crops of each per epoch (kept in memory)."""
    if data is None:
        return CropDataset(embedded_image_paths(), resolution, seed, samples_per_image=64, cache=True)
    return CropDataset(list_images(data), resolution, seed)


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
