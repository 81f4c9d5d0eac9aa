"""The math of every op, in plain PyTorch (derivations in docs/ibq.md, docs/linear_attention.md,
docs/shortcuts.md).

Same signatures as the public ops. These are what the kernels are tested against and
raced against; they favour clarity over speed and build every intermediate tensor.
Arguments are validated by the public ops, not here.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for every reduced-precision dtype, float64 for float64 (csrc/common/dispatch.h)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# --- DC-AE residual shortcuts (docs/shortcuts.md) ----------------------------------------------------------

def _space_to_channel(x: torch.Tensor, factor: int) -> torch.Tensor:
    """F.pixel_unshuffle spelled out: F.pixel_unshuffle returns an empty input unchanged (a wrong shape)."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // factor, factor, w // factor, factor)
    return x.permute(0, 1, 3, 5, 2, 4).reshape(b, c * factor * factor, h // factor, w // factor)


def _channel_to_space(x: torch.Tensor, factor: int) -> torch.Tensor:
    """F.pixel_shuffle spelled out, for the same reason."""
    b, c, h, w = x.shape
    x = x.reshape(b, c // (factor * factor), factor, factor, h, w)
    return x.permute(0, 1, 4, 2, 5, 3).reshape(b, c // (factor * factor), h * factor, w * factor)


def pixel_unshuffle_mean(x: torch.Tensor, factor: int, out_channels: int, residual: torch.Tensor | None = None):
    """x (B, C, H, W) -> (B, out_channels, H/r, W/r): space-to-channel, then mean over channel groups."""
    y = _space_to_channel(x, factor)
    b, c, h, w = y.shape
    y = y.reshape(b, out_channels, c // out_channels, h, w).mean(dim=2)
    return y if residual is None else residual + y


def pixel_shuffle_repeat(x: torch.Tensor, factor: int, out_channels: int, residual: torch.Tensor | None = None):
    """x (B, C, H, W) -> (B, out_channels, H*r, W*r): repeat channels, then channel-to-space."""
    repeats = out_channels * factor * factor // x.shape[1]
    y = _channel_to_space(x.repeat_interleave(repeats, dim=1), factor)
    return y if residual is None else residual + y


# --- IBQ and the nearest code (docs/ibq.md) ------------------------------------------------------

METRICS = ("dot", "l2", "cosine")


def ibq_logits(z: torch.Tensor, codebook: torch.Tensor, metric: str = "dot", dtype: torch.dtype | None = None):
    """(N, K) scores of the flattened rows against every code, in the accumulation dtype (or `dtype`).

    dot: z . c;  l2: z . c - |c|^2 / 2 (argmax = argmin |z - c|);  cosine: normalize(z) . normalize(c)
    (torch.nn.functional.normalize: x / max(|x|, 1e-12), both sides, as LlamaGen does).
    """
    acc = dtype or accumulation_dtype(z.dtype)
    rows, codes = z.reshape(-1, codebook.shape[1]).to(acc), codebook.to(acc)
    if metric == "cosine":
        rows, codes = F.normalize(rows, dim=-1), F.normalize(codes, dim=-1)
    scores = rows @ codes.t()
    if metric == "l2":
        scores = scores - 0.5 * codes.square().sum(dim=-1)
    return scores


def nearest_code(z: torch.Tensor, codebook: torch.Tensor, metric: str = "dot", *,
                 gemm_dtype: torch.dtype | None = None, exact_index: bool = False) -> torch.Tensor:
    """idx (...) int64 = argmax_k of the metric's score (torch.argmax: a NaN wins, ties -> lowest k).

    The scores are in the accumulation dtype (float32; float64 for float64), or in float64 with
    `exact_index`; gemm_dtype is accepted for the op's signature and ignored (float32 is exact).
    """
    dtype = torch.float64 if exact_index else None
    return ibq_logits(z, codebook, metric, dtype).argmax(dim=-1).reshape(z.shape[:-1])


def ibq_nearest_code(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """idx (...) int64 = argmax_k z . C_k (torch.argmax: a NaN logit wins, ties -> lowest k)."""
    return nearest_code(z, codebook, "dot")


def ibq_quantize(z: torch.Tensor, codebook: torch.Tensor, metric: str = "dot", exact_index: bool = False):
    """z (..., D), codebook (K, D) -> z_q (..., D), idx (...) int64.

    idx = argmax_k of the metric's score (torch.argmax: a NaN wins, ties -> lowest k; float64 scores
    with `exact_index`); z_q = onehot @ C with the straight-through one-hot `hard - sg(s) + s`,
    s = softmax(scores), so every code gets gradient, through the metric's score. A row whose
    softmax is undefined (a NaN or +inf score, every score -inf) gives NaN.
    """
    logits = ibq_logits(z, codebook, metric)
    idx = nearest_code(z, codebook, metric, exact_index=True).reshape(-1) if exact_index else logits.argmax(dim=-1)
    soft = logits.softmax(dim=-1)
    hard = F.one_hot(idx, codebook.shape[0]).to(soft.dtype)
    onehot = hard - soft.detach() + soft
    z_q = onehot @ codebook.to(soft.dtype)
    return z_q.reshape(z.shape).to(z.dtype), idx.reshape(z.shape[:-1])


def ibq_entropy_loss(z: torch.Tensor, codebook: torch.Tensor, temperature: float = 0.01, metric: str = "dot"):
    """mean_n H(p_n) - H_eps(mean_n p_n), p_n = softmax(scores_n / T): a scalar in z's dtype.

    H(p) = -sum p log p exactly (log p from log_softmax); H_eps(pbar) = -sum pbar log(pbar + 1e-5).
    """
    scaled = ibq_logits(z, codebook, metric) / temperature
    if scaled.shape[0] == 0:  # zero, but still connected to z and codebook for autograd
        return (scaled.sum() * 0).to(z.dtype)
    probs = scaled.softmax(dim=-1)
    row_entropy = -(probs * scaled.log_softmax(dim=-1)).sum(dim=-1)
    mean_probs = probs.mean(dim=0)
    mean_entropy = -(mean_probs * torch.log(mean_probs + 1e-5)).sum()
    return (row_entropy.mean() - mean_entropy).to(z.dtype)


def ibq_quantize_with_entropy(z: torch.Tensor, codebook: torch.Tensor, temperature: float = 0.01,
                              metric: str = "dot", exact_index: bool = False):
    z_q, idx = ibq_quantize(z, codebook, metric, exact_index)
    return z_q, idx, ibq_entropy_loss(z, codebook, temperature, metric)


# --- ReLU linear attention (docs/linear_attention.md) --------------------------------------------

def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float = 1e-15):
    """q, k, v (B, heads, d, N) -> out (B, heads, d, N).

    out_n = (sum_m v_m relu(k_m)^T) relu(q_n) / (relu(q_n) . sum_m relu(k_m) + eps),
    computed in float32 (float64 for float64) because half precision overflows.
    """
    dtype, acc = q.dtype, accumulation_dtype(q.dtype)
    q, k, v = F.relu(q.to(acc)), F.relu(k.to(acc)), v.to(acc)
    d, n = q.shape[-2], q.shape[-1]
    if n <= d:  # the quadratic form: cheaper when there are fewer tokens than dimensions
        attn = k.transpose(-1, -2) @ q  # (N keys, N queries)
        out = (v @ attn) / (attn.sum(dim=-2, keepdim=True) + eps)
    else:
        v_pad = F.pad(v, (0, 0, 0, 1), mode="constant", value=1.0)  # (d+1, N): last row of ones
        vk = v_pad @ k.transpose(-1, -2)  # (d+1, d)
        out = vk @ q  # (d+1, N)
        out = out[..., :-1, :] / (out[..., -1:, :] + eps)
    return out.to(dtype)


# --- the standard VQ step (docs/vq.md) -----------------------------------------------------------

def vq_quantize(z: torch.Tensor, codebook: torch.Tensor, metric: str = "l2", commitment_weight: float = 0.25,
                ema_statistics: bool = False, *, gemm_dtype: torch.dtype | None = None, exact_index: bool = False):
    """The textbook VQ step: (z_q, indices, codebook_loss, commitment_loss, counts, sums).

    indices: argmin of torch.cdist for "l2" (argmax of the score for "dot" / "cosine"; the float64
    argmax with exact_index); one_hot (N, K); codes = one_hot @ C; z_q = z + sg(codes - z);
    codebook_loss = mean (codes - sg z)^2, commitment_loss = w mean (z - sg codes)^2 (0 when z is
    empty); counts = one_hot.sum(0), sums = one_hot^T z (no gradient). gemm_dtype: ignored.
    """
    acc = accumulation_dtype(z.dtype)
    rows = z.reshape(-1, codebook.shape[1])
    if exact_index:
        idx = nearest_code(rows, codebook, metric, exact_index=True)
    elif metric == "l2":
        idx = torch.cdist(rows.to(acc), codebook.to(acc)).argmin(dim=-1) if rows.shape[0] else \
            torch.zeros(0, dtype=torch.int64, device=z.device)
    else:
        idx = ibq_logits(rows, codebook, metric).argmax(dim=-1)
    one_hot = F.one_hot(idx, codebook.shape[0]).to(acc)
    codes = (one_hot @ codebook.to(acc)).to(z.dtype)
    z_q = rows + (codes - rows).detach()
    if rows.numel():
        codebook_loss = F.mse_loss(codes.to(acc), rows.detach().to(acc)).to(z.dtype)
        commitment_loss = (F.mse_loss(rows.to(acc), codes.detach().to(acc)) * commitment_weight).to(z.dtype)
    else:
        codebook_loss = commitment_loss = (rows.sum() * 0 + codes.sum() * 0).to(z.dtype)
    counts = sums = None
    if ema_statistics:
        counts, sums = one_hot.sum(dim=0), one_hot.t() @ rows.detach().to(acc)
    return (z_q.reshape(z.shape), idx.reshape(z.shape[:-1]), codebook_loss, commitment_loss, counts, sums)
