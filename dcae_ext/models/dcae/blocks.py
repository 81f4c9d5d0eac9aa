"""DC-AE building blocks. Parameter names follow diffusers' AutoencoderDC so its state dicts load as-is.

ResBlock:            x + norm(conv2(act(conv1(x))))
EfficientViTBlock:   x = x + norm(to_out(linear_attention(multiscale(qkv(x)))));  x = x + GLUMBConv(x)
DownsampleBlock:     main(x) + pixel_unshuffle_mean(x)       (the residual-autoencoding shortcut)
UpsampleBlock:       main(x) + pixel_shuffle_repeat(x)
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from dcae_ext import ops

_ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU, "swish": nn.SiLU, "gelu": nn.GELU, "mish": nn.Mish}


def build_act(name: str) -> nn.Module:
    if name not in _ACTIVATIONS:
        raise ValueError(f"activation {name!r} is not supported (choose from {sorted(_ACTIVATIONS)})")
    return _ACTIVATIONS[name]()


def build_norm(name: str, channels: int) -> nn.Module:
    if name == "rms_norm":
        return RMSNorm2d(channels)
    if name == "batch_norm":
        return nn.BatchNorm2d(channels, eps=1e-5)
    raise ValueError(f"norm {name!r} is not supported (choose from 'rms_norm', 'batch_norm')")


class RMSNorm2d(nn.Module):
    """RMS norm over the channel dimension of (B, C, H, W), with weight and bias, computed in float32
    (half-precision squares overflow), returned in the input's dtype."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == self.weight.dtype and x.is_contiguous(memory_format=torch.channels_last):
            # NHWC: channels are the contiguous last dim, so torch's fused rms_norm (float32 inside)
            # does it in one pass instead of ~6 elementwise passes.
            y = F.rms_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.weight, self.eps) + self.bias
            return y.permute(0, 3, 1, 2)
        x32 = x.float()
        y = x32 * torch.rsqrt(x32.square().mean(dim=1, keepdim=True) + self.eps)
        y = y * self.weight.float().view(1, -1, 1, 1) + self.bias.float().view(1, -1, 1, 1)
        return y.to(x.dtype)


