"""ReLU linear attention of the EfficientViT blocks (DESIGN.md 2.2).

`linear_attention(q, k, v)` runs the fused kernels: forward one pass over the tokens for the
(d+1) x d state [sum_m v_m relu(k_m)^T; sum_m relu(k_m)], one pass for the output; backward
its own registered op (`dcae_ext::_linear_attention_backward`). Autograd saves only q, k, v:
the backward recomputes the state (one extra read of k, v) and never needs `out`, so training
keeps no extra activation. Any strides work without a copy, in particular q, k, v sliced out of
one interleaved qkv tensor (B, heads, 3d, N).
Autocast: the op runs in q's dtype (no cast is inserted); k and v must match it.
"""
from __future__ import annotations

import torch

from dcae_ext.ops import reference
from dcae_ext.ops._library import register_python_side, use_kernel
from dcae_ext.ops._validate import check_positive_float, check_same, check_tensor


def _validate(q, k, v, eps):
    check_tensor(q, "q", ndim=4)
    check_tensor(k, "k", ndim=4)
    check_tensor(v, "v", ndim=4)
    check_same(q, "q", k, "k")
    check_same(q, "q", v, "v")
    for name, t in (("k", k), ("v", v)):
        if t.shape != q.shape:
            raise ValueError(f"argument '{name}': shape {tuple(t.shape)} differs from q's shape {tuple(q.shape)}")
    check_positive_float(eps, "eps")


def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float = 1e-15) -> torch.Tensor:
    """q, k, v (B, heads, d, N) -> out (B, heads, d, N) in q's dtype.

    out[b, h, :, n] = (sum_m v_m relu(k_m)^T) relu(q_n) / (relu(q_n) . sum_m relu(k_m) + eps),
    accumulated in float32 (float64 for float64 inputs).
    """
    _validate(q, k, v, eps)
    if not use_kernel("linear_attention", q):
        return reference.linear_attention(q, k, v, eps)
    return torch.ops.dcae_ext.linear_attention(q, k, v, float(eps))


def _register():
    backward_op = torch.ops.dcae_ext._linear_attention_backward

    @torch.library.register_fake("dcae_ext::linear_attention")
    def _forward_fake(q, k, v, eps):
        return torch.empty(q.shape, dtype=q.dtype, device=q.device)

    @torch.library.register_fake("dcae_ext::_linear_attention_backward")
    def _backward_fake(grad_out, q, k, v, eps):
        return tuple(torch.empty(q.shape, dtype=q.dtype, device=q.device) for _ in range(3))

    def _setup(ctx, inputs, output):
        q, k, v, eps = inputs
        ctx.save_for_backward(q, k, v)
        ctx.eps = eps

    def _backward(ctx, grad):
        q, k, v = ctx.saved_tensors
        dq, dk, dv = backward_op(grad, q, k, v, ctx.eps)
        return dq, dk, dv, None

    torch.library.register_autograd("dcae_ext::linear_attention", _backward, setup_context=_setup)


register_python_side(("linear_attention", "_linear_attention_backward"), _register)
