"""One encoding run over all ranks: check or start the plan, encode this rank's unfinished shards,
then (main rank) merge the index and write metadata.json."""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Callable

import torch

import dcae_ext
from dcae_ext import output_folder
from dcae_ext.data.loading import LoadFailure
from dcae_ext.data.shards import METADATA_FILE, atomic_write, completed_shards, merge_index
from dcae_ext.encode.codecs import Codec
from dcae_ext.encode.engine import EncodeStats, ShardBatches, encode_shards
from dcae_ext.encode.plan import Plan, check_resumable, start
from dcae_ext.encode.ranks import Ranks


@dataclass
class RunSummary:
    images: int               # encoded in this run, all ranks together
    skipped: int              # unreadable images met in this run
    shards: int               # shards written in this run
    seconds: float            # the slowest rank's encoding time
    total_images: int         # in the finished dataset (0 on ranks other than the main one)
    total_skipped: int
    resumed: bool

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def encode_dataset(codec: Codec, plan: Plan, sources: list[str], root: str, *, ranks: Ranks = Ranks(),
                   overwrite: bool = False, workers: int = 2, strict: bool = False, command: str = "",
                   on_start: Callable[[int], None] | None = None,
                   on_images: Callable[[int, EncodeStats], None] | None = None,
                   on_skip: Callable[[LoadFailure, int], None] | None = None) -> RunSummary:
    """Encode `sources` into `root` following `plan`, continuing an interrupted run of the same plan.
    `on_start(images_to_encode)` once this rank knows its work; the other callbacks: `encode_shards`."""
    lock, busy = None, None
    if ranks.is_main:  # one writer per folder: a second run (or --overwrite) there is refused
        try:
            lock = output_folder.acquire(root)
        except output_folder.FolderInUseError as error:
            busy = error
    if ranks.reduce(float(busy is not None), op="max")[0]:
        raise busy or output_folder.FolderInUseError(f"{root} is in use by another process")
    try:
        return _encode_locked(codec, plan, sources, root, ranks, overwrite, workers, strict, command, on_start,
                              on_images, on_skip)
    finally:
        output_folder.release(root, lock)


def _encode_locked(codec, plan, sources, root, ranks, overwrite, workers, strict, command, on_start, on_images,
                   on_skip) -> RunSummary:
    resumed = check_resumable(root, plan, overwrite)  # every rank reads before anyone writes
    ranks.barrier()
    if ranks.is_main:
        start(root, plan, sources, overwrite)
    ranks.barrier()
    done = completed_shards(root)
    todo = [s for s in plan.shards_of_rank(ranks.rank, ranks.world_size) if s not in done]
    if on_start:
        on_start(ShardBatches(plan, todo).num_images())
    stats = encode_shards(codec, plan, sources, root, todo, workers=workers, strict=strict, on_images=on_images,
                          on_skip=on_skip)
    images, skipped, shards = ranks.reduce(stats.images, stats.skipped, stats.shards)
    (seconds,) = ranks.reduce(stats.seconds, op="max")
    ranks.barrier()  # every shard is on disk
    total_images = total_skipped = 0
    if ranks.is_main:
        total_images, total_skipped = merge_index(root, plan.num_shards)
        metadata = dict(kind=plan.kind, model=plan.model, model_class=type(codec.model).__name__,
                        **codec.description(), stored_dtype=str(codec.stored_dtype).replace("torch.", ""),
                        num_images=total_images, num_skipped=total_skipped, num_shards=plan.num_shards,
                        plan=dataclasses.asdict(plan), command=command, world_size=ranks.world_size,
                        torch=torch.__version__, dcae_ext=dcae_ext.__version__)
        atomic_write(os.path.join(root, METADATA_FILE), json.dumps(metadata, indent=2))
    return RunSummary(int(images), int(skipped), int(shards), seconds, total_images, total_skipped, resumed)
