"""The VQGAN encoder and decoder that the IBQ paper's tokenizers use (Esser et al. 2021, as in
SEED-Voken's src/IBQ/modules/diffusionmodules/model.py).

ResNet blocks of GroupNorm(32) + swish + 3x3 convolutions, a stride-2 convolution (padded right and
bottom) to go down, nearest-neighbour x2 + 3x3 convolution to go up, single-head self-attention at
the resolutions listed in `attn_resolutions` (counted from the configured `resolution`, as the
official code does, whatever the input size) and in the middle block. The module and parameter
names are the official ones, so an official checkpoint's `encoder.*` / `decoder.*` keys load as
they are.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


@dataclass
class VQGANConfig:
    """The `ddconfig` of an official IBQ config (double_z is always False for a VQ tokenizer)."""
    ch: int = 128
    ch_mult: tuple = (1, 1, 2, 2, 4)
    num_res_blocks: int = 4
    attn_resolutions: tuple = (16,)
    resolution: int = 256
    z_channels: int = 256
    in_channels: int = 3
    out_ch: int = 3
    dropout: float = 0.0

    def __post_init__(self):
        self.ch_mult = tuple(int(m) for m in self.ch_mult)
        self.attn_resolutions = tuple(int(r) for r in self.attn_resolutions)
        if not self.ch_mult:
            raise ValueError("config 'ch_mult': expected at least one level")
        widths = [self.ch] + [self.ch * m for m in self.ch_mult]
        if any(w % 32 for w in widths):
            raise ValueError(f"config 'ch'/'ch_mult': every width must be a multiple of 32 (GroupNorm(32)), "
                             f"got {widths}")
        if self.num_res_blocks < 1:
            raise ValueError(f"config 'num_res_blocks': expected >= 1, got {self.num_res_blocks}")

    @property
    def spatial_compression(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    def to_dict(self) -> dict:
        values = dataclasses.asdict(self)
        values["ch_mult"], values["attn_resolutions"] = list(self.ch_mult), list(self.attn_resolutions)
        return values

    @classmethod
    def from_dict(cls, values: dict) -> "VQGANConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        ignored = {"double_z"}  # official ddconfig keys with no effect here
        unknown = sorted(set(values) - known - ignored)
        if unknown:
            raise ValueError(f"VQGAN config: unknown fields {unknown}")
        if values.get("double_z"):
            raise ValueError("VQGAN config 'double_z': a VQ tokenizer's encoder has one output per channel")
        return cls(**{k: v for k, v in values.items() if k in known})


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        shortcut = self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x
        return shortcut + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all positions, 1x1 convolutions for q, k, v and the output."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = group_norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        normed = self.norm(x)
        q, k, v = (conv(normed).reshape(b, 1, c, h * w).transpose(-1, -2) for conv in (self.q, self.k, self.v))
        attended = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(c)) v
        return x + self.proj_out(attended.transpose(-1, -2).reshape(b, c, h, w))


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Middle(nn.Module):
    def __init__(self, channels: int, dropout: float):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels, dropout)

    def forward(self, x):
        return self.block_2(self.attn_1(self.block_1(x)))


class _Level(nn.Module):
    """One resolution: ResNet blocks, each followed by attention when the level has it."""

    def __init__(self, blocks: list, attn: list):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attn)


class _Backbone(nn.Module):
    gradient_checkpointing = False

    def _run(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(module, x, use_reentrant=False)
        return module(x)

    def _level(self, level: _Level, x: torch.Tensor) -> torch.Tensor:
        for index, block in enumerate(level.block):
            x = self._run(block, x)
            if len(level.attn):
                x = self._run(level.attn[index], x)
        return x


class Encoder(_Backbone):
    """(B, in_channels, H, W) -> (B, z_channels, H/f, W/f), f = 2 ** (len(ch_mult) - 1)."""

    def __init__(self, config: VQGANConfig):
        super().__init__()
        ch, mults = config.ch, config.ch_mult
        self.conv_in = nn.Conv2d(config.in_channels, ch, 3, padding=1)
        current = config.resolution
        widths_in = (ch,) + tuple(ch * m for m in mults)
        self.down = nn.ModuleList()
        for index, mult in enumerate(mults):
            width_in, width = widths_in[index], ch * mult
            blocks, attn = [], []
            for _ in range(config.num_res_blocks):
                blocks.append(ResnetBlock(width_in, width, config.dropout))
                width_in = width
                if current in config.attn_resolutions:
                    attn.append(AttnBlock(width))
            level = _Level(blocks, attn)
            if index != len(mults) - 1:
                level.downsample = Downsample(width)
                current //= 2
            self.down.append(level)
        self.mid = _Middle(width, config.dropout)
        self.norm_out = group_norm(width)
        self.conv_out = nn.Conv2d(width, config.z_channels, 3, padding=1)

    def forward(self, x):
        h = self.conv_in(x)
        for level in self.down:
            h = self._level(level, h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self._run(self.mid, h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(_Backbone):
    """(B, z_channels, h, w) -> (B, out_ch, h*f, w*f); each level has num_res_blocks + 1 blocks."""

    def __init__(self, config: VQGANConfig):
        super().__init__()
        ch, mults = config.ch, config.ch_mult
        width = ch * mults[-1]
        current = config.resolution // 2 ** (len(mults) - 1)
        self.conv_in = nn.Conv2d(config.z_channels, width, 3, padding=1)
        self.mid = _Middle(width, config.dropout)
        levels = []
        for index in reversed(range(len(mults))):
            out = ch * mults[index]
            blocks, attn = [], []
            for _ in range(config.num_res_blocks + 1):
                blocks.append(ResnetBlock(width, out, config.dropout))
                width = out
                if current in config.attn_resolutions:
                    attn.append(AttnBlock(width))
            level = _Level(blocks, attn)
            if index != 0:
                level.upsample = Upsample(width)
                current *= 2
            levels.insert(0, level)
        self.up = nn.ModuleList(levels)  # up[0] is the full-resolution level, run last
        self.norm_out = group_norm(width)
        self.conv_out = nn.Conv2d(width, config.out_ch, 3, padding=1)

    def forward(self, z):
        h = self._run(self.mid, self.conv_in(z))
        for level in reversed(self.up):
            h = self._level(level, h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))
