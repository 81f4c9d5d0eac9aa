"""IBQ large-codebook quantisation (DESIGN.md 2.1).

Kernel pending (issue: fused IBQ quantizer): until it lands, the public ops validate and run
the reference, so models written against this API need no change when it does.
"""
from __future__ import annotations

import torch

from dcae_ext.ops import reference
from dcae_ext.ops._validate import check_positive_float, check_same, check_tensor


def _validate(z, codebook):
    check_tensor(z, "z", min_ndim=1)
    check_tensor(codebook, "codebook", ndim=2)
    check_same(z, "z", codebook, "codebook")
    if z.shape[-1] != codebook.shape[1]:
        raise ValueError(f"argument 'codebook': dimension {codebook.shape[1]} does not match z's last "
                         f"dimension {z.shape[-1]}")
    if codebook.shape[0] == 0:
        raise ValueError("argument 'codebook': needs at least one code")


def ibq_quantize(z: torch.Tensor, codebook: torch.Tensor):
    """z (..., D), codebook (K, D) -> (z_q (..., D), idx (...) int64)."""
    _validate(z, codebook)
    return reference.ibq_quantize(z, codebook)


def ibq_entropy_loss(z: torch.Tensor, codebook: torch.Tensor, temperature: float = 0.01):
    _validate(z, codebook)
    check_positive_float(temperature, "temperature")
    return reference.ibq_entropy_loss(z, codebook, temperature)


def ibq_quantize_with_entropy(z: torch.Tensor, codebook: torch.Tensor, temperature: float = 0.01):
    _validate(z, codebook)
    check_positive_float(temperature, "temperature")
    return reference.ibq_quantize_with_entropy(z, codebook, temperature)