class ResBlock(nn.Module):
    def __init__(self, channels: int, norm: str, act: str):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, 1, 1)
        self.nonlinearity = build_act(act)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.norm = build_norm(norm, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.norm(self.conv2(self.nonlinearity(self.conv1(x))))


class MultiscaleProjection(nn.Module):
    """Aggregates q, k, v over a k x k neighbourhood: depthwise conv, then a 1x1 conv per head."""

    def __init__(self, channels: int, groups: int, kernel_size: int):
        super().__init__()
        self.proj_in = nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2,
                                 groups=channels, bias=False)
        self.proj_out = nn.Conv2d(channels, channels, 1, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj_out(self.proj_in(x))


class LiteMLA(nn.Module):
    """Multiscale ReLU linear attention with a residual connection.

    to_q / to_k / to_v (diffusers' names, Linear-shaped) are the three thirds of one fused 1x1 qkv
    conv; they are concatenated per call so that the conv output reshapes without a copy to
    (B, heads, 3d, N), whose three d-row slices are each head's q, k and v.
    """

    def __init__(self, channels: int, head_dim: int, norm: str, scales: tuple[int, ...]):
        super().__init__()
        heads = channels // head_dim
        if heads == 0:
            raise ValueError(f"attention_head_dim {head_dim} exceeds the block width {channels}")
        inner = heads * head_dim
        self.head_dim = head_dim
        self.eps = 1e-15
        self.to_q = nn.Linear(channels, inner, bias=False)
        self.to_k = nn.Linear(channels, inner, bias=False)
        self.to_v = nn.Linear(channels, inner, bias=False)
        self.to_qkv_multiscale = nn.ModuleList(MultiscaleProjection(3 * inner, 3 * heads, k) for k in scales)
        self.to_out = nn.Linear(inner * (1 + len(scales)), channels, bias=False)
        self.norm_out = build_norm(norm, channels)

    def qkv_weight(self) -> torch.Tensor:
        return torch.cat([self.to_q.weight, self.to_k.weight, self.to_v.weight])[:, :, None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        qkv = F.conv2d(x, self.qkv_weight())
        if len(self.to_qkv_multiscale):
            qkv = torch.cat([qkv] + [proj(qkv) for proj in self.to_qkv_multiscale], dim=1)
        qkv = qkv.reshape(b, -1, 3 * self.head_dim, h * w)
        d = self.head_dim
        out = ops.linear_attention(qkv[:, :, :d], qkv[:, :, d:2 * d], qkv[:, :, 2 * d:], eps=self.eps)
        out = F.conv2d(out.reshape(b, -1, h, w), self.to_out.weight[:, :, None, None])
        return x + self.norm_out(out)


class GLUMBConv(nn.Module):
    """x + norm(conv_point(a * silu(gate))), (a, gate) = depthwise3x3(silu(conv_inverted(x))): C -> 8C -> 4C -> C."""

    def __init__(self, channels: int, expand_ratio: int = 4):
        super().__init__()
        hidden = channels * expand_ratio
        self.conv_inverted = nn.Conv2d(channels, 2 * hidden, 1)
        self.conv_depth = nn.Conv2d(2 * hidden, 2 * hidden, 3, 1, 1, groups=2 * hidden)
        self.conv_point = nn.Conv2d(hidden, channels, 1, bias=False)
        self.nonlinearity = nn.SiLU()
        self.norm = RMSNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv_depth(self.nonlinearity(self.conv_inverted(x)))
        y, gate = y.chunk(2, dim=1)
        return x + self.norm(self.conv_point(y * self.nonlinearity(gate)))


class EfficientViTBlock(nn.Module):
    def __init__(self, channels: int, head_dim: int, norm: str, scales: tuple[int, ...]):
        super().__init__()
        self.attn = LiteMLA(channels, head_dim, norm, scales)
        self.conv_out = GLUMBConv(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.attn(x))


def build_block(block_type: str, channels: int, head_dim: int, norm: str, act: str,
                scales: tuple[int, ...]) -> nn.Module:
    if block_type == "ResBlock":
        return ResBlock(channels, norm, act)
    if block_type == "EfficientViTBlock":
        # As in diffusers: the GLUMBConv always uses RMSNorm + SiLU, `act` does not apply.
        return EfficientViTBlock(channels, head_dim, norm, scales)
    raise ValueError(f"block type {block_type!r} is not supported (choose from 'ResBlock', 'EfficientViTBlock')")


class DownsampleBlock(nn.Module):
    """Halves H and W. "pixel_unshuffle": 3x3 conv to out/4 channels, then pixel_unshuffle;
    "conv" (or "Conv"): 3x3 stride-2 conv. With `shortcut`, adds the space-to-channel average of the input."""

    def __init__(self, in_channels: int, out_channels: int, block_type: str, shortcut: bool):
        super().__init__()
        self.pixel_unshuffle = block_type == "pixel_unshuffle"
        self.out_channels = out_channels
        self.shortcut = shortcut
        if self.pixel_unshuffle:
            if out_channels % 4:
                raise ValueError(f"pixel_unshuffle downsampling needs out_channels divisible by 4, got {out_channels}")
            self.conv = nn.Conv2d(in_channels, out_channels // 4, 3, 1, 1)
        else:
            self.conv = nn.Conv2d(in_channels, out_channels, 3, 2, 1)
        if shortcut and (in_channels * 4) % out_channels:
            raise ValueError(f"downsample shortcut: out_channels {out_channels} must divide 4 * {in_channels}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if self.pixel_unshuffle:
            y = F.pixel_unshuffle(y, 2)
        if self.shortcut:
            y = ops.pixel_unshuffle_mean(x.to(y.dtype), 2, self.out_channels, residual=y)  # autocast: y may be half
        return y


class UpsampleBlock(nn.Module):
    """Doubles H and W. "pixel_shuffle": 3x3 conv to 4*out channels, then pixel_shuffle;
    "interpolate": nearest 2x upsampling, then a 3x3 conv. With `shortcut`, adds the
    channel-to-space duplicate of the input."""

    def __init__(self, in_channels: int, out_channels: int, block_type: str, shortcut: bool):
        super().__init__()
        self.interpolate = block_type == "interpolate"
        self.out_channels = out_channels
        self.shortcut = shortcut
        self.conv = nn.Conv2d(in_channels, out_channels if self.interpolate else 4 * out_channels, 3, 1, 1)
        if shortcut and (out_channels * 4) % in_channels:
            raise ValueError(f"upsample shortcut: in_channels {in_channels} must divide 4 * {out_channels}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.interpolate:
            y = self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))
        else:
            y = F.pixel_shuffle(self.conv(x), 2)
        if self.shortcut:
            y = ops.pixel_shuffle_repeat(x.to(y.dtype), 2, self.out_channels, residual=y)
        return y
