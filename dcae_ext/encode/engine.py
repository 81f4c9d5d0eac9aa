"""The encoding loop: DataLoader workers decode and resize images (pinned memory on CUDA) while the
model encodes; results gather per shard, and each finished shard is written atomically.

Batches never cross a shard boundary and always start at the shard's first image, so a shard's
batches, and therefore its bytes, are the same whichever rank writes it and whether or not an
earlier run was interrupted."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch.utils.data import DataLoader, Sampler

from dcae_ext.data.images import UnreadableImageError
from dcae_ext.data.loading import ImageSamples, LoadFailure, collate_readable
from dcae_ext.data.shards import shard_file, write_shard
from dcae_ext.encode.codecs import Codec
from dcae_ext.encode.plan import Plan
from dcae_ext.interrupt import ignore_in_worker


class ShardBatches(Sampler):
    """Lists of image indices: each listed shard's range, cut into batches from its start."""

    def __init__(self, plan: Plan, shards: list[int]):
        self.plan, self.shards = plan, list(shards)

    def _batches(self, shard: int):
        indices = self.plan.shard_range(shard)
        for start in range(0, len(indices), self.plan.batch_size):
            yield list(indices[start:start + self.plan.batch_size])

    def __iter__(self):
        for shard in self.shards:
            yield from self._batches(shard)

    def __len__(self) -> int:
        return sum(-(-len(self.plan.shard_range(s)) // self.plan.batch_size) for s in self.shards)

    def num_images(self) -> int:
        return sum(len(self.plan.shard_range(s)) for s in self.shards)


@dataclass
class _OpenShard:
    number: int
    start: int
    tensors: dict = field(default_factory=dict)
    records: list = field(default_factory=list)
    skipped: list = field(default_factory=list)


@dataclass
class EncodeStats:
    images: int = 0           # encoded by this process in this run
    skipped: int = 0
    shards: int = 0
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def encode_shards(codec: Codec, plan: Plan, sources: list[str], root: str, shards: list[int], *, workers: int = 2,
                  strict: bool = False, on_images: Callable[[int, EncodeStats], None] | None = None,
                  on_skip: Callable[[LoadFailure, int], None] | None = None) -> EncodeStats:
    """Encode `shards` of the plan's image list into `root`. `on_images(count, stats)` after each
    batch; `on_skip(failure, skipped_so_far)` for each unreadable image (strict: raise instead)."""
    device = codec.device
    batches = ShardBatches(plan, shards)
    loader = DataLoader(ImageSamples(sources, plan.resolution), batch_sampler=batches, num_workers=workers,
                        collate_fn=collate_readable, pin_memory=device.type == "cuda",
                        prefetch_factor=4 if workers else None, worker_init_fn=ignore_in_worker)
    stats = EncodeStats()
    started = time.perf_counter()
    current: _OpenShard | None = None
    for batch in loader:
        first = int(batch.groups[0][0][0]) if batch.groups else batch.failures[0].index
        number = first // plan.shard_size
        if current is None or current.number != number:
            if current is not None:
                _close(codec, root, current, stats)
            current = _OpenShard(number, plan.shard_range(number).start)
        for failure in batch.failures:
            if strict:
                raise UnreadableImageError(failure.reason)
            current.skipped.append({"path": failure.path, "reason": failure.reason})
            stats.skipped += 1
            if on_skip:
                on_skip(failure, stats.skipped)
        count = 0
        for indices, images in batch.groups:
            codes = codec.encode(images.to(device, non_blocking=True)).cpu()
            for index, code in zip(indices.tolist(), codes):
                offset = index - current.start
                current.tensors[str(offset)] = code.clone(memory_format=torch.contiguous_format)
                current.records.append({"path": sources[index], "shape": list(code.shape),
                                        "shard": shard_file(number), "offset": offset,
                                        "size": list(images.shape[-2:])})
            count += len(indices)
        stats.images += count
        stats.seconds = time.perf_counter() - started
        if on_images:
            on_images(count + len(batch.failures), stats)
    if current is not None:
        _close(codec, root, current, stats)
    stats.seconds = time.perf_counter() - started
    return stats


def _close(codec: Codec, root: str, shard: _OpenShard, stats: EncodeStats) -> None:
    write_shard(root, shard.number, shard.tensors, codec.shard_metadata(), shard.records, shard.skipped)
    stats.shards += 1
