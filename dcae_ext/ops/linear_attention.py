"""ReLU linear attention of the EfficientViT blocks (DESIGN.md 2.2).

Kernel pending (issue: fused linear attention): until it lands, the public op validates and
runs the reference, so models written against this API need no change when it does.
"""
from __future__ import annotations

import torch

from dcae_ext.ops import reference
from dcae_ext.ops._validate import check_positive_float, check_same, check_tensor


def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float = 1e-15) -> torch.Tensor:
    """q, k, v (B, heads, d, N) -> (B, heads, d, N), float32 accumulation, output in q's dtype."""
    check_tensor(q, "q", ndim=4)
    check_tensor(k, "k", ndim=4)
    check_tensor(v, "v", ndim=4)
    check_same(q, "q", k, "k")
    check_same(q, "q", v, "v")
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"arguments 'q', 'k', 'v': shapes must match, got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    check_positive_float(eps, "eps")
    return reference.linear_attention(q, k, v, eps)
