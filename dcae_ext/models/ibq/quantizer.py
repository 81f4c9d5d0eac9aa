"""IBQ: index-backpropagation quantizer (docs/ibq.md) around `dcae_ext.ops.ibq_quantize*`.

The nearest code is chosen by the plain dot product; the straight-through one-hot
`hard - sg(soft) + soft` lets every code receive gradient. The loss follows SEED-Voken:

    loss = mean((z_q - z)^2)                 z_q straight-through: gradient to z and all codes
         + mean((sg(C[idx]) - z)^2)          commitment: pulls the encoder to its code
         + beta * mean((C[idx] - sg(z))^2)   codebook: pulls the chosen code to the encoder
         + entropy_weight * entropy           mean per-row entropy - entropy of the mean (at T)

SEED-Voken's code puts beta on the codebook term (the default here); the IBQ paper's equation
puts it on the commitment term, as VQ-VAE does: `beta_on_codebook_term=False`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dcae_ext import ops


@dataclass
class QuantizerOutput:
    """quantized: like the input; indices: the input without its channel dim (int64);
    loss: total quantizer loss (scalar, entropy term weighted in); the rest: its terms and stats.
    usage: fraction of the codebook used by this batch; perplexity: exp(entropy of the code histogram)."""
    quantized: torch.Tensor
    indices: torch.Tensor
    loss: torch.Tensor
    codebook_loss: torch.Tensor
    commitment_loss: torch.Tensor
    entropy_loss: torch.Tensor
    usage: torch.Tensor
    perplexity: torch.Tensor


def code_statistics(indices: torch.Tensor, num_codes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(fraction of the codes that occur in `indices`, perplexity of their histogram)."""
    flat = indices.detach().reshape(-1)
    if flat.numel() == 0:
        zero = torch.zeros((), device=indices.device)
        return zero, zero
    return histogram_statistics(torch.bincount(flat, minlength=num_codes))


