"""IBQ large-codebook quantization (docs/ibq.md).

The compiled op `dcae_ext::ibq_forward` streams codebook tiles (never an N x K tensor) and saves
O((N + K) D) for its backward op `dcae_ext::_ibq_backward`, which recomputes the logits tile by
tile. One forward op serves the three public functions through its `quantize` / `entropy` flags,
so the combined call shares its passes and its backward forms one d(logits) for both losses.
Autocast: the ops run in z's dtype (no cast is inserted); codebook must match it. `gemm_dtype`
(bfloat16 / float16, float32 inputs) runs the GEMMs on rounded operands, with the index still
exact: a re-rank in float64 where the rounded logits cannot tell (docs/ibq.md).
"""
from __future__ import annotations

import math

import torch

from dcae_ext.ops import _library, reference
from dcae_ext.ops._library import use_kernel
from dcae_ext.ops._validate import check_number, check_same_device, check_tensor


def _rows(z):
    """z (..., D) as an (N, D) matrix; N is explicit because reshape(-1, 0) is ambiguous."""
    return z.reshape(math.prod(z.shape[:-1]), z.shape[-1])


def _run(z, codebook, temperature, quantize, entropy, codes_per_tile=0, gemm_dtype=None):
    """The compiled forward on z flattened to (N, D); returns (z_q (..., D), idx (...), entropy)."""
    z_q, idx, ent, *_ = torch.ops.dcae_ext.ibq_forward(_rows(z), codebook, float(temperature), quantize,
                                                       entropy, codes_per_tile, gemm_dtype)
    return z_q.reshape(z.shape), idx.reshape(z.shape[:-1]), ent


def _check_python_arguments(z, codebook, temperature, gemm_dtype) -> float:
    check_tensor(z, "z")
    check_tensor(codebook, "codebook")
    check_same_device(z, "z", codebook, "codebook")
    temperature = check_number(temperature, "temperature")
    if gemm_dtype is not None and not isinstance(gemm_dtype, torch.dtype):
        raise ValueError(f"argument 'gemm_dtype': expected None or a torch.dtype, got {gemm_dtype!r}")
    if z.dim() == 0:
        raise ValueError("argument 'z': expected a tensor of shape (..., D), got a 0-d tensor")
    return temperature


def _forward(z, codebook, temperature, quantize, entropy, gemm_dtype):
    """(z_q, idx, entropy) from the kernel, or from the reference after the kernel's checks (neither
    flag: idx alone). The reference computes in float32 whatever gemm_dtype says: the exact answer."""
    temperature = _check_python_arguments(z, codebook, temperature, gemm_dtype)
    if use_kernel("ibq_forward", z):
        return _run(z, codebook, temperature, quantize, entropy, gemm_dtype=gemm_dtype)
    _library.check_arguments("_check_ibq_args", _rows(z), codebook, temperature, gemm_dtype)
    z_q, idx = reference.ibq_quantize(z, codebook) if quantize else (None, None)
    if not quantize and not entropy:
        idx = reference.ibq_nearest_code(z, codebook)
    return z_q, idx, reference.ibq_entropy_loss(z, codebook, temperature) if entropy else None


def ibq_quantize(z: torch.Tensor, codebook: torch.Tensor, *, gemm_dtype: torch.dtype | None = None):
    """Nearest code by dot product, with IBQ's straight-through one-hot gradient.

    z (..., D), codebook (K, D) -> z_q (..., D) = codebook[idx] exactly, idx (...) int64 =
    argmax_k z . C_k (torch.argmax: a NaN logit wins, ties -> lowest k). Backward: d z_q flows to
    z and to every code through softmax(z . C), plus straight into the chosen rows of the
    codebook. A row whose softmax is undefined (a NaN or +inf logit) gets a NaN z_q.
    gemm_dtype (torch.bfloat16 / torch.float16, float32 inputs): the GEMMs round their operands
    to it (tensor cores on CUDA); idx stays exact, the softmax and gradients use those logits.
    """
    z_q, idx, _ = _forward(z, codebook, 1.0, True, False, gemm_dtype)
    return z_q, idx


