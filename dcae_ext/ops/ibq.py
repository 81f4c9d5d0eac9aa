"""IBQ large-codebook quantization and the nearest-code search of every VQ tokenizer (docs/ibq.md).

The codes are ranked by a `metric`: "dot" (IBQ), "l2" (z . c - |c|^2/2) or "cosine". The compiled
op `dcae_ext::ibq_forward` streams codebook tiles (never an N x K tensor) and saves O((N + K) D) for
its backward op `dcae_ext::_ibq_backward`, which recomputes the logits tile by tile. One forward op serves the three public functions through its `quantize` / `entropy` flags,
so the combined call shares its passes and its backward forms one d(logits) for both losses.
Autocast: the ops run in z's dtype (no cast is inserted); codebook must match it. `gemm_dtype`
(bfloat16 / float16, float32 inputs) runs the GEMMs on rounded operands, with the index still
exact: a re-rank in float64 where the rounded logits cannot tell (docs/ibq.md); `exact_index` asks
for that index on every path. The forward hands its choice of GEMM operands to the backward (the
`gemm_plan` output, a small CPU tensor), which recomputes the same logits without deciding again.
With create_graph=True the backward is the reference's formula instead (float32 scores, the forward's
indices, an N x K softmax), so that its gradients can be differentiated again.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from dcae_ext.ops import _library, reference
from dcae_ext.ops._library import use_kernel
from dcae_ext.ops._validate import check_number, check_same_device, check_tensor


GEMM_PLAN_SIZE = 3  # entries of ibq_forward's gemm_plan (csrc/ibq/ibq_operands.h, kPlanSize)


def _rows(z):
    """z (..., D) as an (N, D) matrix; N is explicit because reshape(-1, 0) is ambiguous."""
    return z.reshape(math.prod(z.shape[:-1]), z.shape[-1])


def _run(z, codebook, temperature, quantize, entropy, codes_per_tile=0, gemm_dtype=None, metric="dot",
         exact_index=False):
    """The compiled forward on z flattened to (N, D); returns (z_q (..., D), idx (...), entropy)."""
    z_q, idx, ent, *_ = torch.ops.dcae_ext.ibq_forward(_rows(z), codebook, float(temperature), quantize, entropy,
                                                       codes_per_tile, gemm_dtype, metric, exact_index)
    return z_q.reshape(z.shape), idx.reshape(z.shape[:-1]), ent


def _check_python_arguments(z, codebook, temperature, gemm_dtype, metric="dot", exact_index=False) -> float:
    check_tensor(z, "z")
    check_tensor(codebook, "codebook")
    check_same_device(z, "z", codebook, "codebook")
    temperature = check_number(temperature, "temperature")
    if gemm_dtype is not None and not isinstance(gemm_dtype, torch.dtype):
        raise ValueError(f"argument 'gemm_dtype': expected None or a torch.dtype, got {gemm_dtype!r}")
    if not isinstance(metric, str) or metric not in reference.METRICS:
        raise ValueError(f"argument 'metric': expected 'dot', 'l2' or 'cosine', got {metric!r}")
    if not isinstance(exact_index, bool):
        raise ValueError(f"argument 'exact_index': expected a bool, got {exact_index!r}")
    if z.dim() == 0:
        raise ValueError("argument 'z': expected a tensor of shape (..., D), got a 0-d tensor")
    return temperature


def _forward(z, codebook, temperature, quantize, entropy, gemm_dtype, metric="dot", exact_index=False):
    """(z_q, idx, entropy) from the kernel, or from the reference after the kernel's checks (neither
    flag: idx alone). The reference computes in float32 whatever gemm_dtype says (float64 with
    exact_index): the exact answer."""
    temperature = _check_python_arguments(z, codebook, temperature, gemm_dtype, metric, exact_index)
    if use_kernel("ibq_forward", z):
        _library.check_meta_arguments("_check_ibq_args", z, _rows(z), codebook, temperature, gemm_dtype, metric)
        return _run(z, codebook, temperature, quantize, entropy, gemm_dtype=gemm_dtype, metric=metric,
                    exact_index=exact_index)
    _library.check_arguments("_check_ibq_args", _rows(z), codebook, temperature, gemm_dtype, metric)
    z_q, idx = reference.ibq_quantize(z, codebook, metric, exact_index) if quantize else (None, None)
    if not quantize and not entropy:
        idx = reference.nearest_code(z, codebook, metric, exact_index=exact_index)
    return z_q, idx, reference.ibq_entropy_loss(z, codebook, temperature, metric) if entropy else None


def nearest_code(z: torch.Tensor, codebook: torch.Tensor, metric: str = "dot", *,
                 gemm_dtype: torch.dtype | None = None, exact_index: bool = False):
    """The nearest code of every row, without ever building the N x K scores; no gradient.

    z (..., D), codebook (K, D) -> idx (...) int64, the argmax over k of the metric's score
    (torch.argmax: a NaN wins, ties -> lowest k):
      "dot":    z . C_k                       (IBQ)
      "l2":     z . C_k - |C_k|^2 / 2         (= argmin_k |z - C_k|: VQGAN, VQ-VAE)
      "cosine": z . C_k / max(|C_k|, 1e-12)   (= cosine similarity: LlamaGen, ViT-VQGAN)
    Which index each path returns (docs/ibq.md, "One index on every path"): float32 (and half)
    inputs give the argmax of the float32 scores; gemm_dtype (torch.bfloat16 / torch.float16,
    float32 inputs: rounded GEMM operands, tensor cores on CUDA) and exact_index=True give the
    argmax of the exact scores (float64, ties -> lowest k), the same on every device and dtype
    path for the same input values.
    """
    with torch.no_grad():
        return _forward(z, codebook, 1.0, False, False, gemm_dtype, metric, exact_index)[1]


def ibq_nearest_code(z: torch.Tensor, codebook: torch.Tensor, *, gemm_dtype: torch.dtype | None = None,
                     exact_index: bool = False):
    """idx (...) int64 of `ibq_quantize` alone: `nearest_code` with the "dot" metric, for tokenizing."""
    return nearest_code(z, codebook, "dot", gemm_dtype=gemm_dtype, exact_index=exact_index)


def ibq_quantize(z: torch.Tensor, codebook: torch.Tensor, *, metric: str = "dot",
                 gemm_dtype: torch.dtype | None = None, exact_index: bool = False):
    """Nearest code with IBQ's straight-through one-hot gradient.

    z (..., D), codebook (K, D) -> z_q (..., D) = codebook[idx] exactly, idx (...) int64 =
    `nearest_code(z, codebook, metric)` (same ties, NaN policy, gemm_dtype and exact_index).
    Backward: d z_q flows to z and to every code through softmax(scores) (the metric's score,
    the norm terms included), plus straight into the chosen rows of the codebook. A row whose
    softmax is undefined (a NaN or +inf score) gets a NaN z_q. gemm_dtype (torch.bfloat16 /
    torch.float16, float32 inputs): the GEMMs round their operands to it (tensor cores on CUDA);
    idx stays exact, the softmax and gradients use those scores.
    """
    z_q, idx, _ = _forward(z, codebook, 1.0, True, False, gemm_dtype, metric, exact_index)
    return z_q, idx


def ibq_entropy_loss(z: torch.Tensor, codebook: torch.Tensor, temperature: float = 0.01, *, metric: str = "dot",
                     gemm_dtype: torch.dtype | None = None):
    """Codebook-utilisation loss: mean_n H(p_n) - H_eps(mean_n p_n), p = softmax(scores / T).

    z (..., D), codebook (K, D) -> scalar in z's dtype; H(p) = -sum p log p (exact),
    H_eps(pbar) = -sum pbar log(pbar + 1e-5), as the official IBQ code computes them.
    metric, gemm_dtype: as in `ibq_quantize`.
    """
    return _forward(z, codebook, temperature, False, True, gemm_dtype, metric)[2]


def ibq_quantize_with_entropy(z: torch.Tensor, codebook: torch.Tensor, temperature: float = 0.01, *,
                              metric: str = "dot", gemm_dtype: torch.dtype | None = None,
                              exact_index: bool = False):
    """(z_q, idx, entropy) of `ibq_quantize` and `ibq_entropy_loss` from shared passes."""
    return _forward(z, codebook, temperature, True, True, gemm_dtype, metric, exact_index)


if _library.has_ops("ibq_forward", "_ibq_backward"):
    @torch.library.register_fake("dcae_ext::ibq_forward")
    def _forward_fake(z, codebook, temperature, quantize, entropy, codes_per_tile=0, gemm_dtype=None, metric="dot",
                      exact_index=False):
        n, d = z.shape
        acc = reference.accumulation_dtype(z.dtype)
        return (z.new_empty((n, d)), z.new_empty((n,), dtype=torch.int64), z.new_empty(()),
                z.new_empty((n, 4), dtype=acc), z.new_empty((n if quantize else 0, d), dtype=acc),
                z.new_empty((codebook.shape[0] if entropy else 0,), dtype=acc),
                torch.empty((GEMM_PLAN_SIZE,), dtype=torch.int64, device="cpu"))

    @torch.library.register_fake("dcae_ext::_ibq_backward")
    def _backward_fake(grad_z_q, grad_entropy, z, codebook, idx, row_stats, soft_codes, code_coef, gemm_plan,
                       temperature, codes_per_tile=0, metric="dot"):
        return (torch.empty_like(z, memory_format=torch.contiguous_format),
                torch.empty_like(codebook, memory_format=torch.contiguous_format))

    def _setup_context(ctx, inputs, output):
        z, codebook, temperature, quantize, entropy, codes_per_tile, gemm_dtype, metric, exact_index = inputs
        _, idx, _, row_stats, soft_codes, code_coef, gemm_plan = output
        ctx.save_for_backward(z, codebook, idx, row_stats, soft_codes, code_coef, gemm_plan)
        ctx.temperature, ctx.quantize, ctx.entropy = temperature, quantize, entropy
        ctx.codes_per_tile, ctx.metric = codes_per_tile, metric

    def _backward(ctx, grad_z_q, grad_idx, grad_entropy, grad_row_stats, grad_soft_codes, grad_code_coef,
                  grad_gemm_plan):
        z, codebook, idx, row_stats, soft_codes, code_coef, gemm_plan = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: the kernel's gradients would have no graph
            return (*_differentiable_backward(ctx, z, codebook, idx, grad_z_q, grad_entropy), *[None] * 7)
        # the forward's GEMM operands (gemm_plan), not a new decision from flags or data
        grad_z, grad_codebook = torch.ops.dcae_ext._ibq_backward(
            grad_z_q if ctx.quantize else None, grad_entropy if ctx.entropy else None, z, codebook, idx,
            row_stats, soft_codes, code_coef, gemm_plan, ctx.temperature, ctx.codes_per_tile, ctx.metric)
        return grad_z, grad_codebook, None, None, None, None, None, None, None

    def _differentiable_backward(ctx, z, codebook, idx, grad_z_q, grad_entropy):
        """The reference's gradients (float32 scores, the forward's indices), differentiable again."""
        outputs, grads = [], []
        if ctx.quantize:
            soft = reference.ibq_logits(z, codebook, ctx.metric).softmax(dim=-1)
            hard = F.one_hot(idx, codebook.shape[0]).to(soft.dtype)
            outputs.append(((hard - soft.detach() + soft) @ codebook.to(soft.dtype)).to(z.dtype))
            grads.append(grad_z_q)
        if ctx.entropy:
            outputs.append(reference.ibq_entropy_loss(z, codebook, ctx.temperature, ctx.metric))
            grads.append(grad_entropy)
        wanted = [t for t, needed in zip((z, codebook), ctx.needs_input_grad) if needed]
        found = iter(torch.autograd.grad(outputs, wanted, grads, create_graph=True, allow_unused=True))
        return tuple(_zero_if_none(next(found), t) if needed else None
                     for t, needed in zip((z, codebook), ctx.needs_input_grad))

    def _zero_if_none(grad, like):
        return torch.zeros_like(like) if grad is None else grad

    torch.library.register_autograd("dcae_ext::ibq_forward", _backward, setup_context=_setup_context)
    _library.mark_registered("ibq_forward", "_ibq_backward")
