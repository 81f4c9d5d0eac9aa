"""DC-AE models: configs and presets, blocks, encoder/decoder/autoencoder, weight formats, tiling."""
from dcae_ext.models.blocks import EfficientViTBlock, GLUMBConv, LiteMLA, ResBlock, RMSNorm2d
from dcae_ext.models.config import DCAEConfig, get_config, preset_names, tiny_config
from dcae_ext.models.dcae import DCAE, Decoder, Encoder
from dcae_ext.models.loading import load_model_from_path
from dcae_ext.models.quantizer import IBQuantizer, QuantizerOutput
from dcae_ext.models.output import AutoencoderOutput
from dcae_ext.models.tokenizer import IBQConfig, IBQTokenizer

__all__ = [
    "DCAE", "DCAEConfig", "Encoder", "Decoder", "get_config", "preset_names", "tiny_config",
    "ResBlock", "EfficientViTBlock", "LiteMLA", "GLUMBConv", "RMSNorm2d",
    "load_model_from_path", "IBQuantizer", "QuantizerOutput", "IBQConfig", "IBQTokenizer", "AutoencoderOutput",
]
