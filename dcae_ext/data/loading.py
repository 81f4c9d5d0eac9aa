"""Loading many images where some may be unreadable: a dataset that returns a `LoadFailure` in
place of an image it cannot read, a collate function that groups the readable ones, and an
iterator over a DataLoader that skips (and counts) the failures or, when strict, raises."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, NamedTuple

import torch
from torch.utils.data import Dataset

from dcae_ext.data.images import UnreadableImageError, UnreadableImageWarning, load_image


@dataclass(frozen=True)
class LoadFailure:
    """Image `index` (its position in the list) could not be read."""
    index: int
    path: str
    reason: str


class ImageSamples(Dataset):
    """(index, (3, H, W) float in [0, 1]) for each path, or a LoadFailure; see `load_image`."""

    def __init__(self, paths: list[str], resolution: int | None):
        if not paths:
            raise ValueError("argument 'paths': no images")
        if resolution is not None and resolution < 1:
            raise ValueError(f"argument 'resolution': expected a positive size, got {resolution}")
        self.paths = list(paths)
        self.resolution = resolution

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        try:
            return index, load_image(self.paths[index], self.resolution)
        except UnreadableImageError as error:
            return LoadFailure(index, self.paths[index], str(error))


class ReadableBatch(NamedTuple):
    """groups: (indices (n,), images (n, 3, H, W)) per run of consecutive same-size images."""
    groups: list
    failures: list


def collate_readable(samples: list) -> ReadableBatch:
    """DataLoader collate_fn for `ImageSamples`: stacks consecutive images of equal size, sets the
    failures aside. Order is kept, so a batch's images come out in index order."""
    groups, failures, run = [], [], []

    def close_run():
        if run:
            groups.append((torch.tensor([i for i, _ in run]), torch.stack([image for _, image in run])))
            run.clear()

    for sample in samples:
        if isinstance(sample, LoadFailure):
            failures.append(sample)
            continue
        if run and run[-1][1].shape != sample[1].shape:
            close_run()
        run.append(sample)
    close_run()
    return ReadableBatch(groups, failures)


def skip_message(failure: LoadFailure, count: int) -> str:
    return f"skipped: {failure.reason} ({count} unreadable so far)"


class ReadableBatches:
    """Iterates (indices, images) over a DataLoader built with `collate_readable`, in order.

    Unreadable images are recorded in `skipped` and reported through `on_skip(failure, count)`
    (default: an UnreadableImageWarning), or with `strict` raise UnreadableImageError."""

    def __init__(self, loader: Iterable[ReadableBatch], strict: bool = False,
                 on_skip: Callable[[LoadFailure, int], None] | None = None):
        self.loader = loader
        self.strict = strict
        self.on_skip = on_skip or (lambda failure, count: warnings.warn(skip_message(failure, count),
                                                                        UnreadableImageWarning, stacklevel=3))
        self.skipped: list[LoadFailure] = []

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batch in self.loader:
            for failure in batch.failures:
                if self.strict:
                    raise UnreadableImageError(failure.reason)
                self.skipped.append(failure)
                self.on_skip(failure, len(self.skipped))
            yield from batch.groups
