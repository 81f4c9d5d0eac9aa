"""IBQ quantization built on `torch.nn.functional.scaled_dot_product_attention` (docs/ibq.md, "The
SDPA formulation"): what a user would write instead of a custom kernel, and the baseline the
compiled `ibq_quantize` is raced against.

    z_q = C[idx] + A - sg(A),   A = sdpa(z, C, sg(C), scale=1) = softmax(z C^T) C

The value is C[idx]; the gradient is the reference's straight-through one-hot: dz and dC through
softmax(z C^T) from the attention's backward, plus G scattered into the chosen rows from C[idx].
Attention kernels (flash, memory-efficient) never hold the N x K logits; the argmax runs over
chunks of codes so that it does not either. The entropy loss has no such formulation: it needs
sum_k p log p per row and the mean of p over rows, which no attention kernel returns.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from dcae_ext.ops import _library
from dcae_ext.ops._validate import check_int
from dcae_ext.ops.ibq import _check_python_arguments, _rows
from dcae_ext.ops.reference import accumulation_dtype

# Logits held at once by the chunked argmax: 256 MiB is 4096 codes of float32 logits at N = 16384.
CHUNK_BYTES = 256 * 2**20
_MM_OUT_DTYPE = hasattr(torch.ops.aten.mm, "dtype")  # torch.mm(..., out_dtype=): half inputs, float32 logits


def codes_per_chunk(rows: int, chunk_bytes: int, itemsize: int = 4) -> int:
    """How many codes' logits of `rows` rows fit in `chunk_bytes` (at least one)."""
    return max(1, chunk_bytes // max(1, rows * itemsize))


def _chunk_logits(rows: torch.Tensor, codes: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    """rows . codes^T in the accumulation dtype. `rows` is already in `acc` unless a CUDA GEMM can
    take the half-precision operands and write float32 (the same sums, no upcast copies)."""
    if rows.dtype != acc:
        return torch.mm(rows, codes.t(), out_dtype=acc)
    return rows @ codes.to(acc).t()


@torch.no_grad()
def chunked_argmax(rows: torch.Tensor, codebook: torch.Tensor, chunk_bytes: int = CHUNK_BYTES):
    """(idx, best): torch.argmax and max over k of rows . C_k, one chunk of codes at a time.

    The logits are in the accumulation dtype (float32; float64 for float64), as in the reference;
    under TF32 (torch.backends.cuda.matmul.fp32_precision "tf32") they are TF32's, as the
    reference's are, so near-ties may pick another code than the compiled op's exact argmax.
    Like torch.argmax: a NaN logit wins (the first NaN), then the largest, ties -> lowest index
    (an earlier chunk keeps a tie, and torch.max keeps the first within a chunk).
    """
    n, acc = rows.shape[0], accumulation_dtype(rows.dtype)
    half_gemm = rows.is_cuda and rows.dtype != acc and _MM_OUT_DTYPE
    rows = rows if half_gemm else rows.to(acc)
    best = torch.full((n,), -math.inf, dtype=acc, device=rows.device)
    idx = torch.zeros(n, dtype=torch.int64, device=rows.device)
    step = codes_per_chunk(n, chunk_bytes, torch.finfo(acc).bits // 8)
    for start in range(0, codebook.shape[0], step):
        chunk_best, chunk_idx = _chunk_logits(rows, codebook[start:start + step], acc).max(dim=1)
        better = (chunk_best > best) | (chunk_best.isnan() & ~best.isnan())
        best = torch.where(better, chunk_best, best)
        idx = torch.where(better, chunk_idx + start, idx)
    return idx, best


def _attention_inputs(rows: torch.Tensor, codebook: torch.Tensor):
    """(query, key, value) of the soft codes softmax(z C^T) C: one batch, one head, scale 1."""
    return rows[None, None], codebook[None, None], codebook.detach()[None, None]


def sdpa_backend(z: torch.Tensor, codebook: torch.Tensor) -> str | None:
    """The kernel scaled_dot_product_attention picks for ibq_quantize_sdpa's call on z (N, D)
    (FLASH_ATTENTION, EFFICIENT_ATTENTION, MATH, ...): the math one builds N x K tensors. None where
    torch cannot say."""
    try:
        from torch.nn.attention import SDPBackend

        choice = torch._fused_sdp_choice(*_attention_inputs(z, codebook), None, 0.0, False, scale=1.0)
        return SDPBackend(choice).name
    except (AttributeError, ImportError, RuntimeError, TypeError, ValueError):  # a private API
        return None


def ibq_quantize_sdpa(z: torch.Tensor, codebook: torch.Tensor, chunk_bytes: int = CHUNK_BYTES):
    """`ops.ibq_quantize` from scaled_dot_product_attention and a chunked argmax; no custom kernel.

    z (..., D), codebook (K, D) -> z_q (..., D) = codebook[idx], idx (...) int64 = argmax_k z . C_k
    (torch.argmax: a NaN logit wins, ties -> lowest k). The gradients equal the reference's. A row
    whose softmax is undefined (a NaN, +inf or only -inf logits) gets a NaN z_q, whatever the
    attention backend does with it. `chunk_bytes` bounds the logits the argmax holds at once.
    Memory is O((N + K) D + chunk_bytes) where SDPA picks a flash or memory-efficient kernel
    (CUDA: half precision for flash, float32 for memory-efficient); its math fallback builds
    N x K attention weights.
    """
    _check_python_arguments(z, codebook, 1.0, None)
    check_int(chunk_bytes, "chunk_bytes")
    if chunk_bytes < 1:
        raise ValueError(f"argument 'chunk_bytes': must be at least 1, got {chunk_bytes}")
    rows = _rows(z)
    _library.check_arguments("_check_ibq_args", rows, codebook, 1.0)

    idx, best = chunked_argmax(rows.detach(), codebook.detach(), chunk_bytes)
    if rows.shape[0]:
        soft = F.scaled_dot_product_attention(*_attention_inputs(rows, codebook), scale=1.0)[0, 0]
    else:  # no rows to attend from (empty launches are not every backend's case); keeps z in the graph
        soft = rows * 0
    z_q = codebook[idx] + (soft - soft.detach())
    z_q = z_q.masked_fill(~best.isfinite()[:, None], math.nan)
    return z_q.reshape(z.shape), idx.reshape(z.shape[:-1])
