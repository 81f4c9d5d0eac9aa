"""The standard VQ step (VQ-VAE, VQGAN) as one call on the compiled nearest-code search (docs/vq.md).

No N x K tensor anywhere: the search is `nearest_code` (codebook tiles streamed by the compiled
op), z_q gathers the chosen rows, the losses are elementwise on (N, D), and the EMA statistics are
scatter sums over the indices (index_add_), not a one-hot matrix times z.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from dcae_ext.ops import _library, ibq, reference
from dcae_ext.ops._validate import check_int, check_number, check_same_device, check_tensor
from dcae_ext.ops.ibq import nearest_code


class VQOutput(NamedTuple):
    """What `vq_quantize` returns. counts / sums are None unless ema_statistics=True."""
    z_q: torch.Tensor              # (..., D) = codebook[indices] in value; d z_q flows to z unchanged
    indices: torch.Tensor          # (...) int64
    codebook_loss: torch.Tensor    # mean |codebook[indices] - sg(z)|^2: trains the codes
    commitment_loss: torch.Tensor  # commitment_weight * mean |z - sg(codebook[indices])|^2: trains the encoder
    counts: torch.Tensor | None    # (K,) rows assigned to each code
    sums: torch.Tensor | None      # (K, D) sum of the rows of z assigned to each code

    @property
    def loss(self) -> torch.Tensor:
        """codebook_loss + commitment_loss: VQ-VAE's quantizer loss."""
        return self.codebook_loss + self.commitment_loss


def vq_quantize(z: torch.Tensor, codebook: torch.Tensor, *, metric: str = "l2", commitment_weight: float = 0.25,
                ema_statistics: bool = False, gemm_dtype: torch.dtype | None = None,
                exact_index: bool = False) -> VQOutput:
    """One VQ step: nearest code, straight-through z_q, codebook and commitment losses, EMA statistics.

    z (..., D), codebook (K, D) of the same dtype -> VQOutput:
      indices = nearest_code(z, codebook, metric) (ties -> lowest code; gemm_dtype / exact_index as
                there: exact_index=True gives the float64 argmax, the same on every path)
      z_q     = codebook[indices] exactly; its gradient goes to z as it is (straight-through), none
                to the codebook
      codebook_loss   = mean over all elements of (codebook[indices] - sg(z))^2
      commitment_loss = commitment_weight * mean of (z - sg(codebook[indices]))^2
      counts[k] = #{n: indices_n = k}, sums[k] = sum of those rows of z (no gradient; float32 for half
      inputs), with ema_statistics=True: an EMA codebook update is then
      N_k <- decay N_k + (1 - decay) counts_k, m_k <- decay m_k + (1 - decay) sums_k, C_k = m_k / N_k.
    The losses are in z's dtype (computed in float32 for half inputs) and are zero for empty z.
    The metric only ranks the codes: z_q and the losses use z and the codebook as given (for a
    cosine codebook, l2-normalise both first; "dot" then equals "cosine").
    """
    commitment_weight = check_number(commitment_weight, "commitment_weight")
    if not 0 <= commitment_weight < math.inf:
        raise ValueError(f"argument 'commitment_weight': expected a finite number >= 0, got {commitment_weight}")
    if not isinstance(ema_statistics, bool):
        raise ValueError(f"argument 'ema_statistics': expected a bool, got {ema_statistics!r}")
    if _library.reference_mode():
        _check_search_arguments(z, codebook, gemm_dtype, metric, exact_index)
        return VQOutput(*reference.vq_quantize(z, codebook, metric, commitment_weight, ema_statistics,
                                               gemm_dtype=gemm_dtype, exact_index=exact_index))
    indices = nearest_code(z, codebook, metric, gemm_dtype=gemm_dtype, exact_index=exact_index)  # checks the rest
    codes = F.embedding(indices, codebook)  # (..., D); backward: a scatter-add into the chosen rows
    z_q = codes.detach() + (z - z.detach())  # = codes exactly (for finite z), gradient -> z
    codebook_loss = _mean_square(codes, z.detach())
    commitment_loss = _mean_square(z, codes.detach()) * commitment_weight
    counts = sums = None
    if ema_statistics:
        counts, sums = _code_statistics(z, indices, codebook.shape[0])  # indices from the search: in range
    return VQOutput(z_q, indices, codebook_loss, commitment_loss, counts, sums)


def code_statistics(z: torch.Tensor, indices: torch.Tensor, num_codes: int):
    """(counts (K,), sums (K, D)) of the rows of z (..., D) by their code in indices (...): scatter
    sums over the N rows, O(K D) memory. In float32 for half inputs (float64 for float64).
    indices (int64 or int32, z's shape without D) must lie in 0..num_codes-1: checked, which reads
    them back once (a synchronisation on CUDA, where an index out of range would end the process);
    not under torch.compile, where reading them back would break the graph."""
    _check_statistics_arguments(z, indices, num_codes)
    return _code_statistics(z, indices, num_codes)


def _code_statistics(z: torch.Tensor, indices: torch.Tensor, num_codes: int):
    acc = reference.accumulation_dtype(z.dtype)
    rows = ibq._rows(z.detach()).to(acc)
    flat = indices.reshape(-1)
    counts = torch.zeros(num_codes, dtype=acc, device=z.device).index_add_(
        0, flat, torch.ones(flat.shape, dtype=acc, device=z.device))
    sums = torch.zeros(num_codes, z.shape[-1], dtype=acc, device=z.device).index_add_(0, flat, rows)
    return counts, sums


def _check_statistics_arguments(z, indices, num_codes) -> None:
    check_tensor(z, "z")
    check_tensor(indices, "indices")
    check_same_device(z, "z", indices, "indices")
    check_int(num_codes, "num_codes")
    if num_codes < 1:
        raise ValueError(f"argument 'num_codes': must be >= 1, got {num_codes}")
    if not z.is_floating_point():
        raise ValueError(f"argument 'z': expected a floating-point tensor, got {z.dtype}")
    if z.dim() == 0:
        raise ValueError("argument 'z': expected a tensor of shape (..., D), got a 0-d tensor")
    if indices.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"argument 'indices': expected an int64 or int32 tensor, got {indices.dtype}")
    if indices.shape != z.shape[:-1]:
        raise ValueError(f"argument 'indices': shape {list(indices.shape)} differs from z's {list(z.shape[:-1])} "
                         "(z's shape without its last dimension)")
    if indices.numel() and not indices.is_meta and not torch.compiler.is_compiling():
        low, high = (int(v) for v in torch.aminmax(indices))
        if low < 0 or high >= num_codes:
            raise ValueError(f"argument 'indices': values must lie in 0..{num_codes - 1}, got {low}..{high}")


def _check_search_arguments(z, codebook, gemm_dtype, metric, exact_index) -> None:
    """nearest_code's argument checks, for the reference path (which does not call it)."""
    ibq._check_python_arguments(z, codebook, 1.0, gemm_dtype, metric, exact_index)
    _library.check_arguments("_check_ibq_args", ibq._rows(z), codebook, 1.0, gemm_dtype, metric)


def _mean_square(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """mean (a - b)^2 in the accumulation dtype, returned in a's dtype; 0 (still in the graph) when empty."""
    if a.numel() == 0:
        return (a.sum() * 0).to(a.dtype)
    acc = reference.accumulation_dtype(a.dtype)
    return F.mse_loss(a.to(acc), b.to(acc)).to(a.dtype)
