"""The DC-AE family: configs and named presets, the blocks, the encoder, decoder and autoencoder."""
from dcae_ext.models.dcae.config import DCAEConfig, get_config, preset_names, tiny_config
from dcae_ext.models.dcae.model import DCAE, Decoder, Encoder

__all__ = ["DCAE", "DCAEConfig", "Decoder", "Encoder", "get_config", "preset_names", "tiny_config"]
