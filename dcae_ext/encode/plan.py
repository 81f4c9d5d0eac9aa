"""An encoding run's plan: the settings that decide the output bits and the image list, fixed when
the run starts (plan.json + sources.txt) so that a resumed run, or another rank, does exactly the
same work; and the split of the list into shards and of the shards between ranks."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass

import torch

from dcae_ext import output_folder
from dcae_ext.data.shards import (INDEX_FILE, METADATA_FILE, PLAN_FILE, SHARD_DIR, SKIPPED_FILE, SOURCES_FILE,
                                  atomic_write, completed_shards, read_json, remove_stale_temporaries)
from dcae_ext.files import stale_temporaries

PLAN_VERSION = 1
OUTPUTS = (PLAN_FILE, SOURCES_FILE, SHARD_DIR, INDEX_FILE, SKIPPED_FILE, METADATA_FILE)  # what a run writes


class PlanMismatch(ValueError):
    """The output folder holds a run with other settings."""


@dataclass(frozen=True)
class Plan:
    kind: str                 # "latents" | "tokens"
    model: str                # as given on the command line
    resolution: int | None    # None: each image at its own size (padded to the model's factor)
    dtype: str                # fp32 | bf16 | fp16
    tile: int | None
    shard_size: int
    batch_size: int
    num_sources: int
    sources_sha256: str
    latent_channels: int | None = None  # the first c channels of a structured latent; None: all (and tokens)
    weights_sha256: str | None = None   # the model's weights (None: a plan written before they were recorded)
    version: int = PLAN_VERSION

    @property
    def num_shards(self) -> int:
        return -(-self.num_sources // self.shard_size)

    def shard_range(self, number: int) -> range:
        return range(number * self.shard_size, min((number + 1) * self.shard_size, self.num_sources))

    def shards_of_rank(self, rank: int, world_size: int) -> list[int]:
        """Round robin: neighbouring shards (similar images in a sorted folder) go to different ranks."""
        return list(range(rank, self.num_shards, world_size))

    def differences(self, other: "Plan") -> list[str]:
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) != getattr(other, f.name)]


def sources_digest(sources: list[str]) -> str:
    return hashlib.sha256("\n".join(sources).encode()).hexdigest()


def weights_digest(model) -> str:
    """SHA-256 of a model's weights (names, dtypes, shapes, bytes): the same path may hold other
    weights when an interrupted run is continued, and their codes must not join the earlier ones."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def make_plan(kind: str, model: str, sources: list[str], resolution: int | None, dtype: str, tile: int | None,
              shard_size: int, batch_size: int, latent_channels: int | None = None,
              weights_sha256: str | None = None) -> Plan:
    for name, value in (("shard_size", shard_size), ("batch_size", batch_size)):
        if value < 1:
            raise ValueError(f"argument '{name}': expected >= 1, got {value}")
    if not sources:
        raise ValueError("argument 'sources': no images to encode")
    return Plan(kind, model, resolution, dtype, tile, shard_size, batch_size, len(sources), sources_digest(sources),
                latent_channels=latent_channels, weights_sha256=weights_sha256)


def _is_unrecorded_run(root: str) -> bool:
    """An encoding run written before runs recorded their outputs: a plan and no record."""
    return (os.path.isfile(os.path.join(root, PLAN_FILE))
            and not os.path.isfile(os.path.join(root, output_folder.RECORD_FILE)))


def existing_plan(root: str) -> Plan | None:
    values = read_json(root, PLAN_FILE)
    return None if values is None else Plan(**values)


def check_resumable(root: str, plan: Plan, overwrite: bool = False) -> bool:
    """True when `root` holds a run of this plan (continue it); False when there is nothing there, or
    when overwriting. PlanMismatch when it holds another run or other files, or (overwriting) holds,
    under a name a run writes, something no run wrote."""
    foreign = output_folder.foreign_names(root, OUTPUTS, adopt=_is_unrecorded_run(root))
    if overwrite:
        if foreign:
            raise PlanMismatch(f"{root} holds {', '.join(foreign)}, which no dcae-ext run wrote; --overwrite deletes "
                               "only what a run wrote, and a new run would write there: move them, or choose another "
                               "folder")
        return False
    existing = existing_plan(root)
    if existing is None:
        # a run killed before its plan was written leaves at most the list and an empty shards folder
        leftovers = {SOURCES_FILE, SHARD_DIR, *output_folder.BOOKKEEPING} | \
            {os.path.basename(path) for path in stale_temporaries(root)}
        others = sorted(set(os.listdir(root)) - leftovers) if os.path.isdir(root) else []
        if others or foreign or completed_shards(root):
            shown = sorted(set(foreign) | {name + ("/" if os.path.isdir(os.path.join(root, name)) else "")
                                           for name in others})
            found = ", ".join(shown[:5]) + (", ..." if len(shown) > 5 else "") or f"complete shards in {SHARD_DIR}/"
            raise PlanMismatch(f"{root} is not empty ({found}) and holds no encoding run ({PLAN_FILE}): choose an "
                               "empty or new folder")
        return False
    if existing.weights_sha256 is None:  # started by a version that did not record the weights
        plan = dataclasses.replace(plan, weights_sha256=None)
    changed = existing.differences(plan)
    if changed:
        details = [f"{name} {_shown(name, getattr(existing, name))} -> {_shown(name, getattr(plan, name))}"
                   for name in changed if name not in ("num_sources", "sources_sha256", "weights_sha256")]
        if "weights_sha256" in changed:
            details.append(f"the weights of {plan.model} changed since the run started")
        if "sources_sha256" in changed:
            details.append(f"the image list changed ({existing.num_sources} -> {plan.num_sources} images; the run "
                           f"started with {os.path.join(root, SOURCES_FILE)})")
        detail = ", ".join(details)
        raise PlanMismatch(f"{root} holds a run with other settings ({detail}); run it with its own settings to "
                           "complete it, or pass --overwrite to start afresh")
    return True


def _shown(name: str, value) -> str:
    """A plan setting as a mismatch message shows it (latent_channels None is every channel)."""
    return "all" if name == "latent_channels" and value is None else repr(value)


def start(root: str, plan: Plan, sources: list[str], overwrite: bool) -> None:
    """Prepare `root` for `plan` (main rank only): clear it when overwriting, write the plan and the
    list when new, drop the temporaries a killed run left."""
    # check_resumable found every one of these names that exists to be a run's
    output_folder.record_names(root, [name for name in OUTPUTS if os.path.lexists(os.path.join(root, name))])
    if overwrite:
        output_folder.remove_recorded(root, OUTPUTS)
    output_folder.record_names(root, OUTPUTS)  # before anything is written under them
    os.makedirs(os.path.join(root, SHARD_DIR), exist_ok=True)
    remove_stale_temporaries(root)
    if existing_plan(root) is None:
        atomic_write(os.path.join(root, SOURCES_FILE), "".join(path + "\n" for path in sources))
        # the plan last: its presence says the folder is an encoding run
        atomic_write(os.path.join(root, PLAN_FILE), json.dumps(dataclasses.asdict(plan), indent=2))
