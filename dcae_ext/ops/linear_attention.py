"""ReLU linear attention of the EfficientViT blocks (docs/linear_attention.md).

`linear_attention(q, k, v)` runs the fused kernels: forward one pass over the tokens for the
(d+1) x d state [sum_m v_m relu(k_m)^T; sum_m relu(k_m)], one pass for the output; backward
its own registered op (`dcae_ext::_linear_attention_backward`); with create_graph=True the backward
is the reference's, so that it can be differentiated again. Autograd saves only q, k, v:
the backward recomputes the state (one extra read of k, v) and never needs `out`, so training
keeps no extra activation. Any strides work without a copy, in particular q, k, v sliced out of
one interleaved qkv tensor (B, heads, 3d, N).
Autocast: the op runs in q's dtype (no cast is inserted); k and v must match it.
"""
from __future__ import annotations

import torch

from dcae_ext.ops import _library, reference
from dcae_ext.ops._library import use_kernel
from dcae_ext.ops._validate import check_number, check_same_device, check_tensor


def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float = 1e-15) -> torch.Tensor:
    """q, k, v (B, heads, d, N) -> out (B, heads, d, N) in q's dtype.

    out[b, h, :, n] = (sum_m v_m relu(k_m)^T) relu(q_n) / (relu(q_n) . sum_m relu(k_m) + eps),
    accumulated in float32 (float64 for float64 inputs).
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(t, name)
    check_same_device(q, "q", k, "k")
    check_same_device(q, "q", v, "v")
    eps = check_number(eps, "eps")
    if use_kernel("linear_attention", q):
        _library.check_meta_arguments("_check_linear_attention_args", q, q, k, v, eps)
        return torch.ops.dcae_ext.linear_attention(q, k, v, eps)
    _library.check_arguments("_check_linear_attention_args", q, k, v, eps)
    return reference.linear_attention(q, k, v, eps)


if _library.has_ops("linear_attention", "_linear_attention_backward"):
    @torch.library.register_fake("dcae_ext::linear_attention")
    def _forward_fake(q, k, v, eps):
        return torch.empty(q.shape, dtype=q.dtype, device=q.device)

    @torch.library.register_fake("dcae_ext::_linear_attention_backward")
    def _backward_fake(grad_out, q, k, v, eps):
        return tuple(torch.empty(q.shape, dtype=q.dtype, device=q.device) for _ in range(3))

    def _setup_context(ctx, inputs, output):
        q, k, v, eps = inputs
        ctx.save_for_backward(q, k, v)
        ctx.eps = eps

    def _backward(ctx, grad):
        q, k, v = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: the kernel's gradients would have no graph
            return (*_differentiable_backward(ctx, grad, q, k, v), None)
        dq, dk, dv = torch.ops.dcae_ext._linear_attention_backward(grad, q, k, v, ctx.eps)
        return dq, dk, dv, None

    def _differentiable_backward(ctx, grad, q, k, v):
        """The reference's gradients, differentiable again (gradient penalties, Hessian-vector products)."""
        wanted = [t for t, needed in zip((q, k, v), ctx.needs_input_grad) if needed]
        found = iter(torch.autograd.grad(reference.linear_attention(q, k, v, ctx.eps), wanted, grad,
                                         create_graph=True))
        return tuple(next(found) if needed else None for needed in ctx.needs_input_grad[:3])

    torch.library.register_autograd("dcae_ext::linear_attention", _backward, setup_context=_setup_context)
    _library.mark_registered("linear_attention", "_linear_attention_backward")
