"""Argument checks of the public ops. Each error names the argument and shows the bad value."""
from __future__ import annotations

import math

import torch


def check_tensor(t, name: str, ndim: int | None = None, min_ndim: int | None = None) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"argument '{name}': expected a torch.Tensor, got {type(t).__name__}")
    if not t.dtype.is_floating_point:
        raise ValueError(f"argument '{name}': expected a floating-point tensor, got dtype {t.dtype}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"argument '{name}': expected a {ndim}-D tensor, got shape {tuple(t.shape)}")
    if min_ndim is not None and t.dim() < min_ndim:
        raise ValueError(f"argument '{name}': expected at least {min_ndim} dimensions, got shape {tuple(t.shape)}")


def check_same(first, first_name: str, other, other_name: str) -> None:
    if other.dtype != first.dtype:
        raise ValueError(f"argument '{other_name}': dtype {other.dtype} differs from '{first_name}' dtype {first.dtype}")
    if other.device != first.device:
        raise ValueError(f"argument '{other_name}': on {other.device} but '{first_name}' is on {first.device}")


def check_shape(t, name: str, expected: tuple) -> None:
    if tuple(t.shape) != tuple(expected):
        raise ValueError(f"argument '{name}': expected shape {tuple(expected)}, got {tuple(t.shape)}")


def check_positive_int(value, name: str, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"argument '{name}': expected an int >= {minimum}, got {value!r}")


def check_positive_float(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ValueError(f"argument '{name}': expected a finite number > 0, got {value!r}")
