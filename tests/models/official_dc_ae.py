"""An independent copy of the official DC-AE modules, written for the parity tests from a reading of
DC-Gen's dc_gen/aecore/models/dc_ae.py, dc_gen/models/nn/{ops,norm,act}.py and dc_gen/ae_model_zoo.py
(github dc-ai-projects/DC-Gen). It shares no code with dcae_ext: module tree, parameter names
(encoder.project_in, encoder.stages.i.op_list.j, ...), block wiring and the adaptive latent layers
are theirs, so a state dict of this model is a checkpoint as DC-Gen writes it.

One substitution: DC-Gen's "trms2d" norm is a Triton kernel (GPU only); `RMSNorm2d` here computes the
same thing (float32 statistics over the channels, then weight and bias) in PyTorch.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

_ACTS = {"relu": nn.ReLU, "silu": nn.SiLU, "gelu": lambda: nn.GELU(approximate="tanh")}


def build_act(name):
    return _ACTS[name]() if name is not None else None


class RMSNorm2d(nn.LayerNorm):
    def forward(self, x):
        x32 = x.float().permute(0, 2, 3, 1)
        y = x32 / torch.sqrt(x32.square().mean(dim=-1, keepdim=True) + self.eps) * self.weight + self.bias
        return y.permute(0, 3, 1, 2).to(x.dtype)


def build_norm(name, channels):
    if name is None:
        return None
    return {"bn2d": lambda: nn.BatchNorm2d(channels), "trms2d": lambda: RMSNorm2d(channels)}[name]()


class ConvLayer(nn.Module):
    def __init__(self, cin, cout, k=3, stride=1, groups=1, bias=False, norm=None, act=None):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=bias)
        self.norm, self.act = build_norm(norm, cout), build_act(act)

    def forward(self, x):
        x = self.conv(x)
        x = self.norm(x) if self.norm is not None else x
        return self.act(x) if self.act is not None else x


class AdaptiveOutputConvLayer(nn.Module):
    def __init__(self, cin, cout, k=3):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, 1, k // 2, bias=True)

    def forward(self, x, out_channels=None):
        c = self.conv.out_channels if out_channels is None else out_channels
        return F.conv2d(x, self.conv.weight[:c], self.conv.bias[:c], 1, self.conv.padding)


class AdaptiveInputConvLayer(nn.Module):
    def __init__(self, cin, cout, k=3):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, 1, k // 2, bias=True)

    def forward(self, x):
        return F.conv2d(x, self.conv.weight[:, :x.shape[1]], self.conv.bias, 1, self.conv.padding)


class OpSequential(nn.Module):
    def __init__(self, ops):
        super().__init__()
        self.op_list = nn.ModuleList([op for op in ops if op is not None])

    def forward(self, x):
        for op in self.op_list:
            x = op(x)
        return x


class IdentityLayer(nn.Module):
    def forward(self, x):
        return x


class ResidualBlock(nn.Module):
    def __init__(self, main, shortcut):
        super().__init__()
        self.main, self.shortcut = main, shortcut

    def forward(self, x):
        return self.main(x) + self.shortcut(x)


class ConvPixelUnshuffleDownSampleLayer(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv = ConvLayer(cin, cout // 4, 3, bias=True)

    def forward(self, x):
        return F.pixel_unshuffle(self.conv(x), 2)


class PixelUnshuffleChannelAveragingDownSampleLayer(nn.Module):
    def __init__(self, cin, cout, factor):
        super().__init__()
        self.cout, self.factor, self.group = cout, factor, cin * factor ** 2 // cout

    def forward(self, x):
        x = F.pixel_unshuffle(x, self.factor)
        b, _, h, w = x.shape
        return x.view(b, self.cout, self.group, h, w).mean(dim=2)


class ConvPixelShuffleUpSampleLayer(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv = ConvLayer(cin, cout * 4, 3, bias=True)

    def forward(self, x):
        return F.pixel_shuffle(self.conv(x), 2)


class InterpolateConvUpSampleLayer(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv = ConvLayer(cin, cout, 3, bias=True)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class ChannelDuplicatingPixelShuffleUpSampleLayer(nn.Module):
    def __init__(self, cin, cout, factor):
        super().__init__()
        self.factor, self.repeats = factor, cout * factor ** 2 // cin

    def forward(self, x):
        return F.pixel_shuffle(x.repeat_interleave(self.repeats, dim=1), self.factor)


class ResBlock(nn.Module):
    def __init__(self, channels, norm, act):
        super().__init__()
        self.conv1 = ConvLayer(channels, channels, 3, bias=True, act=act)
        self.conv2 = ConvLayer(channels, channels, 3, bias=False, norm=norm)

    def forward(self, x):
        return self.conv2(self.conv1(x))


class LiteMLA(nn.Module):
    def __init__(self, channels, norm, scales, dim=32, eps=1e-15):
        super().__init__()
        heads = channels // dim
        total = heads * dim
        self.dim, self.eps = dim, eps
        self.qkv = ConvLayer(channels, 3 * total, 1)
        self.aggreg = nn.ModuleList([nn.Sequential(
            nn.Conv2d(3 * total, 3 * total, s, padding=s // 2, groups=3 * total, bias=False),
            nn.Conv2d(3 * total, 3 * total, 1, groups=3 * heads, bias=False)) for s in scales])
        self.proj = ConvLayer(total * (1 + len(scales)), channels, 1, norm=norm)

    def forward(self, x):
        qkv = self.qkv(x)
        qkv = torch.cat([qkv] + [op(qkv) for op in self.aggreg], dim=1)
        b, _, h, w = qkv.shape
        qkv = qkv.reshape(b, -1, 3 * self.dim, h * w)
        q, k, v = F.relu(qkv[:, :, :self.dim]), F.relu(qkv[:, :, self.dim:2 * self.dim]), qkv[:, :, 2 * self.dim:]
        if h * w > self.dim:  # linear form: (v_pad k^T) q, then divide by the padded row
            out = F.pad(v, (0, 0, 0, 1), value=1) @ k.transpose(-1, -2) @ q
            out = out[:, :, :-1] / (out[:, :, -1:] + self.eps)
        else:  # quadratic form
            att = k.transpose(-1, -2) @ q
            out = v @ (att / (att.sum(dim=2, keepdim=True) + self.eps))
        return self.proj(out.reshape(b, -1, h, w))


class GLUMBConv(nn.Module):
    def __init__(self, channels, norm, act, expand_ratio=4):
        super().__init__()
        mid = channels * expand_ratio
        self.glu_act = build_act(act)
        self.inverted_conv = ConvLayer(channels, 2 * mid, 1, bias=True, act=act)
        self.depth_conv = ConvLayer(2 * mid, 2 * mid, 3, groups=2 * mid, bias=True)
        self.point_conv = ConvLayer(mid, channels, 1, bias=False, norm=norm)

    def forward(self, x):
        x, gate = self.depth_conv(self.inverted_conv(x)).chunk(2, dim=1)
        return self.point_conv(x * self.glu_act(gate))


class EfficientViTBlock(nn.Module):
    def __init__(self, channels, norm, act, scales):
        super().__init__()
        self.context_module = ResidualBlock(LiteMLA(channels, norm, scales), IdentityLayer())
        self.local_module = ResidualBlock(GLUMBConv(channels, norm, act), IdentityLayer())

    def forward(self, x):
        return self.local_module(self.context_module(x))


def build_block(block_type, channels, norm, act):
    if block_type == "ResBlock":
        return ResidualBlock(ResBlock(channels, norm, act), IdentityLayer())
    scales = {"EViTGLU": (), "EViTS5GLU": (5,)}[block_type]
    return EfficientViTBlock(channels, norm, act, scales)


def build_downsample(block_type, cin, cout, shortcut):
    main = (ConvLayer(cin, cout, 3, stride=2, bias=True) if block_type == "Conv"
            else ConvPixelUnshuffleDownSampleLayer(cin, cout))
    return ResidualBlock(main, PixelUnshuffleChannelAveragingDownSampleLayer(cin, cout, 2)) if shortcut else main


def build_upsample(block_type, cin, cout, shortcut):
    main = (InterpolateConvUpSampleLayer(cin, cout) if block_type == "InterpolateConv"
            else ConvPixelShuffleUpSampleLayer(cin, cout))
    return ResidualBlock(main, ChannelDuplicatingPixelShuffleUpSampleLayer(cin, cout, 2)) if shortcut else main


def _per_stage(value, i):
    return value[i] if isinstance(value, list) else value


class Encoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        widths, depths = cfg["width_list"], cfg["depth_list"]
        first = widths[0] if depths[0] > 0 else widths[1]
        self.project_in = (ConvLayer(cfg["in_channels"], first, 3, bias=True) if depths[0] > 0
                           else build_downsample(cfg["downsample_block_type"], cfg["in_channels"], first, False))
        stages = []
        for i, (width, depth) in enumerate(zip(widths, depths)):
            stage = [build_block(_per_stage(cfg["block_type"], i), width, _per_stage(cfg["norm"], i), cfg["act"])
                     for _ in range(depth)]
            if i < len(widths) - 1 and depth > 0:
                stage.append(build_downsample(cfg["downsample_block_type"], width, widths[i + 1], True))
            stages.append(OpSequential(stage))
        self.stages = nn.ModuleList(stages)
        out = (AdaptiveOutputConvLayer(widths[-1], cfg["latent_channels"])
               if cfg["out_block_type"] == "AdaptiveOutputConvLayer"
               else ConvLayer(widths[-1], cfg["latent_channels"], 3, bias=True))
        self.project_out = OpSequential([out])
        if cfg["out_shortcut"] == "averaging":
            self.project_out = ResidualBlock(self.project_out, PixelUnshuffleChannelAveragingDownSampleLayer(
                widths[-1], cfg["latent_channels"], 1))

    def forward(self, x, latent_channels=None):
        x = self.project_in(x)
        for stage in self.stages:
            x = stage(x)
        if latent_channels is None:
            return self.project_out(x)
        assert isinstance(self.project_out, OpSequential) and len(self.project_out.op_list) == 1
        if isinstance(latent_channels, int):
            return self.project_out.op_list[0](x, out_channels=latent_channels)
        return [self.project_out.op_list[0](x, out_channels=c) for c in latent_channels]


class Decoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        widths, depths = cfg["width_list"], cfg["depth_list"]
        latent = cfg["latent_channels"]
        main = (AdaptiveInputConvLayer(latent, widths[-1]) if cfg["in_block_type"] == "AdaptiveInputConvLayer"
                else ConvLayer(latent, widths[-1], 3, bias=True))
        self.project_in = (ResidualBlock(main, ChannelDuplicatingPixelShuffleUpSampleLayer(latent, widths[-1], 1))
                           if cfg["in_shortcut"] == "duplicating" else main)
        stages = []
        for i in reversed(range(len(widths))):
            stage = []
            if i < len(widths) - 1 and depths[i] > 0:
                stage.append(build_upsample(cfg["upsample_block_type"], widths[i + 1], widths[i], True))
            stage += [build_block(_per_stage(cfg["block_type"], i), widths[i], _per_stage(cfg["norm"], i),
                                  _per_stage(cfg["act"], i)) for _ in range(depths[i])]
            stages.insert(0, OpSequential(stage))
        self.stages = nn.ModuleList(stages)
        last = widths[0] if depths[0] > 0 else widths[1]
        head = (ConvLayer(last, cfg["in_channels"], 3, bias=True) if depths[0] > 0
                else build_upsample(cfg["upsample_block_type"], last, cfg["in_channels"], False))
        self.project_out = OpSequential([build_norm(cfg["out_norm"], last), build_act(cfg["out_act"]), head])

    def forward(self, z):
        if isinstance(z, list):
            return [self.forward(item) for item in z]
        x = self.project_in(z)
        for stage in reversed(self.stages):
            x = stage(x)
        return self.project_out(x)


class OfficialDCAE(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.encoder, self.decoder = Encoder(cfg["encoder"]), Decoder(cfg["decoder"])

    def encode(self, x, latent_channels=None):
        return self.encoder(x, latent_channels=latent_channels)

    def decode(self, z):
        return self.decoder(z)


# --- the model zoo (dc_ae.py's cfg strings over its EncoderConfig / DecoderConfig defaults) ----------

_ENCODER_DEFAULTS = dict(in_channels=3, block_type="ResBlock", norm="trms2d", act="silu",
                         downsample_block_type="ConvPixelUnshuffle", out_block_type="ConvLayer",
                         out_shortcut="averaging")
_DECODER_DEFAULTS = dict(in_channels=3, in_block_type="ConvLayer", in_shortcut="duplicating", block_type="ResBlock",
                         norm="trms2d", act="silu", upsample_block_type="ConvPixelShuffle", out_norm="trms2d",
                         out_act="relu")
_WIDTHS = [128, 256, 512, 512, 1024, 1024]
_IN = dict(
    encoder=dict(block_type=["ResBlock"] * 3 + ["EViTGLU"] * 3, width_list=_WIDTHS, depth_list=[0, 4, 8, 2, 2, 2]),
    decoder=dict(block_type=["ResBlock"] * 3 + ["EViTGLU"] * 3, width_list=_WIDTHS, depth_list=[0, 5, 10, 2, 2, 2],
                 norm=["bn2d"] * 3 + ["trms2d"] * 3, act=["relu"] * 3 + ["silu"] * 3), latent_channels=32)
_LITE = dict(
    encoder=dict(block_type=["ResBlock"] * 3 + ["EViTS5GLU"] * 3, width_list=_WIDTHS, depth_list=[2, 2, 2, 3, 3, 3],
                 downsample_block_type="Conv"),
    decoder=dict(block_type="ResBlock", width_list=_WIDTHS, depth_list=[0, 3, 5, 4, 4, 4], out_act="silu"),
    latent_channels=32)


def _dc_ae_1_x(stages, adaptive):
    widths, depths = (_WIDTHS + [1024])[:stages], [0, 5, 10, 4, 4, 4, 4][:stages]
    encoder = dict(block_type="ResBlock", out_shortcut=None, width_list=widths, depth_list=depths)
    decoder = dict(block_type="ResBlock", in_shortcut=None, out_act="silu", width_list=widths, depth_list=depths)
    if adaptive:
        encoder["out_block_type"], decoder["in_block_type"] = "AdaptiveOutputConvLayer", "AdaptiveInputConvLayer"
    return dict(encoder=encoder, decoder=decoder, latent_channels=128)


ZOO = {
    "dc-ae-f32c32-in-1.0-256px": _IN,
    "dc-ae-lite-f32c32-sana-1.1": _LITE,
    "dc-ae-f32c128-1.5": _dc_ae_1_x(6, True),
    "dc-ae-f64c128-1.5": _dc_ae_1_x(7, True),
    "dc-ae-f32c128-1.1": _dc_ae_1_x(6, False),
}


def official_config(name: str, width_divisor: int = 1, max_depth: int | None = None) -> dict:
    """The model's config as DC-Gen resolves it; optionally narrower (widths / width_divisor) and
    shallower (at most max_depth blocks a stage, empty stages kept empty), the structure unchanged."""
    entry = copy.deepcopy(ZOO[name])
    cfg = {}
    for side, defaults in (("encoder", _ENCODER_DEFAULTS), ("decoder", _DECODER_DEFAULTS)):
        part = dict(defaults, **entry[side], latent_channels=entry["latent_channels"])
        part["width_list"] = [w // width_divisor for w in part["width_list"]]
        if max_depth is not None:
            part["depth_list"] = [min(d, max_depth) for d in part["depth_list"]]
        cfg[side] = part
    return cfg
