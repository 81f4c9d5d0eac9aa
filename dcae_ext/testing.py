"""Helpers for testing ops against their references (used by the test suite)."""
from __future__ import annotations

import pytest
import torch

DTYPES = [torch.float32, torch.float16, torch.bfloat16]

# Tolerances for a kernel result against the float64 reference cast to the dtype.
TOLERANCES = {
    torch.float64: dict(atol=1e-10, rtol=1e-10),
    torch.float32: dict(atol=1e-5, rtol=1e-5),
    torch.float16: dict(atol=2e-3, rtol=2e-3),
    torch.bfloat16: dict(atol=1.6e-2, rtol=1.6e-2),
}


def devices():
    """cpu, plus cuda as a parameter marked `cuda` (skipped when no GPU is visible)."""
    return ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def device_dtypes():
    params = [("cpu", torch.float64)] + [("cpu", d) for d in DTYPES]
    params += [pytest.param("cuda", d, marks=pytest.mark.cuda) for d in DTYPES]
    return params


def assert_close_to_reference(actual: torch.Tensor, expected64: torch.Tensor, dtype: torch.dtype, scale: float = 1.0):
    tol = TOLERANCES[dtype]
    torch.testing.assert_close(actual.double().cpu(), expected64.cpu(), atol=tol["atol"] * scale,
                               rtol=tol["rtol"] * scale)
