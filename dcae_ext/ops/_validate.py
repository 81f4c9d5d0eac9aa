"""The argument checks the compiled ops cannot make; every other check (ranks, dtypes, sizes,
ranges) is the compiled op's own, in csrc/, and runs on the reference path too
(`_library.check_arguments`). Each error names the argument and shows the bad value.

What only Python can check: the Python types (the op schemas would raise a TypeError), and the
devices of the tensors (a meta tensor among them routes the call to the fake impl, which runs
no C++ check).
"""
from __future__ import annotations

import torch


def check_tensor(t, name: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"argument '{name}': expected a torch.Tensor, got {type(t).__name__}")


def check_same_device(first: torch.Tensor, first_name: str, other: torch.Tensor | None, other_name: str) -> None:
    if other is not None and other.device != first.device:
        raise ValueError(f"argument '{other_name}': is on {other.device} but {first_name} is on {first.device}")


def check_int(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"argument '{name}': expected an int, got {value!r}")


def check_number(value, name: str) -> float:
    """A Python number (not a bool), returned as a float for the op schema."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"argument '{name}': expected a number, got {value!r}")
    return float(value)