def ibq_nearest_code(z: torch.Tensor, codebook: torch.Tensor, *, gemm_dtype: torch.dtype | None = None):
    """idx (...) int64 of `ibq_quantize` alone (argmax_k z . C_k, same ties and NaN policy, exact
    under gemm_dtype too), for tokenizing: one pass over the codebook, no z_q, no gradient."""
    with torch.no_grad():
        return _forward(z, codebook, 1.0, False, False, gemm_dtype)[1]


def ibq_entropy_loss(z: torch.Tensor, codebook: torch.Tensor, temperature: float = 0.01, *,
                     gemm_dtype: torch.dtype | None = None):
    """Codebook-utilisation loss: mean_n H(p_n) - H_eps(mean_n p_n), p = softmax(z . C / T).

    z (..., D), codebook (K, D) -> scalar in z's dtype; H(p) = -sum p log p (exact),
    H_eps(pbar) = -sum pbar log(pbar + 1e-5), as the official IBQ code computes them.
    gemm_dtype: as in `ibq_quantize`.
    """
    return _forward(z, codebook, temperature, False, True, gemm_dtype)[2]


def ibq_quantize_with_entropy(z: torch.Tensor, codebook: torch.Tensor, temperature: float = 0.01, *,
                              gemm_dtype: torch.dtype | None = None):
    """(z_q, idx, entropy) of `ibq_quantize` and `ibq_entropy_loss` from shared passes."""
    return _forward(z, codebook, temperature, True, True, gemm_dtype)


if _library.has_ops("ibq_forward", "_ibq_backward"):
    @torch.library.register_fake("dcae_ext::ibq_forward")
    def _forward_fake(z, codebook, temperature, quantize, entropy, codes_per_tile=0, gemm_dtype=None):
        n, d = z.shape
        acc = reference.accumulation_dtype(z.dtype)
        return (z.new_empty((n, d)), z.new_empty((n,), dtype=torch.int64), z.new_empty(()),
                z.new_empty((n, 4), dtype=acc), z.new_empty((n if quantize else 0, d), dtype=acc),
                z.new_empty((codebook.shape[0] if entropy else 0,), dtype=acc))

    @torch.library.register_fake("dcae_ext::_ibq_backward")
    def _backward_fake(grad_z_q, grad_entropy, z, codebook, idx, row_stats, soft_codes, code_coef,
                       temperature, codes_per_tile=0, gemm_dtype=None):
        return (torch.empty_like(z, memory_format=torch.contiguous_format),
                torch.empty_like(codebook, memory_format=torch.contiguous_format))

    def _setup_context(ctx, inputs, output):
        z, codebook, temperature, quantize, entropy, codes_per_tile, gemm_dtype = inputs
        _, idx, _, row_stats, soft_codes, code_coef = output
        ctx.save_for_backward(z, codebook, idx, row_stats, soft_codes, code_coef)
        ctx.temperature, ctx.quantize, ctx.entropy = temperature, quantize, entropy
        ctx.codes_per_tile, ctx.gemm_dtype = codes_per_tile, gemm_dtype

    def _backward(ctx, grad_z_q, grad_idx, grad_entropy, grad_row_stats, grad_soft_codes, grad_code_coef):
        z, codebook, idx, row_stats, soft_codes, code_coef = ctx.saved_tensors
        grad_z, grad_codebook = torch.ops.dcae_ext._ibq_backward(
            grad_z_q if ctx.quantize else None, grad_entropy if ctx.entropy else None, z, codebook, idx,
            row_stats, soft_codes, code_coef, ctx.temperature, ctx.codes_per_tile, ctx.gemm_dtype)
        return grad_z, grad_codebook, None, None, None, None, None

    torch.library.register_autograd("dcae_ext::ibq_forward", _backward, setup_context=_setup_context)
    _library.mark_registered("ibq_forward", "_ibq_backward")
