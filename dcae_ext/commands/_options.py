"""Flags several commands share: the names of --dtype and the meaning of --device."""
from __future__ import annotations

import os
import re

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def visible_gpus() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def default_dtype(device: torch.device) -> str:
    """bf16 on a GPU, fp32 on a CPU."""
    return "bf16" if device.type == "cuda" else "fp32"


def device_problem(value: str, cuda_count: int | None = None) -> str | None:
    """What is wrong with a --device value (given `cuda_count` visible GPUs; default: ask torch), or None."""
    if not DEVICE.match(value):
        return f"--device {value}: not a device; use cpu, cuda or cuda:N (auto where the command offers it)"
    if value.startswith("cuda"):
        count = visible_gpus() if cuda_count is None else cuda_count
        if count == 0:
            return f"--device {value}: no CUDA GPU is visible; use --device cpu"
        index = int(value.partition(":")[2] or 0)
        if index >= count:
            return f"--device {value}: only {count} CUDA device(s) are visible"
    return None


def choose_device(value: str | None, local_rank: int | None = None, cuda_count: int | None = None) -> torch.device:
    """The device of --device `value`: cpu; cuda:N as given; cuda, auto or no value -> this process's GPU,
    cuda:LOCAL_RANK (`local_rank`, default: env LOCAL_RANK as torchrun sets it, else 0), when a GPU is
    visible (no value and auto fall back to cpu). SystemExit naming the flag for a bad value."""
    count = visible_gpus() if cuda_count is None else cuda_count
    if local_rank is None:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if value is None or value == "auto":
        value = "cuda" if count else "cpu"
    problem = device_problem(value, count)
    if problem:
        raise SystemExit(problem)
    if value == "cuda":
        if local_rank >= count:
            raise SystemExit(f"--device cuda: LOCAL_RANK {local_rank} but only {count} CUDA device(s) are visible")
        return torch.device("cuda", local_rank)
    return torch.device(value)


def select_device_type(value: str | None) -> str:
    """For commands whose work is placed by device type (bench): 'cpu' or 'cuda' for --device
    `value` as choose_device reads it, after making its GPU, cuda:N, the current CUDA device."""
    device = choose_device(value)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device.type


def output_folder_problem(flag: str, path: str) -> str | None:
    """What keeps `path` from being the output folder of flag `flag` (a file is there, or it cannot be
    created or written to), or None; checked before a command works, so that it does not fail at the end."""
    if os.path.exists(path) and not os.path.isdir(path):
        return f"{flag} {path}: is a file, expected a folder"
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        return f"{flag} {path}: {existing} is a file, so no folder can be made under it"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{flag} {path}: {existing} is not writable; choose a folder you can write to"
    return None
