"""Small DC-AE configs shared by the model tests (diffusers AutoencoderDC field names)."""
from dcae_ext.models import DCAEConfig, get_config

# How the tests shrink a full-size preset to CPU size (tests/models/official_dc_ae.py shrinks the
# official copy alike): widths / 8, at most 2 blocks a stage; stage types, empty stages, norms,
# activations, shortcuts and the latent channels stay.
WIDTH_DIVISOR, MAX_DEPTH = 8, 2


def reduced(name: str) -> DCAEConfig:
    config = get_config(name)
    changes = {}
    for side in ("encoder", "decoder"):
        widths, depths = getattr(config, f"{side}_block_out_channels"), getattr(config, f"{side}_layers_per_block")
        changes[f"{side}_block_out_channels"] = [w // WIDTH_DIVISOR for w in widths]
        changes[f"{side}_layers_per_block"] = [min(d, MAX_DEPTH) for d in depths]
    return config.replace(**changes)

# f8: stage 0 empty (conv_in downsamples, conv_out upsamples), pixel (un)shuffle, BatchNorm in the
# decoder's first stages, a multiscale EfficientViT stage.
IN_STYLE = DCAEConfig(
    latent_channels=8, attention_head_dim=8,
    encoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock", "EfficientViTBlock"),
    decoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock", "EfficientViTBlock"),
    encoder_block_out_channels=(8, 16, 32, 32), decoder_block_out_channels=(8, 16, 32, 32),
    encoder_layers_per_block=(0, 1, 2, 1), decoder_layers_per_block=(0, 2, 1, 1),
    encoder_qkv_multiscales=((), (), (), (5,)), decoder_qkv_multiscales=((), (), (5,), ()),
    downsample_block_type="pixel_unshuffle", upsample_block_type="pixel_shuffle",
    decoder_norm_types=("batch_norm", "batch_norm", "rms_norm", "rms_norm"),
    decoder_act_fns=("relu", "relu", "silu", "silu"), scaling_factor=0.5,
)

# f4: stage 0 has layers, stride-2 conv downsampling, interpolate upsampling, RMSNorm everywhere,
# two qkv scales, head dim 16 so the 4x4 bottom (N = 16 <= d) takes the quadratic attention path.
SANA_STYLE = DCAEConfig(
    latent_channels=16, attention_head_dim=16,
    encoder_block_types=("ResBlock", "EfficientViTBlock", "EfficientViTBlock"),
    decoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock"),
    encoder_block_out_channels=(8, 16, 32), decoder_block_out_channels=(8, 16, 32),
    encoder_layers_per_block=(1, 1, 2), decoder_layers_per_block=(2, 1, 1),
    encoder_qkv_multiscales=((), (3, 5), (5,)), decoder_qkv_multiscales=((), (), (3, 5)),
    downsample_block_type="conv", upsample_block_type="interpolate",
    decoder_norm_types="rms_norm", decoder_act_fns="silu", scaling_factor=0.41407,
)

# No latent shortcuts, GELU, a BatchNorm EfficientViT stage.
NO_SHORTCUT = DCAEConfig(
    latent_channels=4, attention_head_dim=8,
    encoder_block_types=("ResBlock", "EfficientViTBlock"), decoder_block_types=("ResBlock", "EfficientViTBlock"),
    encoder_block_out_channels=(8, 16), decoder_block_out_channels=(8, 16),
    encoder_layers_per_block=(1, 1), decoder_layers_per_block=(1, 1),
    encoder_qkv_multiscales=((), ()), decoder_qkv_multiscales=((), (5,)),
    decoder_norm_types=("rms_norm", "batch_norm"), decoder_act_fns=("gelu", "silu"),
    encoder_out_shortcut=False, decoder_in_shortcut=False, decoder_conv_act_fn="silu",
)

CONFIGS = {"in_style": IN_STYLE, "sana_style": SANA_STYLE, "no_shortcut": NO_SHORTCUT,
           "lite": reduced("dc-ae-lite-f32c32-sana-1.1"), "dc_ae_1_1": reduced("dc-ae-f32c128-1.1")}


def diffusers_kwargs(config: DCAEConfig) -> dict:
    return {k: v for k, v in config.to_diffusers_dict().items() if not k.startswith("_")}
