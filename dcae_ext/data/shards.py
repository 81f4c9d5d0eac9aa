"""The on-disk layout of an encoded dataset (`dcae-ext encode` / `tokenize`) and its atomic writes.

    OUT/plan.json              the settings that decide the bits, written once when a run starts
    OUT/sources.txt            the image list, one path a line (shard i holds images i*S ... i*S+S-1)
    OUT/shards/000003.safetensors   one tensor per readable image, keyed by its offset in the shard
                                    ("0" ... "S-1"); metadata: the scaling factor (latents) or the
                                    number of codes (tokens)
    OUT/shards/000003.json     the shard's index records and skipped images; its presence marks the
                               shard complete (written after the safetensors file, both atomically)
    OUT/index.jsonl            every shard's records in list order: path, shape, shard, offset, size
    OUT/skipped.jsonl          the unreadable images: path, reason
    OUT/metadata.json          model, scaling factor, dtype, counts, the command line

A shard's content depends only on the plan and the images, never on the number of processes or
on interruptions, so a resumed or a multi-process run writes the same bytes as a single one.
"""
from __future__ import annotations

import json
import os

import torch

PLAN_FILE = "plan.json"
SOURCES_FILE = "sources.txt"
SHARD_DIR = "shards"
INDEX_FILE = "index.jsonl"
SKIPPED_FILE = "skipped.jsonl"
METADATA_FILE = "metadata.json"


def atomic_write(path: str, data: bytes | str) -> None:
    """`data` into `path` through the package's one atomic writer: a reader, or a run killed at any
    instant, sees the old file or the complete new one, never part of one."""
    from dcae_ext.files import atomic_write as write_atomically

    def write(tmp: str) -> None:
        with open(tmp, "wb") as stream:
            stream.write(data.encode() if isinstance(data, str) else data)

    write_atomically(path, write)


def remove_stale_temporaries(root: str) -> None:
    """Temporary files of writes that a killed run left behind (main rank, before the others write)."""
    from dcae_ext.files import remove_stale_temporaries as remove

    for folder in (root, os.path.join(root, SHARD_DIR)):
        remove(folder)


def shard_file(number: int) -> str:
    """Path of shard `number`'s tensors, relative to the output folder."""
    return f"{SHARD_DIR}/{number:06d}.safetensors"


def marker_file(number: int) -> str:
    return f"{SHARD_DIR}/{number:06d}.json"


def write_shard(root: str, number: int, tensors: dict[str, torch.Tensor], metadata: dict[str, str],
                records: list[dict], skipped: list[dict]) -> None:
    """The shard's tensors, then its marker: once the marker exists the shard is complete."""
    from safetensors.torch import save

    if len(metadata) > 1:  # safetensors writes metadata in hash order: more than one key is not reproducible
        raise ValueError(f"argument 'metadata': at most one key for byte-identical shards, got {sorted(metadata)}")
    atomic_write(os.path.join(root, shard_file(number)), save(tensors, metadata=metadata or None))
    marker = {"shard": number, "records": records, "skipped": skipped}
    atomic_write(os.path.join(root, marker_file(number)), json.dumps(marker))


def completed_shards(root: str) -> set[int]:
    folder = os.path.join(root, SHARD_DIR)
    if not os.path.isdir(folder):
        return set()
    return {int(name[:-5]) for name in os.listdir(folder) if name.endswith(".json") and name[:-5].isdigit()}


def read_marker(root: str, number: int) -> dict:
    with open(os.path.join(root, marker_file(number))) as stream:
        return json.load(stream)


def merge_index(root: str, num_shards: int) -> tuple[int, int]:
    """index.jsonl and skipped.jsonl from every shard's marker, in list order; (images, skipped)."""
    missing = sorted(set(range(num_shards)) - completed_shards(root))
    if missing:
        raise RuntimeError(f"cannot merge the index of {root}: shards {missing[:5]}{'...' if len(missing) > 5 else ''} "
                           "are not complete")
    records, skipped = [], []
    for number in range(num_shards):
        marker = read_marker(root, number)
        records += marker["records"]
        skipped += marker["skipped"]
    atomic_write(os.path.join(root, INDEX_FILE), "".join(json.dumps(r) + "\n" for r in records))
    atomic_write(os.path.join(root, SKIPPED_FILE), "".join(json.dumps(s) + "\n" for s in skipped))
    return len(records), len(skipped)


def read_json(root: str, name: str) -> dict | None:
    path = os.path.join(root, name)
    if not os.path.isfile(path):
        return None
    with open(path) as stream:
        return json.load(stream)


def read_index(root: str) -> list[dict]:
    path = os.path.join(root, INDEX_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"argument 'root': {root} has no {INDEX_FILE} (not an encoded dataset, or the "
                                "run has not finished: run the same encode command again to complete it)")
    with open(path) as stream:
        return [json.loads(line) for line in stream if line.strip()]
