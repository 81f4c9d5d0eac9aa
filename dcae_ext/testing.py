"""Helpers for testing ops against their references (used by the test suite)."""
from __future__ import annotations

import importlib
import math
import os

import pytest
import torch

from dcae_ext.ops import _library

OP_MODULES = ("dcae_ext.ops.ibq", "dcae_ext.ops.linear_attention", "dcae_ext.ops.shortcuts")

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


def ibq_inputs(n, k, d, device, dtype, batch=(), scale=1.0, seed=0):
    """z (*batch, n, d) and a codebook (k, d) of standard normals (z times `scale`), drawn in
    float64 on the CPU so every device and dtype sees the same values."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn((*batch, n, d), generator=gen, dtype=torch.float64) * scale
    codebook = torch.randn((k, d), generator=gen, dtype=torch.float64)
    return z.to(device, dtype), codebook.to(device, dtype)


def ibq_poisoned_rows(device, dtype):
    """z rows whose logits hold NaN, +inf or only -inf, among ordinary rows (codebook finite)."""
    z, codebook = ibq_inputs(8, 20, 4, device, torch.float64)
    codebook[:, 0] = codebook[:, 0].abs() + 0.1
    z[1] = math.nan                                   # every logit NaN
    z[3] = torch.tensor([0.0, math.inf, 0.5, 0.5])    # +inf where codebook[:, 1] > 0, -inf elsewhere
    z[5] = torch.tensor([-math.inf, 0.0, 0.0, 0.0])   # every logit -inf
    return z.to(dtype), codebook.to(dtype)


def ibq_poisoned_codes(device, dtype):
    """A codebook whose codes give NaN and +inf logits to every row, in different tiles."""
    z, codebook = ibq_inputs(6, 20, 4, device, torch.float64)
    z = z.abs() + 0.1
    codebook[3] = math.inf    # +inf logit, tile 0 (tiles of 4)
    codebook[9] = math.nan    # NaN logit, tile 2: wins over the earlier +inf
    codebook[14] = math.nan   # a later NaN: loses to the first
    return z.to(dtype), codebook.to(dtype)


def assert_close_to_reference(actual: torch.Tensor, expected64: torch.Tensor, dtype: torch.dtype, scale: float = 1.0):
    tol = TOLERANCES[dtype]
    torch.testing.assert_close(actual.double().cpu(), expected64.cpu(), atol=tol["atol"] * scale,
                               rtol=tol["rtol"] * scale)


def codebook_grad_without_scatter(grad_codebook: torch.Tensor, idx: torch.Tensor,
                                  grad_z_q: torch.Tensor) -> torch.Tensor:
    """IBQ's d codebook (float64) minus G scattered into the chosen rows idx: the part that does not
    depend on idx, which may differ between implementations at near-ties."""
    flat = grad_z_q.reshape(-1, grad_codebook.shape[1]).to(grad_codebook.device, torch.float64)
    return grad_codebook.double().index_add(0, idx.reshape(-1), -flat)


def assert_compiled_step_matches_eager(step, *leaves: torch.Tensor) -> None:
    """`step(*leaves) -> (loss, other outputs...)` under torch.compile(fullgraph=True) gives the eager
    values and the eager gradients of every leaf."""
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    results = []
    for fn in (step, compiled):
        inputs = [leaf.clone().requires_grad_(True) for leaf in leaves]
        loss, *others = fn(*inputs)
        loss.backward()
        results.append((loss, *others, *(t.grad for t in inputs)))
    for got, want in zip(results[1], results[0]):
        torch.testing.assert_close(got, want)


def forbid_reference_fallback(monkeypatch) -> None:
    """Make every public op fail the test where it would quietly run its reference instead of
    its kernel (compiled library missing, op absent from it, no CUDA kernels). Reference mode
    switched on by the test itself still routes to the reference.

    CUDA tensors without CUDA kernels skip the test, unless DCAE_EXT_EXPECT_CUDA=1 (CI) says
    the kernels must exist: then they fail too.
    """
    kernel_available = _library.use_kernel

    def kernel_or_fail(op_name: str, tensor: torch.Tensor) -> bool:
        if _library.reference_mode():
            return False
        if kernel_available(op_name, tensor):
            return True
        device = tensor.device.type
        if device == "cuda" and _library.LOADED and not _library.WITH_CUDA \
                and os.environ.get("DCAE_EXT_EXPECT_CUDA") != "1":
            pytest.skip("dcae_ext was built without CUDA kernels (DCAE_EXT_EXPECT_CUDA=1 makes this a failure)")
        reason = _library.LOAD_ERROR or f"the compiled library has no {op_name} kernel for {device}"
        pytest.fail(f"{op_name} would run its reference, not its kernel: {reason}")

    for name in OP_MODULES:
        monkeypatch.setattr(importlib.import_module(name), "use_kernel", kernel_or_fail)
