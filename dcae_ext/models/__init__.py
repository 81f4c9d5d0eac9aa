"""Models: the DC-AE family (models.dcae), the IBQ tokenizer (models.ibq), their weight formats
(models.formats) and what they share (tiling, padding to the spatial factor, the output record, the
perceptual loss network).
`load_model_from_path` opens any model file this package reads."""
from dcae_ext.models.dcae import DCAE, DCAEConfig, Decoder, Encoder, get_config, preset_names, tiny_config
from dcae_ext.models.dcae.blocks import EfficientViTBlock, GLUMBConv, LiteMLA, ResBlock, RMSNorm2d
from dcae_ext.models.ibq import IBQConfig, IBQTokenizer, IBQuantizer, QuantizerOutput
from dcae_ext.models.loading import load_model_from_path
from dcae_ext.models.output import AutoencoderOutput

__all__ = [
    "DCAE", "DCAEConfig", "Encoder", "Decoder", "get_config", "preset_names", "tiny_config",
    "ResBlock", "EfficientViTBlock", "LiteMLA", "GLUMBConv", "RMSNorm2d",
    "load_model_from_path", "IBQuantizer", "QuantizerOutput", "IBQConfig", "IBQTokenizer", "AutoencoderOutput",
]
