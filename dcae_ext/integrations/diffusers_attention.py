"""Attention processors that compute diffusers' Sana linear attentions with `ops.linear_attention`.

Each replaces one stock processor on one module (`dcae_ext.integrations.diffusers.accelerate`) and
keeps it in `.stock` for `restore`. Everything around the attention core (projections, norms,
dtype casts, the output projection) is the stock processor's code, so the weights and every other
module are used as before; the core is the same math: relu on q and k, v padded with a row of
ones, float32 accumulation, the division by the last row with eps (docs/linear_attention.md).

This module does not import diffusers: the processors only call the modules they are given.
"""
from __future__ import annotations

import torch

from dcae_ext import ops

SANA_EPS = 1e-15  # SanaLinearAttnProcessor2_0's constant


def _same_dtype(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The op takes q, k, v of one dtype; the stock math promotes them anyway (float32)."""
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return tuple(t.to(dtype) for t in tensors)


def _tokens_contiguous(query: torch.Tensor) -> bool:
    """Whether to copy q, k, v to contiguous tokens before the op: on CUDA, where the kernels read
    that layout coalesced (not yet measured against the strided views); not on CPU, where the op
    reads the projections' views as fast and the copies cost more than they save. Measured on a
    2-core VM, float32, width 256, 8 heads, one attention against stock, 25 interleaved repeats:
    forward 0.90x-0.94x with the copies and 0.99x-1.05x on the views at 1024-8192 tokens;
    forward+backward 1.05x-1.10x and 1.03x-1.11x."""
    return query.device.type != "cpu"


class SanaLinearAttnProcessor:
    """Sana's self-attention (SanaLinearAttnProcessor2_0) with the fused linear attention.

    Stock: q, k, v upcast to float32 copies, two float32 matmuls and a division (every layer,
    forward and backward). Here: one op on q, k, v in their dtype (tokens made contiguous
    on CUDA), float32 inside, no saved intermediate but q, k, v. Keys from other tokens than the
    queries (cross-attention, which Sana's self-attention never is) go to the stock processor.
    """

    def __init__(self, stock):
        self.stock = stock

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if encoder_hidden_states is not None and encoder_hidden_states.shape[1] != hidden_states.shape[1]:
            return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask)
        original_dtype = hidden_states.dtype
        kv_states = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        query, key, value = attn.to_q(hidden_states), attn.to_k(kv_states), attn.to_v(kv_states)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        # (B, N, heads * d) -> (B, heads, d, N): views of the projections (tokens heads * d apart),
        # copied to contiguous tokens on CUDA (see _tokens_contiguous)
        query, key, value = (t.transpose(1, 2).unflatten(1, (attn.heads, -1)) for t in (query, key, value))
        if _tokens_contiguous(query):
            query, key, value = (t.contiguous() for t in (query, key, value))
        hidden_states = ops.linear_attention(*_same_dtype(query, key, value), eps=SANA_EPS)
        hidden_states = hidden_states.flatten(1, 2).transpose(1, 2).to(original_dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if original_dtype == torch.float16:
            hidden_states = hidden_states.clip(-65504, 65504)
        return hidden_states


class SanaMultiscaleAttnProcessor:
    """AutoencoderDC's multiscale linear attention (SanaMultiscaleAttnProcessor2_0) with the fused op.

    Stock: the whole multiscale qkv tensor upcast to float32, then the padded-v matmuls (or, for
    H W <= head dim, the quadratic form in the input dtype). Here: one op on slices of the qkv
    tensor for both (it picks the cheaper form itself), float32 inside.
    """

    def __init__(self, stock):
        self.stock = stock

    def __call__(self, attn, hidden_states: torch.Tensor) -> torch.Tensor:
        residual = hidden_states
        batch_size, _, height, width = hidden_states.shape
        original_dtype = hidden_states.dtype
        linear_form = height * width > attn.attention_head_dim  # the stock processor's switch

        channels_last = hidden_states.movedim(1, -1)
        qkv = torch.cat([attn.to_q(channels_last), attn.to_k(channels_last), attn.to_v(channels_last)], dim=3)
        qkv = qkv.movedim(-1, 1)
        # NCHW, so that q, k, v below are slices with contiguous tokens (the layout the kernels stream
        # fastest; the projections leave it channels-last); stock makes a float32 copy here instead
        qkv = torch.cat([qkv] + [block(qkv) for block in attn.to_qkv_multiscale], dim=1).contiguous()
        qkv = qkv.reshape(batch_size, -1, 3 * attn.attention_head_dim, height * width)
        query, key, value = qkv.chunk(3, dim=2)
        hidden_states = ops.linear_attention(query, key, value, eps=attn.eps)
        if linear_form:
            hidden_states = hidden_states.to(original_dtype)

        hidden_states = torch.reshape(hidden_states, (batch_size, -1, height, width))
        hidden_states = attn.to_out(hidden_states.movedim(1, -1)).movedim(-1, 1)
        if attn.norm_type == "rms_norm":
            hidden_states = attn.norm_out(hidden_states.movedim(1, -1)).movedim(-1, 1)
        else:
            hidden_states = attn.norm_out(hidden_states)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states