def histogram_statistics(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(fraction of the codes that occur, perplexity) of a code histogram `counts` (K,), not all zero."""
    counts = counts.float()
    usage = (counts > 0).float().mean()
    probs = counts / counts.sum()
    entropy = -(probs * torch.log(probs.clamp_min(1e-12))).sum()
    return usage, entropy.exp()


def search_gemm_dtype(device_type: str) -> torch.dtype | None:
    """The GEMM operand dtype of the code search: the autocast dtype (bf16 / fp16) on CUDA, where
    those operands run on tensor cores and the op keeps the index exact (docs/ibq.md); None
    (float32 operands) elsewhere: the CPU only emulates rounded operands, which is not faster."""
    if device_type != "cuda" or not torch.is_autocast_enabled(device_type):
        return None
    dtype = torch.get_autocast_dtype(device_type)
    return dtype if dtype in (torch.float16, torch.bfloat16) else None


class IBQuantizer(nn.Module):
    """z (B, D, H, W) (channels at `channel_dim`, 1 by default for 4-D) or (..., D) -> QuantizerOutput.

    The quantizer takes float32 tensors (float64 for float64 input; autocast is switched off
    inside), so the nearest code is exact: a plain bf16 search picks wrong codes among 2^18
    near-ties. Under CUDA autocast its GEMMs still use the autocast dtype (`search_gemm_dtype`):
    the op re-ranks in float64 the rows the rounding cannot decide.
    """

    def __init__(self, num_codes: int, dim: int, beta: float = 0.25, entropy_weight: float = 0.05,
                 entropy_temperature: float = 0.01, beta_on_codebook_term: bool = True, init_std: float = 1.0):
        super().__init__()
        if num_codes < 1:
            raise ValueError(f"argument 'num_codes': expected >= 1, got {num_codes}")
        if dim < 1:
            raise ValueError(f"argument 'dim': expected >= 1, got {dim}")
        if entropy_temperature <= 0:
            raise ValueError(f"argument 'entropy_temperature': expected > 0, got {entropy_temperature}")
        self.num_codes = num_codes
        self.dim = dim
        self.beta = float(beta)
        self.entropy_weight = float(entropy_weight)
        self.entropy_temperature = float(entropy_temperature)
        self.beta_on_codebook_term = bool(beta_on_codebook_term)
        if init_std <= 0:
            raise ValueError(f"argument 'init_std': expected > 0, got {init_std}")
        self.codebook = nn.Parameter(torch.randn(num_codes, dim) * init_std)

    def extra_repr(self) -> str:
        return (f"num_codes={self.num_codes}, dim={self.dim}, beta={self.beta}, "
                f"entropy_weight={self.entropy_weight}, entropy_temperature={self.entropy_temperature}, "
                f"beta_on_codebook_term={self.beta_on_codebook_term}")

    def _channel_dim(self, z: torch.Tensor, channel_dim: int | None) -> int:
        if channel_dim is None:
            channel_dim = 1 if z.dim() == 4 else -1
        channel_dim = channel_dim % z.dim()
        if z.shape[channel_dim] != self.dim:
            raise ValueError(f"argument 'z': expected {self.dim} channels at dim {channel_dim}, "
                             f"got shape {tuple(z.shape)}")
        return channel_dim

    def _search_inputs(self, z: torch.Tensor, channel_dim: int | None):
        """(channel_dim, rows (..., D), codebook, gemm_dtype) of a search: rows and codebook in
        float32 (float64 for float64 input); gemm_dtype from the autocast state at the call, for
        float32 only (the op takes no rounded GEMMs for float64)."""
        if not isinstance(z, torch.Tensor) or z.dim() < 1:
            raise ValueError(f"argument 'z': expected a tensor with a channel dimension, got {z!r:.80}")
        channel_dim = self._channel_dim(z, channel_dim)
        compute = torch.promote_types(z.dtype, torch.float32)
        gemm_dtype = search_gemm_dtype(z.device.type) if compute == torch.float32 else None
        return channel_dim, z.to(compute).movedim(channel_dim, -1), self.codebook.to(compute), gemm_dtype

    def forward(self, z: torch.Tensor, channel_dim: int | None = None) -> QuantizerOutput:
        channel_dim, rows, codebook, gemm_dtype = self._search_inputs(z, channel_dim)
        with torch.autocast(device_type=z.device.type, enabled=False):
            if self.entropy_weight != 0:
                z_q, indices, entropy = ops.ibq_quantize_with_entropy(rows, codebook, self.entropy_temperature,
                                                                      gemm_dtype=gemm_dtype)
            else:
                z_q, indices = ops.ibq_quantize(rows, codebook, gemm_dtype=gemm_dtype)
                entropy = rows.new_zeros(())
            hard = F.embedding(indices, codebook)
            straight_through = torch.mean((z_q - rows) ** 2)
            commitment = torch.mean((hard.detach() - rows) ** 2)
            codebook_term = torch.mean((hard - rows.detach()) ** 2)
            if self.beta_on_codebook_term:
                codebook_term = self.beta * codebook_term
            else:
                commitment = self.beta * commitment
            loss = straight_through + commitment + codebook_term + self.entropy_weight * entropy
            usage, perplexity = code_statistics(indices, self.num_codes)
        return QuantizerOutput(
            quantized=z_q.movedim(-1, channel_dim).to(z.dtype), indices=indices, loss=loss,
            codebook_loss=codebook_term, commitment_loss=commitment, entropy_loss=entropy,
            usage=usage, perplexity=perplexity)

    def nearest(self, z: torch.Tensor, channel_dim: int | None = None, exact_index: bool = True) -> torch.Tensor:
        """The indices of `forward(z)` alone (one pass over the codebook, no losses, no gradient):
        what tokenizing needs. exact_index (the default): the float64 argmax, the same on CPU and
        CUDA, in float32 and under autocast (docs/ibq.md, "One index on every path"); forward's
        float32 indices agree with it wherever float32 tells the top codes apart."""
        _, rows, codebook, gemm_dtype = self._search_inputs(z, channel_dim)
        with torch.autocast(device_type=z.device.type, enabled=False):
            return ops.ibq_nearest_code(rows, codebook, gemm_dtype=gemm_dtype, exact_index=exact_index)

    def lookup(self, indices: torch.Tensor, channel_dim: int | None = None) -> torch.Tensor:
        """indices (B, H, W) -> codes (B, D, H, W) (channel_dim 1 for 3-D indices), else (..., D)."""
        if indices.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"argument 'indices': expected an integer tensor, got dtype {indices.dtype}")
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.num_codes):
            raise ValueError(f"argument 'indices': values must lie in [0, {self.num_codes}), got "
                             f"[{int(indices.min())}, {int(indices.max())}]")
        codes = F.embedding(indices.long(), self.codebook)
        if channel_dim is None:
            channel_dim = 1 if indices.dim() == 3 else -1
        return codes.movedim(-1, channel_dim)
